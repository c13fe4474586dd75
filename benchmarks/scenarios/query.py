"""Query by correlation id at 1k, 10k and 50k stored artifacts, per store.

The stores are filled with cascades of 4 artifacts (one correlation each), then
`query_artifacts(FilterConfig(correlation_id=...))` is timed for random correlations:
plainly, and as the REST API asks it (also filtering by what the caller may see).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks import services
from benchmarks.context import Context
from benchmarks.report import Row
from benchmarks.timing import new_loop_runner, sample, summary_ms
from flock.core.artifacts import Artifact, new_id
from flock.core.store import (
    BlackboardStore,
    FilterConfig,
    InMemoryBlackboardStore,
    PostgresBlackboardStore,
    SQLiteBlackboardStore,
)
from flock.core.visibility import ANONYMOUS, Identity

SIZES = (1_000, 10_000, 50_000)
TARGET_MS = 1.0
CASCADE = (("BenchStart", "external"), ("BenchStage1", "stage1"), ("BenchStage2", "stage2"),
           ("BenchStage3", "stage3"))  # fmt: skip
BATCH = 1_000


async def fill(store: BlackboardStore, count: int, correlations: list[str]) -> None:
    """Add `count` artifacts (whole cascades), remembering the correlation ids."""
    batch: list[Artifact] = []
    for i in range(count // len(CASCADE)):
        cid = new_id()
        correlations.append(cid)
        for type_name, producer in CASCADE:
            payload = {"n": i}
            batch.append(Artifact(type=type_name, payload=payload, produced_by=producer,
                                  correlation_id=cid))  # fmt: skip
        if len(batch) >= BATCH:
            await store.commit_run(batch, ())
            batch = []
    if batch:
        await store.commit_run(batch, ())


async def measure(store: BlackboardStore, ctx: Context) -> list[dict[str, float]]:
    """Per size: p50/p95 of a plain query, and p50 of the REST API's form of it."""
    n = 200 if ctx.quick else 1000
    correlations: list[str] = []
    stored = 0
    results = []
    for size in SIZES:
        await fill(store, size - stored, correlations)
        stored = size
        plain = _query(store, correlations, random.Random(size), None)
        as_api = _query(store, correlations, random.Random(size), ANONYMOUS)
        figures = summary_ms(await sample(plain, n, warmup=50))
        figures.pop("mean_ms")
        figures["api_p50_ms"] = summary_ms(await sample(as_api, n, warmup=50))["p50_ms"]
        results.append(figures)
    return results


def _query(
    store: BlackboardStore, correlations: list[str], rng: random.Random, viewer: Identity | None
) -> Callable[[], Awaitable[None]]:
    """One query of a random stored correlation (checked: it finds the whole cascade)."""

    async def query() -> None:
        filters = FilterConfig(correlation_id=rng.choice(correlations), visible_to=viewer)
        items, total = await store.query_artifacts(filters, limit=50)
        if total != len(CASCADE) or len(items) != len(CASCADE):
            raise RuntimeError(f"a correlation query found {total} artifacts, not {len(CASCADE)}")

    return query


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    with new_loop_runner() as runner, tempfile.TemporaryDirectory() as tmp:
        stores: list[tuple[str, Callable[[], BlackboardStore], Callable[[], Awaitable[None]]]] = []
        stores.append(("memory", InMemoryBlackboardStore, _nothing))
        stores.append(("SQLite", lambda: SQLiteBlackboardStore(Path(tmp) / "query.db"), _nothing))
        skipped = runner.run(services.postgres_available(ctx.postgres_url))
        if skipped is None:
            schema = services.unique_name("bench_query")
            stores.append(("PostgreSQL", lambda: PostgresBlackboardStore(
                ctx.postgres_url, schema=schema),
                lambda: services.drop_schema(ctx.postgres_url, schema)))  # fmt: skip
        for name, make, cleanup in stores:
            store = make()
            try:
                results = runner.run(measure(store, ctx))
            finally:
                runner.run(store.close())
                runner.run(cleanup())
            for size, figures in zip(SIZES, results, strict=True):
                row = Row("query", f"by correlation id, {size // 1000}k artifacts, {name}", figures)
                if size == SIZES[-1]:
                    row.check(figures["p50_ms"], at_most=TARGET_MS, label="p50 ms")
                rows.append(row)
        if skipped is not None:
            rows.append(Row("query", "PostgreSQL", note=f"skipped: {skipped}"))
    return rows


async def _nothing() -> None:
    return None
