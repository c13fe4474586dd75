"""In-process: publish -> 3-stage cascade -> idle, on the memory, SQLite and PostgreSQL stores.

No HTTP: one publish and `run_until_idle(correlation_id=...)` at a time, timed together.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks import services
from benchmarks.apps.cascade import Start, build
from benchmarks.context import Context
from benchmarks.report import Row
from benchmarks.timing import new_loop_runner, sample, summary_ms
from flock.core.store import (
    FilterConfig,
    InMemoryBlackboardStore,
    PostgresBlackboardStore,
    SQLiteBlackboardStore,
)

TARGET_P50_MS = 0.25


async def cascade_latency(store: object, n: int, warmup: int) -> list[float]:
    flock = build(store)
    count = 0
    last = ""

    async def one() -> None:
        nonlocal count, last
        count += 1
        artifact = await flock.publish(Start(n=count))
        await flock.run_until_idle(correlation_id=artifact.correlation_id)
        last = artifact.correlation_id

    try:
        samples = await sample(one, n, warmup)
        _, total = await flock.store.query_artifacts(FilterConfig(correlation_id=last))
        if total != 4:
            raise RuntimeError(f"the cascade stored {total} artifacts, not 4")
        return samples
    finally:
        await flock.close()


def run(ctx: Context) -> list[Row]:
    n, warmup = (500, 100) if ctx.quick else (3000, 300)
    rows = []
    with new_loop_runner() as runner, tempfile.TemporaryDirectory() as tmp:
        memory = summary_ms(runner.run(cascade_latency(InMemoryBlackboardStore(), n, warmup)))
        row = Row("in-process", "publish -> 3-stage cascade -> idle, memory", memory)
        rows.append(row.check(memory["p50_ms"], at_most=TARGET_P50_MS, label="p50 ms"))
        sqlite_store = SQLiteBlackboardStore(Path(tmp) / "bench.db")
        sql_n = max(n // 5, 100)
        sqlite = summary_ms(runner.run(cascade_latency(sqlite_store, sql_n, warmup // 5)))
        rows.append(Row("in-process", "publish -> 3-stage cascade -> idle, SQLite", sqlite))
        if runner.run(services.postgres_available(ctx.postgres_url)) is None:
            schema = services.unique_name("bench_cascade")
            postgres_store = PostgresBlackboardStore(ctx.postgres_url, schema=schema)
            try:
                postgres = summary_ms(
                    runner.run(cascade_latency(postgres_store, sql_n, warmup // 5))
                )
            finally:
                runner.run(services.drop_schema(ctx.postgres_url, schema))
            rows.append(Row("in-process", "publish -> 3-stage cascade -> idle, PostgreSQL",
                            postgres))  # fmt: skip
    return rows
