"""The SQL store's run statements: each function does one step inside a caller's transaction.

Claims are one `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` statement; on
PostgreSQL the inner select takes its rows `FOR UPDATE SKIP LOCKED`, so concurrent claimers
never wait for each other and never take the same run. On SQLite the UPDATE holds the
file's write lock, which serialises claimers. Every write about a claimed run is fenced:
`WHERE id = :id AND fence = :fence AND state = 'running' AND due_at > :now`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Text,
    TextClause,
    Update,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from flock.core.runs import Run, RunState, Usage
from flock.core.store.protocol import RunFilter
from flock.core.store.shared import LEASE_LOST, run_limit_error
from flock.core.store.sql_groups import pending_linked, waiting_parts
from flock.core.store.sql_schema import (
    agent_errors,
    artifacts,
    correlations,
    dumps_ids,
    error_row,
    group_parts,
    run_from_row,
    run_links,
    run_row,
    runs,
    to_micros,
    usage_params,
)
from flock.core.store.sql_statements import visible_clause

r = runs.c
RUNNING, QUEUED = RunState.RUNNING.value, RunState.QUEUED.value

_CLAIM_VALUES: dict[str, Any] = {
    "state": RUNNING,
    "worker": bindparam("p_worker"),
    "fence": r.fence + 1,
    "attempt": r.attempt + 1,
    "started_at": bindparam("p_now"),
    "due_at": bindparam("p_lease_until"),
    "error": case((r.state == RUNNING, literal(LEASE_LOST)), else_=r.error),
}


def _claim_statement(postgres: bool, capped: int) -> Update:
    """Due runs, claimed fairly: round-robin across the principals that published them
    (each one's oldest first, a principal with runs running already waiting that many
    turns), so one caller's burst cannot starve another's run. The first `capped` agents
    named `p_agent_<i>` take at most `p_room_<i>` more: their cap less their runs running,
    counted in the same statement, the first in that same fair order."""
    live = (r.due_at.is_not(None), r.state == RUNNING, r.due_at > bindparam("p_now"))
    turn = func.row_number().over(partition_by=r.principal, order_by=(r.due_at, r.id))
    ranked = (
        select(r.id, r.agent, r.principal, r.due_at, turn.label("turn"))
        .where(r.due_at.is_not(None), r.due_at <= bindparam("p_now"))
        .subquery()
    )
    # A principal whose runs hold slots already waits that many turns.
    busy = (
        select(r.principal, func.count().label("running"))
        .where(*live)
        .group_by(r.principal)
        .subquery()
    )
    score = ranked.c.turn + func.coalesce(busy.c.running, 0)
    fair = (score, ranked.c.due_at, ranked.c.id)
    scored = select(ranked.c.id, ranked.c.agent, ranked.c.due_at, score.label("score")).outerjoin(
        busy, busy.c.principal.is_not_distinct_from(ranked.c.principal)
    )
    if capped:
        agents = [bindparam(f"p_agent_{i}", type_=Text) for i in range(capped)]
        # How many more each capped agent may take (its cap less its live runs); NULL: no cap.
        caps = [bindparam(f"p_room_{i}", type_=Integer) for i in range(capped)]
        room = case(*((ranked.c.agent == agents[i], caps[i]) for i in range(capped)), else_=None)
        running = (
            select(r.agent, func.count().label("running"))
            .where(*live, r.agent.in_(agents))
            .group_by(r.agent)
            .subquery()
        )
        nth = func.row_number().over(partition_by=ranked.c.agent, order_by=fair)
        scored = scored.add_columns(
            nth.label("nth"), (room - func.coalesce(running.c.running, 0)).label("room")
        ).outerjoin(running, running.c.agent == ranked.c.agent)
    scored_q = scored.subquery()
    candidates = select(r.id).join(scored_q, scored_q.c.id == r.id)
    if capped:
        candidates = candidates.where(
            or_(scored_q.c.room.is_(None), scored_q.c.nth <= scored_q.c.room)
        )
    candidates = candidates.order_by(scored_q.c.score, scored_q.c.due_at, r.id).limit(
        bindparam("p_limit")
    )
    # Due again on the row itself: under READ COMMITTED, PostgreSQL re-checks these on the
    # latest version of a row a concurrent claimer just committed, which is no longer due.
    # (The ranking above reads other references of the table, which it does not re-check.)
    due_now = (r.due_at.is_not(None), r.due_at <= bindparam("p_now"))
    candidates = candidates.where(*due_now)
    if postgres:
        candidates = candidates.with_for_update(skip_locked=True, of=runs)
    return (
        update(runs)
        .where(r.id.in_(candidates.scalar_subquery()), *due_now)
        .values(_CLAIM_VALUES)
        .returning(*runs.c)
    )


@cache
def _claims(postgres: bool, capped: int) -> Update:
    return _claim_statement(postgres, capped)


# One claimer at a time counts capped agents' running runs (PostgreSQL; SQLite's write lock
# serialises claimers already). Taken before the claim, whose snapshot then sees theirs.
_CLAIM_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('flock:capped-claims'))")
_INPUTS = select(artifacts).where(artifacts.c.id.in_(bindparam("ids", expanding=True)))


async def claim(
    conn: AsyncConnection,
    *,
    postgres: bool,
    worker: str,
    limit: int,
    now: datetime,
    lease_until: datetime,
    caps: Mapping[str, int],
) -> list[Run]:
    """Claim up to `limit` due runs (see the module docstring); returns them as claimed.
    One statement, capped agents or not (and on PostgreSQL, with caps, one lock before it)."""
    params: dict[str, Any] = {
        "p_worker": worker,
        "p_now": to_micros(now),
        "p_lease_until": to_micros(lease_until),
        "p_limit": limit,
    }
    for i, agent in enumerate(sorted(caps)):
        params[f"p_agent_{i}"] = agent
        params[f"p_room_{i}"] = caps[agent]
    if caps and postgres:
        await conn.execute(_CLAIM_LOCK)
    rows = await conn.execute(_claims(postgres, len(caps)), params)
    return _sorted([run_from_row(row) for row in rows.mappings()])


def _sorted(claimed: list[Run]) -> list[Run]:
    claimed.sort(key=lambda run: (run.started_at, run.created_at, run.id))
    return claimed


async def inputs_of(conn: AsyncConnection, claimed: Sequence[Run]) -> dict[str, Any]:
    ids = sorted({i for run in claimed for i in run.input_ids})
    if not ids:
        return {}
    rows = await conn.execute(_INPUTS, {"ids": ids})
    return {row["id"]: row for row in rows.mappings()}


NEXT_DUE = select(func.min(r.due_at)).where(r.due_at.is_not(None))
QUEUED_BY_AGENT = (
    select(r.agent, func.count()).where(r.due_at.is_not(None), r.state == QUEUED).group_by(r.agent)
)


def _fenced(*, live: bool = True) -> list[ColumnElement[bool]]:
    where = [r.id == bindparam("p_run_id"), r.fence == bindparam("p_fence"), r.state == RUNNING]
    if live:
        where.append(r.due_at > bindparam("p_now"))
    return where


RENEW = update(runs).where(*_fenced()).values(due_at=bindparam("p_lease_until"))
_ADD_USAGE = {
    "usage_requests": r.usage_requests + bindparam("p_usage_requests"),
    "usage_input_tokens": r.usage_input_tokens + bindparam("p_usage_input_tokens"),
    "usage_output_tokens": r.usage_output_tokens + bindparam("p_usage_output_tokens"),
}
SUCCEED = (
    update(runs)
    .where(*_fenced())
    .values(
        state=RunState.SUCCEEDED.value,
        due_at=None,
        finished_at=bindparam("p_now"),
        output_ids=bindparam("p_output_ids"),
        error=None,
        **_ADD_USAGE,
    )
    .returning(r.agent, r.correlation_id, r.input_ids)
)
REQUEUE_AFTER_FAILURE = (
    update(runs)
    .where(*_fenced())
    .values(state=QUEUED, due_at=bindparam("p_retry_at"), error=bindparam("p_error"), **_ADD_USAGE)
)
DIE = (
    update(runs)
    .where(*_fenced())
    .values(
        state=RunState.DEAD.value,
        due_at=None,
        finished_at=bindparam("p_now"),
        error=bindparam("p_error"),
        **_ADD_USAGE,
    )
    .returning(r.agent, r.correlation_id, r.input_ids)
)
RELEASE = (
    update(runs)
    .where(*_fenced(live=False))
    .values(state=QUEUED, due_at=bindparam("p_now"), attempt=r.attempt - 1)
)
CANCEL_CORRELATION = (
    update(correlations)
    .where(correlations.c.correlation_id == bindparam("p_correlation_id"))
    .values(cancelled=1)
)
CANCEL_RUNS = (
    update(runs)
    .where(r.correlation_id == bindparam("p_correlation_id"), r.due_at.is_not(None))
    .values(state=RunState.CANCELLED.value, due_at=None, finished_at=bindparam("p_now"))
    .returning(r.id)
)
RETRY = (
    update(runs)
    .where(
        r.id == bindparam("p_run_id"),
        r.state.in_((RunState.DEAD.value, RunState.CANCELLED.value)),
    )
    .values(state=QUEUED, attempt=0, error=None, finished_at=None, due_at=bindparam("p_now"))
    .returning(*runs.c)
)
UNCANCEL = (
    update(correlations)
    .where(correlations.c.correlation_id == bindparam("p_correlation_id"))
    .values(cancelled=0)
)
GET_RUN = select(runs).where(r.id == bindparam("p_run_id"))
_CORRELATION_FOR_RUNS = select(
    correlations.c.cancelled, correlations.c.run_count, correlations.c.limit_reported
).where(correlations.c.correlation_id == bindparam("p_correlation_id"))
_COUNT_RUNS = (
    update(correlations)
    .where(correlations.c.correlation_id == bindparam("p_correlation_id"))
    .values(
        run_count=correlations.c.run_count + bindparam("p_added"),
        limit_reported=bindparam("p_limit_reported"),
    )
)
# The whole store's pending work: its pending runs, and the waiting artifacts that will
# be settled by a deadline (a join's window, a batch's timeout); plain AND gates may wait
# for ever, so they do not keep "everything" from being idle.
PENDING_ALL = select(
    select(func.count()).select_from(runs).where(r.due_at.is_not(None)).scalar_subquery(),
    select(func.count())
    .select_from(group_parts)
    .where(group_parts.c.deadline.is_not(None))
    .scalar_subquery(),
)
PROGRESS = select(
    correlations.c.cancelled,
    (
        select(func.count())
        .select_from(runs)
        .where(r.correlation_id == correlations.c.correlation_id, r.due_at.is_not(None))
        .scalar_subquery()
        + pending_linked(correlations.c.correlation_id)
        + waiting_parts(correlations.c.correlation_id)
    ).label("pending"),
).where(correlations.c.correlation_id == bindparam("p_correlation_id"))
# Dead runs of the correlation, and those of joins and batches that took its artifacts
# (a UNION, not an OR, so that each half uses its index).
_DEAD = RunState.DEAD.value
DEAD_RUNS = union_all(
    select(runs).where(r.correlation_id == bindparam("p_correlation_id"), r.state == _DEAD),
    select(runs)
    .join(run_links, run_links.c.run_id == r.id)
    .where(run_links.c.correlation_id == bindparam("p_correlation_id"), r.state == _DEAD),
)


def _insert_runs_statement(postgres: bool) -> Any:
    insert = postgresql.insert if postgres else sqlite.insert
    return insert(runs).on_conflict_do_nothing(index_elements=[r.id]).returning(r.id)


_INSERT_RUNS = {postgres: _insert_runs_statement(postgres) for postgres in (False, True)}


@cache
def _insert_one_run(postgres: bool, schema: str | None) -> TextClause:
    """The same for one row, compiled once to text: SQLAlchemy cannot cache the compiled
    form of a dialect's ON CONFLICT construct, and compiling it cost about 1 ms a run."""
    dialect = (postgresql if postgres else sqlite).dialect(paramstyle="named")
    if schema is None:
        return text(str(_INSERT_RUNS[postgres].compile(dialect=dialect)))
    compiled = _INSERT_RUNS[postgres].compile(
        dialect=dialect, schema_translate_map={None: schema}, render_schema_translate=True
    )
    return text(str(compiled))


_TAKE_ROOM = (
    update(correlations)
    .where(
        correlations.c.correlation_id == bindparam("p_correlation_id"),
        correlations.c.cancelled == 0,
        correlations.c.run_count + bindparam("p_added") <= bindparam("p_max_runs"),
    )
    .values(run_count=correlations.c.run_count + bindparam("p_added"))
)
_GIVE_BACK = (
    update(correlations)
    .where(correlations.c.correlation_id == bindparam("p_correlation_id"))
    .values(run_count=correlations.c.run_count - bindparam("p_unused"))
)


async def _insert_group(
    conn: AsyncConnection, group: Sequence[Run], *, postgres: bool, schema: str | None
) -> list[str]:
    """Insert the runs not stored yet; the ids of those that were new."""
    if len(group) == 1:
        one = _insert_one_run(postgres, schema)
        return list((await conn.execute(one, run_row(group[0]))).scalars().all())
    result = await conn.execute(_INSERT_RUNS[postgres], [run_row(run) for run in group])
    return list(result.scalars().all())


async def insert_runs(
    conn: AsyncConnection,
    new_runs: Sequence[Run],
    *,
    postgres: bool,
    schema: str | None,
    max_runs: int | None,
) -> list[str]:
    """Create runs not stored yet, within each correlation's run bound; none in a
    cancelled correlation. The correlation rows exist (their artifacts touched them).
    Returns the ids of the runs created.

    Usually all of a correlation's runs fit: one UPDATE takes their room (it holds the row
    until commit, as FOR UPDATE would), then the INSERT; the count is given back for runs
    that were stored already. Otherwise (cancelled, or at the bound) the row is read."""
    created: list[str] = []
    by_correlation: dict[str, list[Run]] = {}
    for run in new_runs:
        by_correlation.setdefault(run.correlation_id, []).append(run)
    for correlation_id, group in sorted(by_correlation.items()):  # one lock order
        params = {"p_correlation_id": correlation_id}
        fast = {**params, "p_added": len(group), "p_max_runs": max_runs or 2**31 - 1}
        if (await conn.execute(_TAKE_ROOM, fast)).rowcount:
            ids = await _insert_group(conn, group, postgres=postgres, schema=schema)
            created.extend(ids)
            if len(ids) < len(group):
                await conn.execute(_GIVE_BACK, {**params, "p_unused": len(group) - len(ids)})
            continue
        statement = _CORRELATION_FOR_RUNS.with_for_update() if postgres else _CORRELATION_FOR_RUNS
        row = (await conn.execute(statement, params)).first()
        if row is None or row.cancelled:
            continue
        room = len(group) if max_runs is None else max(max_runs - row.run_count, 0)
        taken = group[:room]
        ids = await _insert_group(conn, taken, postgres=postgres, schema=schema) if taken else []
        created.extend(ids)
        added = len(ids)
        over = len(group) > room and not row.limit_reported
        if over:
            assert max_runs is not None
            await conn.execute(
                agent_errors.insert(), error_row(run_limit_error(group[room], max_runs))
            )
        if added or over:
            await conn.execute(
                _COUNT_RUNS,
                {**params, "p_added": added, "p_limit_reported": 1 if over else row.limit_reported},
            )
    return created


def consumption_rows(
    agent: str, correlation_id: str, input_ids: Sequence[str], at: int
) -> list[dict[str, Any]]:
    return [
        {"artifact_id": i, "consumer": agent, "correlation_id": correlation_id, "consumed_at": at}
        for i in dict.fromkeys(input_ids)
    ]


def succeed_params(
    run_id: str, fence: int, now: int, output_ids: Sequence[str], usage: Usage | None
) -> dict[str, Any]:
    return {
        "p_run_id": run_id,
        "p_fence": fence,
        "p_now": now,
        "p_output_ids": dumps_ids(output_ids),
        **usage_params(usage),
    }


def query_runs_statements(
    filters: RunFilter, limit: int, offset: int
) -> tuple[Any, Any, dict[str, Any]]:
    """The page and count statements of `query_runs`, and their parameters."""
    where: list[ColumnElement[bool]] = []
    params: dict[str, Any] = {}
    if filters.correlation_id is not None:
        where.append(r.correlation_id == bindparam("p_correlation_id"))
        params["p_correlation_id"] = filters.correlation_id
    if filters.agent is not None:
        where.append(r.agent == bindparam("p_agent"))
        params["p_agent"] = filters.agent
    if filters.state is not None:
        where.append(r.state == bindparam("p_state"))
        params["p_state"] = filters.state.value
    if filters.visible_to is not None:
        viewer = filters.visible_to
        params.update(
            viewer_name=viewer.name,
            viewer_tenant=viewer.tenant,
            viewer_labels=sorted(viewer.labels),
        )
        a = artifacts.c
        where.append(select(a.id).where(a.id == r.first_input_id, visible_clause()).exists())
    page = select(runs).where(*where).order_by(r.created_at, r.id).offset(bindparam("p_offset"))
    params["p_offset"] = offset
    if limit >= 0:
        page = page.limit(bindparam("p_limit"))
        params["p_limit"] = limit
    count = select(func.count()).select_from(runs).where(*where)
    return page, count, params


__all__ = [
    "CANCEL_CORRELATION",
    "CANCEL_RUNS",
    "DEAD_RUNS",
    "DIE",
    "GET_RUN",
    "NEXT_DUE",
    "PENDING_ALL",
    "PROGRESS",
    "RELEASE",
    "RENEW",
    "REQUEUE_AFTER_FAILURE",
    "RETRY",
    "SUCCEED",
    "UNCANCEL",
    "claim",
    "consumption_rows",
    "inputs_of",
    "insert_runs",
    "query_runs_statements",
    "succeed_params",
]
