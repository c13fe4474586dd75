"""Group commit on SQLite files: writes ready together share one transaction.

Real stores throughout: the figures come from the store's own counters, the outcomes from
reading the file again through a new store.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from flock import Flock, flock_type
from flock.core.runs import RunState
from flock.core.store import FilterConfig, SQLiteBlackboardStore
from flock.core.store.group_commit import GroupCommit

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"GroupIn_{_SUFFIX}")
class In(BaseModel):
    n: int


@flock_type(name=f"GroupOut_{_SUFFIX}")
class Out(BaseModel):
    n: int


def _group(store: SQLiteBlackboardStore) -> GroupCommit:
    group = store._group
    assert group is not None
    return group


async def test_writes_made_together_share_commits_and_all_land(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    store = SQLiteBlackboardStore(path)
    flock = Flock(store=store)

    async def double(item: In) -> Out:
        return Out(n=item.n * 2)

    flock.agent("doubler").consumes(In).publishes(Out).with_engines(double)
    try:
        await flock.publish(In(n=-1))  # the tables exist before the burst
        await flock.run_until_idle(timeout=20)
        before = _group(store).groups, _group(store).writes
        await asyncio.gather(*(flock.publish(In(n=n)) for n in range(50)))
        await flock.run_until_idle(timeout=20)
        groups = _group(store).groups - before[0]
        writes = _group(store).writes - before[1]
        assert writes == 100  # 50 publishes and 50 runs' commits
        assert groups < writes / 2  # most of them shared a transaction
    finally:
        await flock.close()

    reopened = SQLiteBlackboardStore(path)
    try:
        outs, total = await reopened.query_artifacts(
            FilterConfig(type_names={f"GroupOut_{_SUFFIX}"}), limit=100
        )
        ins, _ = await reopened.query_artifacts(
            FilterConfig(type_names={f"GroupIn_{_SUFFIX}"}), limit=100
        )
        assert len(ins) == 51
        assert sorted(a.payload["n"] for a in outs) == sorted(n * 2 for n in range(-1, 50))
        assert total == 51
    finally:
        await reopened.close()


def _insert(value: int) -> Any:
    """A write of one row into the test's table `t`; its result is the value."""

    async def body(conn: Any) -> int:
        await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        return value

    return body


async def _values(conn: Any) -> list[int]:
    rows = await conn.execute(text("SELECT v FROM t ORDER BY v"))
    return [row[0] for row in rows]


async def test_a_write_that_fails_spoils_no_other_write_of_its_group(tmp_path: Path) -> None:
    store = SQLiteBlackboardStore(tmp_path / "board.db")
    group = _group(store)
    try:
        await store.ping()
        await store._write(lambda conn: conn.execute(text("CREATE TABLE t (v INTEGER UNIQUE)")))

        async def broken(conn: object) -> int:
            raise ValueError("this write is wrong")

        before = group.groups
        results = await asyncio.gather(
            store._write(_insert(1)),
            store._write(broken),
            store._write(_insert(2)),
            store._write(_insert(1)),  # a duplicate: the database refuses it
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 2
        assert isinstance(results[1], ValueError)
        assert isinstance(results[3], Exception) and "UNIQUE" in str(results[3])
        # The group rolled back once, then each was written on its own.
        assert group.groups - before == 2

        assert await store._write(_values) == [1, 2]
    finally:
        await store.close()


async def test_a_writer_that_stops_waiting_fails_no_other_write(tmp_path: Path) -> None:
    store = SQLiteBlackboardStore(tmp_path / "board.db")
    try:
        await store.ping()
        await store._write(lambda conn: conn.execute(text("CREATE TABLE t (v INTEGER)")))

        writes = [asyncio.ensure_future(store._write(_insert(v))) for v in range(5)]
        writes[0].cancel()  # the group's first writer goes away before the group is written
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [1, 2, 3, 4]

        assert await store._write(_values) == [1, 2, 3, 4]  # its write was dropped
    finally:
        await store.close()


@flock_type(name=f"GroupNext_{_SUFFIX}")
class Next(BaseModel):
    n: int


async def test_a_publish_whose_caller_goes_away_still_starts_its_runs(tmp_path: Path) -> None:
    """The publish's runs are stored claimed by this worker: once written, they start even
    though the caller was cancelled (nothing waits 30 s for a lease to run out)."""
    store = SQLiteBlackboardStore(tmp_path / "board.db")
    flock = Flock(store=store)

    async def step(item: In) -> Next:
        return Next(n=item.n)

    flock.agent("stepper").consumes(In).publishes(Next).with_engines(step)
    try:
        await flock.publish(In(n=0))
        await flock.run_until_idle(timeout=20)
        calls = [asyncio.ensure_future(flock.publish(In(n=n))) for n in range(1, 9)]
        await asyncio.sleep(0)  # the group has gathered; its task has not written it yet
        for call in calls[::2]:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await flock.run_until_idle(timeout=20)
        runs, _ = await flock.list_runs(limit=100)
        assert all(run.state == RunState.SUCCEEDED and run.attempt == 1 for run in runs)
        ins, _ = await store.query_artifacts(FilterConfig(type_names={f"GroupIn_{_SUFFIX}"}))
        nexts, _ = await store.query_artifacts(FilterConfig(type_names={f"GroupNext_{_SUFFIX}"}))
        assert len(ins) == len(nexts) == len(runs)  # every stored input's run ran
    finally:
        await flock.close()
