"""Idempotency stores: claim, complete and lookup latency per backend.

Each round claims a fresh key, completes it with a sync-publish-sized response, then looks
it up (what a replay does), timing each call. PostgreSQL uses a private schema and Redis a
private key prefix, both removed afterwards.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks import services
from benchmarks.context import Context
from benchmarks.report import Row
from benchmarks.timing import new_loop_runner, summary_ms
from flock.api.idempotency import (
    CachedResponse,
    IdempotencyStore,
    InMemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
    SQLiteIdempotencyStore,
)

RESPONSE = CachedResponse(200, b"x" * 1700, {"content-type": "application/json"})


async def measure(store: IdempotencyStore, rounds: int) -> dict[str, float]:
    timings: dict[str, list[float]] = {"claim": [], "complete": [], "lookup": []}
    for i in range(rounds + 20):
        key, owner = uuid.uuid4().hex, uuid.uuid4().hex
        t0 = time.perf_counter()
        claim = await store.claim(key, "f" * 64, owner=owner, lease_seconds=30, ttl_seconds=600)
        t1 = time.perf_counter()
        done = await store.complete(key, owner, RESPONSE, 600)
        t2 = time.perf_counter()
        record = await store.get(key)
        t3 = time.perf_counter()
        if not (claim.acquired and done and record is not None and record.response == RESPONSE):
            raise RuntimeError(f"{type(store).__name__} did not keep the record")
        if i >= 20:  # the first rounds warm up connections and statements
            timings["claim"].append(t1 - t0)
            timings["complete"].append(t2 - t1)
            timings["lookup"].append(t3 - t2)
    figures = {}
    for op, samples in timings.items():
        summary = summary_ms(samples)
        figures[f"{op} p50_ms"] = summary["p50_ms"]
        figures[f"{op} p95_ms"] = summary["p95_ms"]
    return figures


def run(ctx: Context) -> list[Row]:
    rounds = 300 if ctx.quick else 2000
    rows: list[Row] = []
    with new_loop_runner() as runner, tempfile.TemporaryDirectory() as tmp:
        backends: list[tuple[str, Callable[[], IdempotencyStore], Callable[[], Awaitable[object]]]]
        backends = [
            ("memory", InMemoryIdempotencyStore, _nothing),
            ("SQLite", lambda: SQLiteIdempotencyStore(Path(tmp) / "idem.db"), _nothing),
        ]
        pg_skip = runner.run(services.postgres_available(ctx.postgres_url))
        if pg_skip is None:
            schema = services.unique_name("bench_idem")
            backends.append(("PostgreSQL",
                             lambda: PostgresIdempotencyStore(ctx.postgres_url, schema=schema),
                             lambda: services.drop_schema(ctx.postgres_url, schema)))  # fmt: skip
        redis_skip = runner.run(services.redis_available(ctx.redis_url))
        if redis_skip is None:
            prefix = services.unique_name("flock-bench") + ":"
            backends.append(("Redis", lambda: RedisIdempotencyStore(ctx.redis_url, prefix=prefix),
                             lambda: services.delete_prefix(ctx.redis_url, prefix)))  # fmt: skip
        for name, make, cleanup in backends:
            store = make()
            try:
                figures = runner.run(measure(store, rounds))
            finally:
                runner.run(store.close())
                runner.run(cleanup())
            rows.append(Row("idempotency store", name, figures))
        for skipped in (pg_skip, redis_skip):
            if skipped is not None:
                rows.append(
                    Row("idempotency store", skipped.split()[0], note=f"skipped: {skipped}")
                )
    return rows


async def _nothing() -> None:
    return None
