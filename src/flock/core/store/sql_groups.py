"""The SQL store's open groups (AND gates, joins, batches): each function does one step
inside a caller's transaction.

Adding parts and settling due groups take, on PostgreSQL, a transaction-scoped advisory
lock per group before they read it, in a fixed order: two writers adding the last parts of
one group at the same moment are serialised, so the second sees the first's part (READ
COMMITTED gives each statement a fresh snapshot) and the group becomes one run, once. On
SQLite the file's write lock serialises writers already.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from flock.core.artifacts import AgentError
from flock.core.groups import GroupPart, assemble, run_for, settle
from flock.core.runs import Run
from flock.core.store.sql_schema import (
    agent_errors,
    correlations,
    error_row,
    from_micros,
    group_parts,
    part_from_row,
    part_row,
    run_links,
    runs,
    to_micros,
)

g = group_parts.c
_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
_CANCELLED = select(correlations.c.correlation_id).where(
    correlations.c.correlation_id.in_(bindparam("p_ids", expanding=True)),
    correlations.c.cancelled == 1,
)
_GROUP = (
    select(group_parts)
    .where(g.agent == bindparam("p_agent"), g.grp == bindparam("p_grp"))
    .order_by(g.arrived_at, g.artifact_id)
)
_TAKE = delete(group_parts).where(
    g.agent == bindparam("p_agent"),
    g.grp == bindparam("p_grp"),
    g.artifact_id.in_(bindparam("p_ids", expanding=True)),
)
_DUE_GROUPS = (
    select(g.agent, g.grp)
    .where(g.deadline.is_not(None), g.deadline <= bindparam("p_now"))
    .group_by(g.agent, g.grp)
)
# A write that changes nothing: SQLite takes the file's write lock for it.
TAKE_WRITE_LOCK = text("UPDATE flock_schema SET version = version WHERE 0 = 1")
NEXT_DEADLINE = select(func.min(g.deadline)).where(g.deadline.is_not(None))
OPEN_GROUPS = select(g.agent, func.count(func.distinct(g.grp))).group_by(g.agent)
LINKED_CORRELATIONS = select(run_links.c.correlation_id).where(
    run_links.c.run_id == bindparam("p_run_id")
)
_LINKS_OF = select(run_links.c.correlation_id).where(
    run_links.c.run_id.in_(bindparam("p_ids", expanding=True))
)
DROP_CORRELATION_PARTS = delete(group_parts).where(
    g.correlation_id == bindparam("p_correlation_id")
)


def _insert(postgres: bool, table: Any) -> Any:
    insert = postgresql.insert if postgres else sqlite.insert
    return insert(table).on_conflict_do_nothing()


_INSERT_PARTS = {postgres: _insert(postgres, group_parts) for postgres in (False, True)}
_INSERT_LINKS = {postgres: _insert(postgres, run_links) for postgres in (False, True)}


async def lock_groups(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]], *, postgres: bool
) -> None:
    """Hold the groups until the transaction ends (PostgreSQL; SQLite needs no lock)."""
    if not postgres:
        return
    for agent, grp in sorted(set(keys)):
        await conn.execute(_LOCK, {"key": f"flock-group:{agent}\n{grp}"})


async def add_parts(
    conn: AsyncConnection, parts: Sequence[GroupPart], *, postgres: bool, now: datetime
) -> list[Run]:
    """Put the parts in their groups (none in a cancelled correlation) and turn every group
    they complete into runs, which the caller inserts. The groups are locked already."""
    cancelled = set(
        (
            await conn.execute(_CANCELLED, {"p_ids": sorted({p.correlation_id for p in parts})})
        ).scalars()
    )
    parts = [p for p in parts if p.correlation_id not in cancelled]
    if not parts:
        return []
    await conn.execute(_INSERT_PARTS[postgres], [part_row(p) for p in parts])
    made: list[Run] = []
    for agent, grp in dict.fromkeys((p.agent, p.group) for p in parts):
        group = await _read_group(conn, agent, grp)
        for complete in assemble(group):
            await _take(conn, agent, grp, complete)
            made.append(run_for(complete, now))
    return made


async def _read_group(conn: AsyncConnection, agent: str, grp: str) -> list[GroupPart]:
    rows = await conn.execute(_GROUP, {"p_agent": agent, "p_grp": grp})
    return [part_from_row(row) for row in rows.mappings()]


async def _take(conn: AsyncConnection, agent: str, grp: str, taken: Sequence[GroupPart]) -> None:
    params = {"p_agent": agent, "p_grp": grp, "p_ids": [p.artifact_id for p in taken]}
    await conn.execute(_TAKE, params)


async def link_runs(conn: AsyncConnection, made: Sequence[Run], *, postgres: bool) -> None:
    """Record the other correlations of runs made from groups across correlations."""
    rows = [{"run_id": r.id, "correlation_id": c} for r in made for c in r.linked]
    if rows:
        await conn.execute(_INSERT_LINKS[postgres], rows)


async def linked_correlations(conn: AsyncConnection, run_ids: Sequence[str]) -> list[str]:
    """The other correlations these runs were pending work of."""
    if not run_ids:
        return []
    rows = await conn.execute(_LINKS_OF, {"p_ids": list(run_ids)})
    return list(dict.fromkeys(rows.scalars()))


async def settle_due(
    conn: AsyncConnection, *, postgres: bool, now: datetime
) -> tuple[list[Run], list[AgentError], datetime | None]:
    """Settle every group whose deadline came (see `BlackboardStore.flush_groups`): the
    runs to insert, the errors recorded for dropped parts, and the next deadline."""
    due = (await conn.execute(_DUE_GROUPS, {"p_now": to_micros(now)})).tuples().all()
    await lock_groups(conn, due, postgres=postgres)
    made: list[Run] = []
    errors: list[AgentError] = []
    for agent, grp in sorted(due):
        settled = settle(await _read_group(conn, agent, grp), now)  # as it is, held now
        if settled.taken:
            await _take(conn, agent, grp, settled.taken)
            made.extend(settled.runs)
            errors.extend(settled.errors)
    if errors:
        await conn.execute(agent_errors.insert(), [error_row(e) for e in errors])
    value = (await conn.execute(NEXT_DEADLINE)).scalar()
    return made, errors, None if value is None else from_micros(value)


def pending_linked(correlation_id_column: Any) -> Any:
    """Pending runs of other correlations that count for this one (a scalar subquery)."""
    return (
        select(func.count())
        .select_from(run_links.join(runs, runs.c.id == run_links.c.run_id))
        .where(run_links.c.correlation_id == correlation_id_column, runs.c.due_at.is_not(None))
        .scalar_subquery()
    )


def waiting_parts(correlation_id_column: Any) -> Any:
    """Its artifacts waiting in open groups (a scalar subquery)."""
    return (
        select(func.count(func.distinct(g.artifact_id)))
        .where(g.correlation_id == correlation_id_column)
        .scalar_subquery()
    )


__all__ = [
    "DROP_CORRELATION_PARTS",
    "LINKED_CORRELATIONS",
    "NEXT_DEADLINE",
    "OPEN_GROUPS",
    "TAKE_WRITE_LOCK",
    "add_parts",
    "link_runs",
    "linked_correlations",
    "lock_groups",
    "pending_linked",
    "settle_due",
    "waiting_parts",
]
