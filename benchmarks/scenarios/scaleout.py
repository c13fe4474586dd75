"""Scale-out: sync publish throughput of `flock serve --workers 1` against `--workers 2`.

Both share PostgreSQL (artifacts, a private schema per run) and Redis (idempotency, a
private key prefix per run), as replicas would. Each worker runs the cascades of the
requests it accepted. Measured: plain sync publish and keyed (first call) sync publish at
16 connections. On a 2-core machine the load generator, PostgreSQL and Redis share the
cores with the workers, which bounds what a second worker can add.
"""

from __future__ import annotations

import asyncio
import statistics

from benchmarks import services
from benchmarks.context import Context
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.report import Row
from benchmarks.scenarios.http import (
    KEYED_SYNC,
    SYNC_PUBLISH,
    WARMUP_SECONDS,
    check_served,
    measure,
)
from benchmarks.server import Server

CASES = (("sync publish", SYNC_PUBLISH), ("sync publish, keyed first call", KEYED_SYNC))


def measure_workers(ctx: Context, workers: int) -> dict[str, LoadResult]:
    schema = services.unique_name("bench_scale")
    prefix = services.unique_name("flock-bench-scale") + ":"
    store = services.with_query(ctx.postgres_url, schema=schema)
    idempotency = services.with_query(ctx.redis_url, prefix=prefix)
    try:
        with Server.flock(store=store, idempotency=idempotency, workers=workers) as server:
            results = {}
            for name, request in CASES:
                check_served(server.url, request)
                run_load(server.url, request, 16, WARMUP_SECONDS, ctx.loadgen)
                results[name] = measure(server, request, 16, ctx)
            return results
    finally:
        asyncio.run(services.drop_schema(ctx.postgres_url, schema))
        asyncio.run(services.delete_prefix(ctx.redis_url, prefix))


def run(ctx: Context) -> list[Row]:
    for skipped in (
        asyncio.run(services.postgres_available(ctx.postgres_url)),
        asyncio.run(services.redis_available(ctx.redis_url)),
    ):
        if skipped is not None:
            return [Row("scale-out", "--workers 1 vs 2", note=f"skipped: {skipped}")]
    runs: dict[int, list[dict[str, LoadResult]]] = {1: [], 2: []}
    for _ in range(ctx.repeat):
        for workers in runs:
            runs[workers].append(measure_workers(ctx, workers))
    rows = []
    for name, _ in CASES:
        one = statistics.median(r[name].rps for r in runs[1])
        for workers, results in runs.items():
            rps = statistics.median(r[name].rps for r in results)
            p50 = statistics.median(r[name].p50_ms for r in results)
            cpu = statistics.median(r[name].cpu_us or 0.0 for r in results)
            row = Row("scale-out", f"{name}, 16 conn, --workers {workers}",
                      {"rps": rps, "p50_ms": p50, "cpu_us": cpu})  # fmt: skip
            if workers != 1:
                row.ratio, row.ratio_of = rps / one, "of --workers 1"
            errors = sum(r[name].errors for r in results)
            row.note = f"{results[0][name].tool}; PostgreSQL + Redis; {errors} errors"
            rows.append(row)
    return rows
