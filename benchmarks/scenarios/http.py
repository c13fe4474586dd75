"""HTTP: the baseline route, async publish, sync publish (plain, keyed first call, replay).

Each case runs against a fresh `flock serve` (memory stores unless said otherwise), after a
short warm-up, and is compared with the bare FastAPI route at the same number of
connections, measured in the same run. With `--repeat N` every case is measured N times,
interleaved with the baseline, and the medians are reported. One more case serves the
cascade from SQLite files (the CLI's default stores), for scale: it is bound by the writes.
Another, a diagnostic, runs the memory-store sync case with the server's garbage collector
disabled, to show how much of the request cost is the collector's.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import uuid
from dataclasses import dataclass

import httpx

from benchmarks.context import Context
from benchmarks.loadgen import LoadResult, Request, run_load
from benchmarks.report import Row
from benchmarks.server import Server

SYNC_TARGET = 0.40  # sync publish at 16 connections, share of the baseline's req/s
REPLAY_TARGET = 0.70
WARMUP_SECONDS = 1.0

BASELINE = Request(path="/ok")
START_BODY = json.dumps({"type": "BenchStart", "payload": {"n": 1}}).encode()
ASYNC_PUBLISH = Request("POST", "/api/v1/artifacts", START_BODY)
SYNC_PUBLISH = Request("POST", "/api/v1/artifacts/sync", START_BODY)
KEYED_SYNC = Request("POST", "/api/v1/artifacts/sync", START_BODY, unique_key=True)


@dataclass(frozen=True)
class Case:
    name: str
    request: Request
    connections: int
    replay: bool = False  # send the request once first, then load it with the same key
    target: float | None = None
    sqlite: bool = False  # SQLite files for both stores instead of memory
    gc_off: bool = False  # a diagnostic: the server's garbage collector disabled


CASES = [
    Case("async publish", ASYNC_PUBLISH, 16),
    Case("sync publish, 3-stage cascade", SYNC_PUBLISH, 1),
    Case("sync publish, 3-stage cascade", SYNC_PUBLISH, 16, target=SYNC_TARGET),
    Case("sync publish, keyed first call", KEYED_SYNC, 1),
    Case("sync publish, keyed first call", KEYED_SYNC, 16),
    Case("sync publish, replay (same key & body)", SYNC_PUBLISH, 1, replay=True),
    Case("sync publish, replay (same key & body)", SYNC_PUBLISH, 16, replay=True,
         target=REPLAY_TARGET),
    Case("sync publish, SQLite stores", SYNC_PUBLISH, 16, sqlite=True),
    Case("sync publish, collector off (diagnostic)", SYNC_PUBLISH, 16, gc_off=True),
]  # fmt: skip


def prepare_replay(url: str, request: Request) -> Request:
    """Make the first call of a key; return the request that replays it."""
    key = f"replay-{uuid.uuid4().hex}"
    headers = {**request.headers, "Idempotency-Key": key, "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as client:
        first = client.post(request.path, content=request.body, headers=headers)
        again = client.post(request.path, content=request.body, headers=headers)
    if first.status_code != 200 or again.headers.get("idempotent-replayed") != "true":
        raise RuntimeError(f"replay setup failed: {first.status_code} {again.headers}")
    return Request(request.method, request.path, request.body, headers)


def check_served(url: str, request: Request) -> None:
    """One request must succeed (a benchmark of errors would measure nothing)."""
    headers = {**request.headers, "Content-Type": "application/json"}
    if request.unique_key:
        headers["Idempotency-Key"] = f"check-{uuid.uuid4().hex}"
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.request(request.method, request.path, content=request.body or None,
                                  headers=headers)  # fmt: skip
    if response.status_code != 200:
        raise RuntimeError(
            f"{request.method} {request.path}: {response.status_code} {response.text}"
        )
    if request.path.endswith("/sync") and len(response.json()["artifacts"]) != 4:
        raise RuntimeError(f"the cascade did not produce 4 artifacts: {response.text}")


def measure_case(ctx: Context, case: Case) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        stores = (f"sqlite:///{tmp}/blackboard.db", f"sqlite:///{tmp}/idempotency.db")
        store, idempotency = stores if case.sqlite else ("memory://", "memory://")
        env = {"FLOCK_BENCH_GC": "off"} if case.gc_off else None
        with Server.flock(store=store, idempotency=idempotency, env=env) as server:
            check_served(server.url, case.request)
            request = prepare_replay(server.url, case.request) if case.replay else case.request
            run_load(server.url, request, case.connections, WARMUP_SECONDS, ctx.loadgen)
            return measure(server, request, case.connections, ctx)


def measure(server: Server, request: Request, connections: int, ctx: Context) -> LoadResult:
    """One load run; also records the server's CPU time per request (`cpu_us`)."""
    before = server.cpu_seconds()
    result = run_load(server.url, request, connections, ctx.seconds, ctx.loadgen)
    result.cpu_us = (server.cpu_seconds() - before) / max(result.requests, 1) * 1e6
    return result


def median_result(results: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (its latencies come along with it)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


def figures(result: LoadResult) -> dict[str, float]:
    shown = {"rps": result.rps, "p50_ms": result.p50_ms, "p95_ms": result.p95_ms}
    if result.cpu_us is not None:
        shown["cpu_us"] = result.cpu_us
    return shown


def run(ctx: Context) -> list[Row]:
    baseline_runs: dict[int, list[LoadResult]] = {1: [], 16: []}
    case_runs: list[list[LoadResult]] = [[] for _ in CASES]
    with Server.baseline() as baseline:
        for connections in baseline_runs:
            run_load(baseline.url, BASELINE, connections, WARMUP_SECONDS, ctx.loadgen)
        for _ in range(ctx.repeat):
            for connections, runs in baseline_runs.items():
                runs.append(measure(baseline, BASELINE, connections, ctx))
            for case, runs in zip(CASES, case_runs, strict=True):
                runs.append(measure_case(ctx, case))
    base = {c: median_result(runs) for c, runs in baseline_runs.items()}
    rows = []
    for connections, result in base.items():
        row = Row("http", f"baseline GET /ok, {connections} conn", figures(result))
        row.note = _spread(baseline_runs[connections])
        rows.append(row)
    for case, runs in zip(CASES, case_runs, strict=True):
        result = median_result(runs)
        ratio = result.rps / base[case.connections].rps
        row = Row("http", f"{case.name}, {case.connections} conn", figures(result), ratio,
                  "of baseline req/s")  # fmt: skip
        if case.target is not None:
            row.check(ratio, at_least=case.target, label="ratio")
        errors = sum(r.errors for r in runs)
        row.note = _spread(runs) + (f"; {errors} errors" if errors else "")
        rows.append(row)
    return rows


def _spread(runs: list[LoadResult]) -> str:
    if len(runs) < 2:
        return f"{runs[0].tool}"
    rps = [r.rps for r in runs]
    return (
        f"{runs[0].tool}; req/s over {len(runs)} runs: "
        + ", ".join(f"{x:,.0f}" for x in rps)
        + f" (stdev {statistics.stdev(rps):,.0f})"
    )


__all__ = ["CASES", "check_served", "figures", "median_result", "prepare_replay", "run"]
