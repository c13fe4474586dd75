"""Isolation: fast sync calls while unrelated slow workflows are in flight, against alone.

A sync call waits for its own correlation only, so a 3 s workflow in flight must not slow
it down. The fast calls (the 3-stage cascade) go one at a time on one connection, timed per
request by the Python load generator; the slow ones (`BenchSlow`, an agent sleeping 3 s)
are kept in flight by a background thread, several at once, each a sync call of its own.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import httpx

from benchmarks.apps.cascade import SLOW_SECONDS
from benchmarks.context import Context
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.report import Row
from benchmarks.scenarios.http import SYNC_PUBLISH, check_served
from benchmarks.server import Server

TARGET_RATIO = 1.2
SLOW_IN_FLIGHT = 8
FAST = json.dumps({"type": "BenchStart", "payload": {"n": 1}}).encode()
SLOW = json.dumps({"type": "BenchSlow", "payload": {"n": 1}, "timeout": 60}).encode()
HEADERS = {"Content-Type": "application/json"}
SYNC = "/api/v1/artifacts/sync"


class SlowTraffic:
    """Keeps `n` slow sync calls in flight until stopped; records how long each took."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.durations: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._in_flight = threading.Semaphore(0)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.n)
        async with httpx.AsyncClient(base_url=self.url, timeout=90, limits=limits) as client:
            await asyncio.gather(*(self._loop(client) for _ in range(self.n)))

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            request = client.post(SYNC, content=SLOW, headers=HEADERS)
            task = asyncio.ensure_future(request)
            await asyncio.sleep(0.2)  # the request is on the wire: count it as in flight
            self._in_flight.release()
            response = await task
            if response.status_code == 200 and response.json()["completed"]:
                self.durations.append(time.perf_counter() - started)
            else:
                self.failures += 1

    def __enter__(self) -> SlowTraffic:
        self._thread.start()
        for _ in range(self.n):
            self._in_flight.acquire(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=SLOW_SECONDS * 3 + 30)


def fast_calls(url: str, seconds: float) -> LoadResult:
    result = run_load(url, SYNC_PUBLISH, 1, seconds, tool="python")
    if result.errors:
        raise RuntimeError(f"{result.errors} fast sync calls failed")
    return result


def run(ctx: Context) -> list[Row]:
    seconds = min(ctx.seconds, SLOW_SECONDS * 2)
    alone: list[LoadResult] = []
    loaded: list[LoadResult] = []
    slow_durations: list[float] = []
    failures = 0
    with Server.flock(store="memory://", idempotency="memory://") as server:
        check_served(server.url, SYNC_PUBLISH)
        fast_calls(server.url, 1.0)  # warm-up
        for _ in range(ctx.repeat):
            alone.append(fast_calls(server.url, seconds))
            with SlowTraffic(server.url, SLOW_IN_FLIGHT) as slow:
                loaded.append(fast_calls(server.url, seconds))
            slow_durations += slow.durations
            failures += slow.failures
    p50_alone = statistics.median(r.p50_ms for r in alone) / 1000
    p50_loaded = statistics.median(r.p50_ms for r in loaded) / 1000
    p95_alone = statistics.median(r.p95_ms for r in alone) / 1000
    p95_loaded = statistics.median(r.p95_ms for r in loaded) / 1000
    rows = [
        Row("isolation", "fast sync call alone (1 conn)",
            {"p50_ms": p50_alone * 1000, "p95_ms": p95_alone * 1000}),
        Row("isolation", f"fast sync call, {SLOW_IN_FLIGHT} slow workflows in flight",
            {"p50_ms": p50_loaded * 1000, "p95_ms": p95_loaded * 1000},
            p50_loaded / p50_alone, "p50 vs alone"),
    ]  # fmt: skip
    rows[-1].check(p50_loaded / p50_alone, at_most=TARGET_RATIO, label="ratio")
    slowest = max(slow_durations, default=float("nan"))
    rows[-1].note = (
        f"python-asyncio client; p95 ratio {p95_loaded / p95_alone:.2f}; the slow workflows "
        f"({SLOW_SECONDS:g} s each) took up to {slowest:.2f} s, {len(slow_durations)} completed, "
        f"{failures} failed"
    )
    return rows
