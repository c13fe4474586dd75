"""In-process: publish -> 3-stage cascade -> idle, on the memory and SQLite stores.

No HTTP: one publish and `run_until_idle(correlation_id=...)` at a time, timed together.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.apps.cascade import Start, build
from benchmarks.context import Context
from benchmarks.report import Row
from benchmarks.timing import new_loop_runner, sample, summary_ms
from flock.core.store import InMemoryBlackboardStore, SQLiteBlackboardStore

TARGET_P50_MS = 0.25


async def cascade_latency(store: object, n: int, warmup: int) -> list[float]:
    flock = build(store)
    count = 0

    async def one() -> None:
        nonlocal count
        count += 1
        artifact = await flock.publish(Start(n=count))
        await flock.run_until_idle(correlation_id=artifact.correlation_id)

    try:
        return await sample(one, n, warmup)
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
    return rows
