"""The three stores side by side: the same app, the same load, ratios to memory in one run.

For each blackboard store (memory, SQLite file, PostgreSQL in a private schema):

- sync publish of the 3-stage cascade at 16 connections through a real `flock serve`
  (idempotency store in memory, the request unkeyed: only the blackboard store differs),
  with the server's CPU time per call;
- the in-process cascade (`publish` then `run_until_idle`, one at a time), p50.

Every figure is divided by the memory store's, measured in the same run (with `--repeat N`,
interleaved, medians reported), so a noisy machine moves all three stores alike.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import services
from benchmarks.context import Context
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.report import Row
from benchmarks.scenarios.http import SYNC_PUBLISH, WARMUP_SECONDS, check_served, measure
from benchmarks.scenarios.inprocess import cascade_latency
from benchmarks.server import Server
from benchmarks.timing import new_loop_runner, summary_ms
from flock.core.store import (
    InMemoryBlackboardStore,
    PostgresBlackboardStore,
    SQLiteBlackboardStore,
)

CONNECTIONS = 16
# Issue 11's targets, as ratios to the memory store measured in the same run.
SYNC_TARGETS = {"SQLite": 0.25, "PostgreSQL": 0.20}
CASCADE_TARGET_MS = 1.0
CPU_TARGET_US = {"PostgreSQL": 1000.0}


@contextmanager
def store_url(ctx: Context, name: str) -> Iterator[str]:
    """A fresh blackboard store URL of this kind, removed afterwards."""
    if name == "memory":
        yield "memory://"
    elif name == "SQLite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/blackboard.db"
    else:
        schema = services.unique_name("bench_stores")
        try:
            yield services.with_query(ctx.postgres_url, schema=schema)
        finally:
            asyncio.run(services.drop_schema(ctx.postgres_url, schema))


def measure_http(ctx: Context, name: str) -> LoadResult:
    with store_url(ctx, name) as url, Server.flock(store=url, idempotency="memory://") as server:
        check_served(server.url, SYNC_PUBLISH)
        run_load(server.url, SYNC_PUBLISH, CONNECTIONS, WARMUP_SECONDS, ctx.loadgen)
        return measure(server, SYNC_PUBLISH, CONNECTIONS, ctx)


def measure_cascade(ctx: Context, runner: asyncio.Runner, name: str) -> float:
    n, warmup = (300, 50) if ctx.quick else (1000, 100)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "memory":
            store: object = InMemoryBlackboardStore()
        elif name == "SQLite":
            store = SQLiteBlackboardStore(Path(tmp) / "bench.db")
        else:
            schema = services.unique_name("bench_stores")
            store = PostgresBlackboardStore(ctx.postgres_url, schema=schema)
        try:
            return summary_ms(runner.run(cascade_latency(store, n, warmup)))["p50_ms"]
        finally:
            if name == "PostgreSQL":
                runner.run(services.drop_schema(ctx.postgres_url, schema))


def run(ctx: Context) -> list[Row]:
    names = ["memory", "SQLite", "PostgreSQL"]
    skipped = asyncio.run(services.postgres_available(ctx.postgres_url))
    if skipped is not None:
        names.remove("PostgreSQL")
    http: dict[str, list[LoadResult]] = {name: [] for name in names}
    cascade: dict[str, list[float]] = {name: [] for name in names}
    with new_loop_runner() as runner:
        for _ in range(ctx.repeat):
            for name in names:
                http[name].append(measure_http(ctx, name))
                cascade[name].append(measure_cascade(ctx, runner, name))
    memory_rps = statistics.median(r.rps for r in http["memory"])
    memory_p50 = statistics.median(cascade["memory"])
    rows = []
    for name in names:
        rps = statistics.median(r.rps for r in http[name])
        cpu = statistics.median(r.cpu_us or 0.0 for r in http[name])
        p50 = statistics.median(r.p50_ms for r in http[name])
        row = Row("stores", f"sync publish, {CONNECTIONS} conn, {name}",
                  {"rps": rps, "p50_ms": p50, "cpu_us": cpu}, rps / memory_rps,
                  "of memory req/s")  # fmt: skip
        if name in SYNC_TARGETS:
            row.check(rps / memory_rps, at_least=SYNC_TARGETS[name], label="ratio")
        errors = sum(r.errors for r in http[name])
        row.note = (
            f"{http[name][0].tool}; req/s over {len(http[name])} runs: "
            + ", ".join(f"{r.rps:,.0f}" for r in http[name])
            + (f"; {errors} errors" if errors else "")
            + (f"; CPU target <= {CPU_TARGET_US[name]:g} us" if name in CPU_TARGET_US else "")
        )
        rows.append(row)
    for name in names:
        p50 = statistics.median(cascade[name])
        row = Row("stores", f"in-process cascade, {name}", {"p50_ms": p50}, p50 / memory_p50,
                  "of memory p50")  # fmt: skip
        if name != "memory":
            row.check(p50, at_most=CASCADE_TARGET_MS, label="p50 ms")
        row.note = "p50 ms over runs: " + ", ".join(f"{x:.3f}" for x in cascade[name])
        rows.append(row)
    if skipped is not None:
        rows.append(Row("stores", "PostgreSQL", note=f"skipped: {skipped}"))
    return rows
