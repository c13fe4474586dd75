"""The store contract of open groups, run once per backend (memory, SQLite, PostgreSQL):
parts stored with their artifact, a completed group made into one run in the same write,
racing last parts, deadlines settled by `flush_groups`, cancel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from flock.core.artifacts import Artifact
from flock.core.groups import GroupPart, group_name
from flock.core.runs import RunState
from flock.core.store import BlackboardStore
from flock.core.store.protocol import RunFilter

from .conftest import StoreFactory

NEED = ("A", "B")


def now() -> datetime:
    return datetime.now(UTC)


def part_of(
    artifact: Artifact,
    *,
    key: str,
    kind: str = "and",
    size: int = 0,
    deadline: datetime | None = None,
) -> GroupPart:
    return GroupPart(
        agent="joiner",
        group=group_name(0, "j", key, None),
        kind=kind,  # type: ignore[arg-type]
        artifact_id=artifact.id,
        type_name=artifact.type,
        correlation_id=artifact.correlation_id,
        arrived_at=now(),
        need=NEED if kind == "and" else (),
        size=size,
        deadline=deadline,
    )


async def publish(
    store: BlackboardStore, type_name: str, cid: str, key: str, **kw: object
) -> Artifact:
    artifact = Artifact(type=type_name, payload={}, correlation_id=cid)
    await store.publish(artifact, parts=[part_of(artifact, key=key, **kw)])  # type: ignore[arg-type]
    return artifact


async def test_a_group_becomes_one_run_when_its_last_part_is_stored(
    store: BlackboardStore,
) -> None:
    b = await publish(store, "B", "c-1", "k")
    assert await store.open_groups() == {"joiner": 1}
    status = await store.get_correlation("c-1")
    assert status is not None and status.state == "running" and status.waiting_artifacts == 1
    assert (await store.progress("c-1")).pending == 1
    assert status.progress.pending == 1 and status.progress.pending_runs == 0
    a = await publish(store, "A", "c-2", "k")  # another correlation
    assert await store.open_groups() == {}
    runs, total = await store.query_runs(RunFilter(agent="joiner"))
    assert total == 1
    (run,) = runs
    assert run.input_ids == (a.id, b.id)  # the order of `need`, not of arrival
    assert run.correlation_id == "c-2" and run.state == RunState.QUEUED
    # The run is pending work of both correlations.
    for cid in ("c-1", "c-2"):
        progress = await store.progress(cid)
        assert progress.pending == 1, cid
    status = await store.get_correlation("c-1")
    assert status is not None and (status.pending_runs, status.waiting_artifacts) == (1, 0)


async def test_racing_last_parts_make_each_group_once(make_store: StoreFactory) -> None:
    stores = [make_store(), make_store()]
    try:
        await asyncio.gather(
            *(
                publish(stores[side], "AB"[side], f"c-{n}-{side}", f"k-{n}")
                for n in range(30)
                for side in (0, 1)
            )
        )
        runs, total = await stores[0].query_runs(RunFilter(agent="joiner"), limit=-1)
        assert total == 30
        assert len({r.input_ids for r in runs}) == 30
        assert await stores[1].open_groups() == {}
    finally:
        for store in stores:
            await store.close()


async def test_flush_drops_expired_join_parts_as_errors(store: BlackboardStore) -> None:
    late = await publish(store, "A", "c-late", "late", deadline=now() - timedelta(seconds=1))
    await publish(store, "A", "c-fresh", "fresh", deadline=now() + timedelta(hours=1))
    flush = await store.flush_groups()
    assert flush.correlation_ids == {"c-late"} and flush.runs_created == 0
    assert flush.next_deadline is not None and flush.next_deadline > now()
    status = await store.get_correlation("c-late")
    assert status is not None and status.state == "idle" and status.waiting_artifacts == 0
    (error,) = status.errors
    assert error.agent == "joiner" and error.artifact_id == late.id
    assert "dropped" in error.message
    assert await store.open_groups() == {"joiner": 1}
    again = await store.flush_groups()
    assert again.correlation_ids == set()  # settled once


async def test_flush_runs_a_due_batch_with_what_it_gathered(store: BlackboardStore) -> None:
    due = now() - timedelta(milliseconds=1)
    first = await publish(store, "A", "c-1", "batch", kind="batch", size=5, deadline=due)
    second = await publish(store, "A", "c-2", "batch", kind="batch", size=5, deadline=due)
    flush = await store.flush_groups()
    assert flush.runs_created == 1 and flush.correlation_ids == {"c-1", "c-2"}
    assert flush.next_deadline is None
    (run,), _ = await store.query_runs(RunFilter(agent="joiner"))
    assert run.input_ids == (first.id, second.id)


async def test_cancel_drops_the_correlations_parts(store: BlackboardStore) -> None:
    await publish(store, "B", "c-x", "k")
    assert await store.cancel_correlation("c-x")
    assert await store.open_groups() == {}
    await publish(store, "A", "c-x", "k")  # nothing waits in a cancelled correlation
    assert await store.open_groups() == {}
    assert (await store.query_runs(RunFilter(agent="joiner")))[1] == 0
