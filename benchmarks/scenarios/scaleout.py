"""Scale-out: one all-in-one `flock serve` against replicas and against HTTP-only + workers.

Every layout shares PostgreSQL (artifacts and runs, a private schema per run) and Redis
(idempotency, a private key prefix per run), and serves the same 3-stage cascade app:

- all-in-one: one `flock serve` that serves HTTP and runs the agents (the reference);
- `--workers N`: N such processes on one port (`flock serve --workers N`);
- HTTP-only + N workers: `flock serve --no-worker` and N `flock worker` processes.

Measured per layout, in the same run: sync publish throughput (plain and keyed first call)
at 16 connections, its CPU time per request in every process we started (summed over the
serve tree and the workers, and split by kind) and in the PostgreSQL backends serving them;
the RSS and the PostgreSQL connections of each kind of process; and the latency of sync
calls made one at a time (p50, p90), per layout and alternating between an all-in-one
server and an HTTP-only server with one worker, both running, so that the difference is
what handing a cascade to another process costs. On a 2-core machine the load generator,
PostgreSQL and Redis share the cores with the processes measured, which bounds what more
processes can add.

On a bigger machine, run the same scenario with more workers (see `--help`):

    uv run python -m benchmarks.scenarios.scaleout --workers-list 1,2,4,8 \\
        --store postgresql://USER@HOST/DB --idempotency redis://HOST:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks import machine, services
from benchmarks.backends import Backends
from benchmarks.context import POSTGRES_URL, REDIS_URL, Context
from benchmarks.loadgen import LoadResult, Request, run_load, wrk_path
from benchmarks.report import RESULTS_DIR, Row, table
from benchmarks.scenarios.http import KEYED_SYNC, SYNC_PUBLISH, WARMUP_SECONDS, check_served
from benchmarks.server import Server, cpu_seconds

CASES = (("sync publish", SYNC_PUBLISH), ("sync publish, keyed first call", KEYED_SYNC))


@dataclass(frozen=True)
class Layout:
    """Which processes serve HTTP and which execute runs."""

    serve_processes: int  # `flock serve --workers N`
    embedded: bool  # the serve processes execute runs too (no `--no-worker`)
    workers: int = 0  # separate `flock worker` processes

    @property
    def name(self) -> str:
        if self.embedded:
            return (
                "all-in-one" if self.serve_processes == 1 else f"--workers {self.serve_processes}"
            )
        http = "HTTP-only" if self.serve_processes == 1 else f"HTTP-only x{self.serve_processes}"
        return f"{http} + {self.workers} worker{'s' if self.workers != 1 else ''}"

    @property
    def executing(self) -> int:
        """Processes that execute agent runs."""
        return self.serve_processes if self.embedded else self.workers


REFERENCE = Layout(1, embedded=True)


@dataclass(frozen=True)
class Plan:
    """What to measure; the defaults are what `python -m benchmarks` runs."""

    workers: tuple[int, ...] = (1, 2)  # HTTP-only + N workers, for each N
    replicas: tuple[int, ...] = (2,)  # `flock serve --workers N`, for each N
    http_processes: int = 1  # `flock serve --no-worker --workers M` in front of the workers
    connections: int = 16
    seconds: float | None = None  # of each load run (default: the context's)
    concurrency: int | None = None  # FLOCK_WORKER_CONCURRENCY for every process
    stage_cap: str | None = None  # FLOCK_BENCH_STAGE_CAP: the stages' cap, or "none"
    store: str | None = None  # PostgreSQL URL (default: the context's)
    idempotency: str | None = None  # Redis or PostgreSQL URL (default: the context's Redis)

    def layouts(self) -> list[Layout]:
        layouts = [REFERENCE]
        layouts += [Layout(n, embedded=True) for n in self.replicas if n > 1]
        layouts += [Layout(self.http_processes, embedded=False, workers=n) for n in self.workers]
        return layouts


@dataclass
class Measured:
    """One layout's figures in one run."""

    figures: dict[str, dict[str, float]] = field(default_factory=dict)  # by case
    errors: int = 0
    latency_failures: int = 0


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def _load_with_cpu(
    serve: Server,
    workers: list[Server],
    backends: Backends,
    request: Request,
    connections: int,
    seconds: float,
    ctx: Context,
) -> tuple[LoadResult, dict[str, float]]:
    """One load run; the CPU each kind of process used, per request, in microseconds."""
    mine = serve.pids() + [pid for w in workers for pid in w.pids()]
    pg_before = _cpu_by_pid(backends.backends(mine))
    serve_before = serve.cpu_seconds()
    workers_before = sum(w.cpu_seconds() for w in workers)
    result = run_load(serve.url, request, connections, seconds, ctx.loadgen)
    serve_used = serve.cpu_seconds() - serve_before
    workers_used = sum(w.cpu_seconds() for w in workers) - workers_before
    pg_after = _cpu_by_pid(backends.backends(mine))
    # A backend opened during the run counts whole; one closed during it is missed.
    pg_used = sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items())
    per = 1e6 / max(result.requests, 1)
    result.cpu_us = (serve_used + workers_used) * per
    return result, {
        "serve_cpu_us": serve_used * per,
        "worker_cpu_us": workers_used * per,
        "pg_cpu_us": pg_used * per,
    }


class SyncCaller:
    """Sync calls one at a time on one keep-alive connection, each timed (ms); a call that
    does not answer 200 with a completed cascade counts as a failure."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                               timeout=60)  # fmt: skip
        self.times: list[float] = []
        self.failures = 0

    def call(self) -> None:
        headers = {"Content-Type": "application/json"}
        started = time.perf_counter()
        self.conn.request("POST", SYNC_PUBLISH.path, SYNC_PUBLISH.body, headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status == 200 and json.loads(body).get("completed") is True:
            self.times.append(elapsed)
        else:
            self.failures += 1

    def close(self) -> None:
        self.conn.close()

    def figures(self) -> dict[str, float]:
        return {
            "p50_ms": _percentile(self.times, 50),
            "p90_ms": _percentile(self.times, 90),
            "calls": float(len(self.times)),
        }


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@dataclass
class Deployment:
    """The processes of one layout, running."""

    layout: Layout
    serve: Server
    workers: list[Server]
    backends: Backends


@contextmanager
def deployment(ctx: Context, plan: Plan, layout: Layout) -> Iterator[Deployment]:
    """Start `layout` on a private schema and key prefix; stop it and remove them after."""
    postgres = plan.store or ctx.postgres_url
    schema = services.unique_name("bench_scale")
    prefix = services.unique_name("flock-bench-scale") + ":"
    store = services.with_query(postgres, schema=schema)
    idem_base = plan.idempotency or ctx.redis_url
    idempotency = (
        services.with_query(idem_base, prefix=prefix)
        if idem_base.startswith("redis")
        else services.with_query(idem_base, schema=schema)
    )
    env = {"FLOCK_WORKER_CONCURRENCY": str(plan.concurrency)} if plan.concurrency else {}
    if plan.stage_cap is not None:
        env["FLOCK_BENCH_STAGE_CAP"] = plan.stage_cap
    try:
        with ExitStack() as stack:
            serve = stack.enter_context(
                Server.flock(store=store, idempotency=idempotency,
                             workers=layout.serve_processes, run_worker=layout.embedded,
                             env=env)
            )  # fmt: skip
            workers = [
                stack.enter_context(Server.worker(store=store, env=env))
                for _ in range(layout.workers)
            ]
            check_served(serve.url, SYNC_PUBLISH)
            yield Deployment(layout, serve, workers, Backends(postgres))
    finally:
        asyncio.run(services.drop_schema(postgres, schema))
        if idem_base.startswith("redis"):
            asyncio.run(services.delete_prefix(idem_base, prefix))


def measure_layout(ctx: Context, plan: Plan, layout: Layout) -> Measured:
    """Throughput and CPU per request of each case, process costs, one-at-a-time latency."""
    seconds = plan.seconds or ctx.seconds
    measured = Measured()
    with deployment(ctx, plan, layout) as d:
        for name, request in CASES:
            check_served(d.serve.url, request)
            run_load(d.serve.url, request, plan.connections, WARMUP_SECONDS, ctx.loadgen)
            result, split = _load_with_cpu(
                d.serve, d.workers, d.backends, request, plan.connections, seconds, ctx
            )
            measured.errors += result.errors
            measured.figures[name] = {
                "rps": result.rps,
                "rps_per_process": result.rps / layout.executing,
                "p50_ms": result.p50_ms,
                "p95_ms": result.p95_ms,
                "cpu_us": result.cpu_us or 0.0,
                **split,
            }
        # Right after the load: the pools are as large as the load made them.
        measured.figures["processes"] = {
            "serve_rss_mib": d.serve.rss_mib(),
            "serve_pg_conns": float(d.backends.connections(d.serve.pids())),
        }
        if d.workers:
            measured.figures["processes"].update(
                worker_rss_mib=statistics.mean(w.rss_mib() for w in d.workers),
                worker_pg_conns=statistics.mean(
                    d.backends.connections(w.pids()) for w in d.workers
                ),
            )
        caller = SyncCaller(d.serve.url)
        try:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                caller.call()
        finally:
            caller.close()
        measured.figures["latency"] = caller.figures()
        measured.latency_failures = caller.failures
    return measured


HANDOFF = Layout(1, embedded=False, workers=1)


def measure_handoff(ctx: Context, plan: Plan) -> tuple[SyncCaller, SyncCaller]:
    """One-at-a-time sync calls to an all-in-one server and to an HTTP-only server with one
    worker, both running, alternating between them: a slow or noisy moment of the machine
    hits both alike, so the difference is what the handoff between processes costs."""
    seconds = 2 * (plan.seconds or ctx.seconds)
    with deployment(ctx, plan, REFERENCE) as one, deployment(ctx, plan, HANDOFF) as split:
        callers = (SyncCaller(one.serve.url), SyncCaller(split.serve.url))
        try:
            for caller in callers:  # warm-up, not counted
                for _ in range(5):
                    caller.call()
                caller.times.clear()
            deadline = time.perf_counter() + seconds
            turn = 0
            while time.perf_counter() < deadline:
                first, second = callers if turn % 2 == 0 else callers[::-1]
                first.call()
                second.call()
                turn += 1
        finally:
            for caller in callers:
                caller.close()
    return callers


def _median(runs: list[Measured], case: str) -> dict[str, float]:
    keys = runs[0].figures[case]
    return {k: statistics.median(r.figures[case][k] for r in runs) for k in keys}


def run(ctx: Context, plan: Plan | None = None) -> list[Row]:
    plan = plan or Plan()
    postgres = plan.store or ctx.postgres_url
    idem = plan.idempotency or ctx.redis_url
    checks = [services.postgres_available(postgres)]
    if idem.startswith("redis"):
        checks.append(services.redis_available(idem))
    for check in checks:
        skipped = asyncio.run(check)
        if skipped is not None:
            return [Row("scale-out", "all layouts", note=f"skipped: {skipped}")]
    layouts = plan.layouts()
    runs: dict[Layout, list[Measured]] = {layout: [] for layout in layouts}
    handoffs: list[tuple[SyncCaller, SyncCaller]] = []
    for i in range(ctx.repeat):  # interleaved: a noisy minute hits every layout alike
        for layout in layouts:
            measured = measure_layout(ctx, plan, layout)
            runs[layout].append(measured)
            sync = measured.figures["sync publish"]
            print(f"  run {i + 1}, {layout.name}: {sync['rps']:.1f} req/s, "
                  f"{sync['cpu_us'] / 1000:.1f} ms CPU per request, one-at-a-time p50 "
                  f"{measured.figures['latency']['p50_ms']:.1f} ms", flush=True)  # fmt: skip
        handoffs.append(measure_handoff(ctx, plan))
        one, split = (c.figures()["p50_ms"] for c in handoffs[-1])
        print(f"  run {i + 1}, handoff: p50 {one:.1f} ms all-in-one, {split:.1f} ms "
              f"{HANDOFF.name}", flush=True)  # fmt: skip
    reference = {case: _median(runs[REFERENCE], case) for case in ("sync publish", "latency")}
    rows = []
    c = plan.connections
    for layout in layouts:
        results = runs[layout]
        for name, _ in CASES:
            figures = _median(results, name)
            row = Row("scale-out", f"{name}, {c} conn, {layout.name}", figures)
            if layout != REFERENCE and name == "sync publish":
                row.ratio, row.ratio_of = figures["rps"] / reference[name]["rps"], "of all-in-one"
            spread = ", ".join(f"{r.figures[name]['rps']:,.0f}" for r in results)
            row.note = f"req/s over {len(results)} run(s): {spread}"
            rows.append(row)
        latency = _median(results, "latency")
        row = Row("scale-out", f"sync call latency, 1 conn, {layout.name}", latency)
        if layout != REFERENCE:
            row.ratio = latency["p50_ms"] / reference["latency"]["p50_ms"]
            row.ratio_of = "p50 of all-in-one"
        p50s = ", ".join(f"{r.figures['latency']['p50_ms']:.1f}" for r in results)
        failures = sum(r.latency_failures for r in results)
        row.note = f"p50 ms over {len(results)} run(s): {p50s}; {failures} failed calls"
        rows.append(row)
        row = Row("scale-out", f"process costs, {layout.name}", _median(results, "processes"))
        errors = sum(r.errors for r in results)
        row.note = f"{layout.executing} executing process(es); {errors} load errors"
        rows.append(row)
    rows += _handoff_rows(handoffs)
    return rows


def _handoff_rows(handoffs: list[tuple[SyncCaller, SyncCaller]]) -> list[Row]:
    """The interleaved latency of both layouts: medians of each run's p50 and p90."""
    figures = [[caller.figures() for caller in pair] for pair in handoffs]
    rows = []
    for i, layout in enumerate((REFERENCE, HANDOFF)):
        shown = {k: statistics.median(f[i][k] for f in figures) for k in figures[0][i]}
        case = f"sync call latency, 1 conn, alternating with the other layout, {layout.name}"
        row = Row("scale-out", case, shown)
        p50s = ", ".join(f"{f[i]['p50_ms']:.1f}" for f in figures)
        failures = sum(pair[i].failures for pair in handoffs)
        row.note = f"p50 ms over {len(figures)} run(s): {p50s}; {failures} failed calls"
        rows.append(row)
    differences = [f[1]["p50_ms"] - f[0]["p50_ms"] for f in figures]
    rows[-1].figures["added_p50_ms"] = statistics.median(differences)
    rows[-1].ratio = rows[-1].figures["p50_ms"] / rows[0].figures["p50_ms"]
    rows[-1].ratio_of = "p50 of all-in-one"
    rows[-1].note += "; p50 added by the handoff per run (ms): " + ", ".join(
        f"{d:+.1f}" for d in differences
    )
    return rows


def _numbers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of integers, not {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("every number must be at least 1")
    return values


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def main(argv: list[str] | None = None) -> int:
    """This scenario alone, with its own options (e.g. more workers on a bigger machine)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scenarios.scaleout",
        description="all-in-one flock serve vs replicas vs HTTP-only + N flock workers",
    )
    parser.add_argument(
        "--workers-list",
        type=_numbers,
        default=(1, 2),
        metavar="N,N,...",
        help="HTTP-only + N workers, for each N (default 1,2)",
    )
    parser.add_argument(
        "--replicas-list",
        type=_numbers,
        default=(2,),
        metavar="N,N,...",
        help="flock serve --workers N (each with its own worker), for each N "
        "(default 2; all-in-one, N=1, always runs as the reference)",
    )
    parser.add_argument(
        "--http-processes",
        type=int,
        default=1,
        metavar="M",
        help="flock serve --no-worker --workers M in front of the workers (default 1)",
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="load generator connections (default 16)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="each load run (default 10; 3 with --quick)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measure every layout this many times, interleaved; medians",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="FLOCK_WORKER_CONCURRENCY of every process (default 64)",
    )
    parser.add_argument(
        "--stage-cap",
        metavar="N|none",
        help="max_concurrency of each stage of the app (default: the app's, none: "
        "uncapped, as agents are by default)",
    )
    parser.add_argument(
        "--store", default=POSTGRES_URL, metavar="URL", help=f"PostgreSQL (default {POSTGRES_URL})"
    )
    parser.add_argument(
        "--idempotency",
        default=REDIS_URL,
        metavar="URL",
        help=f"Redis or PostgreSQL for idempotency (default {REDIS_URL})",
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--quick", action="store_true", help="3 s runs, once")
    parser.add_argument("--out", metavar="FILE", help="results JSON (default "
                        "benchmarks/results/scaleout-<UTC time>.json)")  # fmt: skip
    args = parser.parse_args(argv)
    tool = args.loadgen if args.loadgen != "auto" else ("wrk" if wrk_path() else "python")
    repeat = 1 if args.quick else args.repeat
    ctx = Context(quick=args.quick, loadgen=tool, repeat=repeat, postgres_url=args.store,
                  redis_url=args.idempotency)  # fmt: skip
    plan = Plan(
        workers=args.workers_list,
        replicas=args.replicas_list,
        http_processes=args.http_processes,
        connections=args.connections,
        seconds=3.0 if args.quick else args.seconds,
        concurrency=args.concurrency,
        stage_cap=args.stage_cap,
        store=args.store,
        idempotency=args.idempotency,
    )
    meta: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.scenarios.scaleout", *sys.argv[1:]]),
        "mode": "quick" if args.quick else "full",
        "loadgen": "wrk" if tool == "wrk" else "python-asyncio",
        "repeat": repeat,
        "plan": {
            **asdict(plan),
            "store": _redact(args.store),
            "idempotency": _redact(args.idempotency),
        },
        "machine": machine.describe(),
    }
    started = time.monotonic()
    rows = run(ctx, plan)
    meta["machine"]["load_average_end"] = machine.load_average()
    meta["scenario_seconds"] = {"scaleout": round(time.monotonic() - started, 1)}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.out) if args.out else RESULTS_DIR / f"scaleout-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=2, default=str))
    print(table(rows))
    print(f"\nload average at the end: {meta['machine']['load_average_end']}; JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
