"""Profile one HTTP case in-process, calling the ASGI app directly (no sockets, no client).

    uv run python -m benchmarks.profile sync [--requests 5000] [--concurrency 16]
    uv run --with pyinstrument python -m benchmarks.profile sync --pyinstrument
    uv run python -m benchmarks.profile sync --no-profile --gc   # time in garbage collection
    uv run python -m benchmarks.profile sync --store postgresql://postgres@127.0.0.1/test

`--store URL` serves the app on that store (default: memory); a PostgreSQL store gets a
schema of its own, dropped at the end.

Cases: baseline, async, sync, keyed, replay. cProfile gives deterministic call counts;
pyinstrument (sampling) shows where the time goes across awaits. What uvicorn does (HTTP
parsing, the socket) is not in these profiles: it is the same for the baseline route.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import services
from benchmarks.apps.cascade import build
from benchmarks.timing import new_loop_runner

Message = dict[str, Any]
BODY = json.dumps({"type": "BenchStart", "payload": {"n": 1}}).encode()
PATHS = {
    "baseline": ("GET", "/ok", b""),
    "async": ("POST", "/api/v1/artifacts", BODY),
    "sync": ("POST", "/api/v1/artifacts/sync", BODY),
    "keyed": ("POST", "/api/v1/artifacts/sync", BODY),
    "replay": ("POST", "/api/v1/artifacts/sync", BODY),
}


def make_app(case: str, store: Any = None) -> Any:
    if case == "baseline":
        from benchmarks.apps.baseline import app

        return app
    from flock.api.service import BlackboardHTTPService

    flock = build(store)
    flock.agents  # noqa: B018 - validates the agents, as the lifespan would
    return BlackboardHTTPService(flock).app


def request_factory(case: str) -> Callable[[], tuple[Message, bytes]]:
    method, path, body = PATHS[case]
    base_headers = [(b"host", b"bench"), (b"user-agent", b"bench")]
    if body:
        base_headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    replay_key = f"replay-{uuid.uuid4().hex}".encode()

    def make() -> tuple[Message, bytes]:
        headers = list(base_headers)
        if case == "keyed":
            headers.append((b"idempotency-key", uuid.uuid4().hex.encode()))
        elif case == "replay":
            headers.append((b"idempotency-key", replay_key))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        return scope, body

    return make


async def call(app: Any, scope: Message, body: bytes) -> int:
    status = 0
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a client that stays connected
        raise AssertionError

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app: Any, make: Callable[[], tuple[Message, bytes]], n: int, conc: int) -> float:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await call(app, *make())
            if status != 200:
                raise RuntimeError(f"status {status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.perf_counter() - started


class GCTimer:
    """Times the garbage collector's passes, by generation, while entered."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.counts[generation] += 1

    def __enter__(self) -> GCTimer:
        if self.enabled:
            gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            gc.callbacks.remove(self._callback)

    def report(self, elapsed: float) -> str:
        parts = [
            f"gen{g}: {n} passes, {t * 1000:.0f} ms"
            for g, (n, t) in enumerate(zip(self.counts, self.seconds, strict=True))
        ]
        share = sum(self.seconds) / elapsed * 100
        return f"garbage collection: {share:.0f}% of {elapsed:.2f} s ({'; '.join(parts)})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("case", choices=list(PATHS))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--no-profile", action="store_true", help="only the unprofiled rate")
    parser.add_argument("--gc", action="store_true", help="report the time spent collecting")
    parser.add_argument("--store", help="a store URL (default: memory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        store = open_store(args.store, Path(tmp), cleanup)
        profile(args, make_app(args.case, store))


def open_store(url: str | None, tmp: Path, cleanup: contextlib.ExitStack) -> Any:
    """The store named by `url` (None: memory); `sqlite:///` alone means a fresh file."""
    if url is None:
        return None
    from flock.core.store.sql import store_from_url

    if url == "sqlite:///":
        url = f"sqlite:///{tmp / 'profile.db'}"
    if url.startswith(("postgresql", "postgres:")):
        schema = services.unique_name("profile")
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}schema={schema}"
        cleanup.callback(asyncio.run, services.drop_schema(url, schema))
    return store_from_url(url)


def profile(args: argparse.Namespace, app: Any) -> None:
    make = request_factory(args.case)
    with new_loop_runner() as runner:
        runner.run(drive(app, make, 500, args.concurrency))  # warm up (and the replay's key)
        with GCTimer(enabled=args.gc) as collecting:
            plain = runner.run(drive(app, make, args.requests, args.concurrency))
        print(f"{args.case}: {args.requests / plain:,.0f} req/s unprofiled, in-process")
        if args.gc:
            print(collecting.report(plain))
        if args.no_profile:
            return
        if args.pyinstrument:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="disabled", interval=0.0002)
            profiler.start()
            runner.run(drive(app, make, args.requests, args.concurrency))
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
            return
        profiler = cProfile.Profile()
        profiler.enable()
        runner.run(drive(app, make, args.requests, args.concurrency))
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats(args.sort)
    stats.print_stats(args.limit)
    print(out.getvalue())


if __name__ == "__main__":
    main()
