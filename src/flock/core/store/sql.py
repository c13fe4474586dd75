"""The SQL blackboard store: one implementation on SQLAlchemy Core for SQLite and PostgreSQL.

Every write is one transaction, so a failure never leaves half of it stored. Driver errors
that mean "the database cannot be used right now" (refused or dropped connections, a locked
SQLite file, a server shutting down) surface as `StoreUnavailableError`, which callers may
retry; anything else is a bug and propagates as it is. A dropped pooled connection fails one
operation, then the pool reconnects (pass `pool_pre_ping=True` to check before each use).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
from flock.core.groups import GroupFlush, GroupPart
from flock.core.runs import Run, RunState, Usage, lease_until
from flock.core.store import notifications, sql_groups, sql_pg, sql_pg_write, sql_runs
from flock.core.store import sql_statements as sql
from flock.core.store.group_commit import GroupCommit
from flock.core.store.memory import InMemoryBlackboardStore
from flock.core.store.migrations import SchemaState, Upgrade, prepare_schema, read_schema
from flock.core.store.protocol import (
    BlackboardStore,
    ClaimedRun,
    Commit,
    CorrelationRecord,
    FilterConfig,
    InvalidRunStateError,
    Progress,
    RunFilter,
    StoreUnavailableError,
)
from flock.core.store.shared import LEASE_LOST, correlation_state, dead_run_error, utcnow
from flock.core.store.sql_backends import (
    DEFAULT_STORE_TIMEOUT,
    configure_sqlite,
    connection,
    is_conflict,
    is_unavailable,
    postgres_engine,
    retry_ddl,
    unavailable,
)
from flock.core.store.sql_schema import (
    BLACKBOARD_SCHEMA,
    artifact_from_row,
    artifact_row,
    audience_rows,
    consumption_from_row,
    correlation_row,
    error_from_row,
    error_row,
    from_micros,
    run_from_row,
    tag_rows,
    to_micros,
    usage_params,
)
from flock.core.store.sql_thread import SQLiteFiles
from flock.core.store.urls import parse_store_url

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
# For claims and lease renewals on PostgreSQL: their commit need not wait for the disk. One
# lost in a database crash only lets the run be claimed again (its engine may run twice, as
# after any lost lease); every commit of effects is synchronous and fenced, and flushing it
# flushes the claims before it. This saves a WAL flush (~3 ms on our disk) per claim.
_CONFLICT_ATTEMPTS = 4  # a deadlock's victim is run again this many times in all
_T = TypeVar("_T")
_IN_CHUNK = 1000  # ids per `IN (...)`, far below SQLite's and asyncpg's parameter limits
# A correlation row created by an artifact or an error, before any state write: any seq wins.
_NO_SEQ = -1


class SQLBlackboardStore:
    """A `BlackboardStore` on a SQLAlchemy async URL (sqlite+aiosqlite or postgresql+asyncpg).

    `schema` places the tables in that PostgreSQL schema (created if missing).
    `timeout` bounds every operation (`FLOCK_STORE_TIMEOUT`; None: unbounded); past it the
    operation raises `StoreUnavailableError`. `upgrade`: bring an older schema up to date on
    first use (else such a database is refused until `flock db upgrade`); an empty database
    always gets its tables. `engine_options` go to `create_async_engine` (pool size,
    `pool_pre_ping`, connect_args).
    """

    def __init__(
        self,
        url: str | URL,
        *,
        schema: str | None = None,
        timeout: float | None = DEFAULT_STORE_TIMEOUT,
        upgrade: bool = True,
        **engine_options: Any,
    ) -> None:
        if make_url(url).get_backend_name() == "postgresql":
            self._root_engine = postgres_engine(url, timeout=timeout, **engine_options)
        else:
            self._root_engine = create_async_engine(url, **engine_options)
        self._timeout = timeout
        self._upgrade = upgrade
        self._engine = self._root_engine
        if schema is not None:
            self._engine = self._root_engine.execution_options(schema_translate_map={None: schema})
        self._schema = schema
        self._postgres = self._root_engine.dialect.name == "postgresql"
        self._upserts = sql.upserts(self._root_engine.dialect.name, schema)
        self._write_call = sql_pg_write.call(schema)
        # PostgreSQL: statements run straight on asyncpg (sql_pg).
        self._pg = (
            sql_pg.PgStatements(self._root_engine.dialect, schema) if self._postgres else None
        )
        pool_size = getattr(self._root_engine.pool, "size", lambda: 5)()
        self._held = sql_pg.HeldConnections(self._root_engine, pool_size)
        # Reads skip BEGIN/COMMIT on PostgreSQL: under READ COMMITTED every statement sees its
        # own snapshot anyway, so a read transaction only costs two round trips. (pysqlite
        # never opens a transaction for a SELECT, so SQLite reads need no such switch.)
        self._reader = (
            self._engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._postgres
            else self._engine
        )
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._channel: str | None = None  # PostgreSQL's notification channel
        self._origin = os.urandom(6).hex()  # names this store's notifications
        self._write_lock = None if self._postgres else asyncio.Lock()
        self._files: SQLiteFiles | None = None  # SQLite: statements in place (sql_thread)
        self._group: GroupCommit | None = None  # SQLite files: writes share commits

    # -- writes -----------------------------------------------------------------------------

    async def publish(
        self,
        artifact: Artifact,
        runs: Sequence[Run] = (),
        *,
        parts: Sequence[GroupPart] = (),
        max_runs: int | None = None,
        created: set[str] | None = None,
    ) -> Artifact:
        if self._pg is not None and not parts:
            done = await self._write_in_one(
                correlation_id=artifact.correlation_id,
                artifacts=(artifact,),
                runs=runs,
                max_runs=max_runs,
                moments=[to_micros(artifact.created_at)],
            )
            if done is not None:
                if done.get("exists"):
                    existing = await self.get(artifact.id)
                    if existing is not None:
                        return existing
                    # (deleted meanwhile: the general path below stores it again)
                else:
                    if created is not None:
                        created.update(done["created"])
                    return artifact

        async def write(conn: AsyncConnection) -> tuple[Artifact, list[str]]:
            if parts:
                await self._lock_groups(conn, parts)
            if not await self._insert_artifacts(conn, (artifact,)):
                row = (await conn.execute(sql.GET_ARTIFACT, {"id": artifact.id})).mappings().one()
                return artifact_from_row(row), []
            _, ids, queued = await self._trigger(conn, runs, parts, max_runs)
            await self._notify(conn, queued, ())
            return artifact, ids

        stored, ids = await self._write(write, retry=bool(parts))
        if created is not None:
            created.update(ids)
        return stored

    async def _write(
        self, body: Callable[[AsyncConnection], Awaitable[_T]], *, retry: bool = True
    ) -> _T:
        """Run `body` in one write transaction: on SQLite files, one shared with the other
        writes ready at the same moment (`group_commit`). With `retry`, a transaction
        PostgreSQL aborted as a deadlock or serialization failure is run again (it changed
        nothing): group writes lock the correlations of several cascades, in no fixed order."""
        if self._group is not None:
            return await self._group.run(body)
        attempts = _CONFLICT_ATTEMPTS if retry and self._postgres else 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._transaction() as conn:
                    return await body(conn)
            except StoreUnavailableError as exc:
                if attempt == attempts or not is_conflict(exc.__cause__):
                    raise
                await asyncio.sleep(random.uniform(0.002, 0.02) * attempt)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    async def _write_in_one(
        self,
        *,
        correlation_id: str | None,
        artifacts: Sequence[Artifact],
        runs: Sequence[Run],
        max_runs: int | None,
        moments: Sequence[int],
        run: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """PostgreSQL: the write in one statement (`sql_pg_write`); None when the function
        left it to the general path (nothing was written), which then does it."""
        assert self._pg is not None
        body = sql_pg_write.params(
            now=to_micros(utcnow()),
            correlation_id=correlation_id,
            artifacts=artifacts,
            runs=runs,
            max_runs=max_runs or 2**31 - 1,
            first=min(moments),
            last=max(moments),
            channel=self._channel,
            origin=f"{notifications.ORIGIN}{self._origin}",
            run=run,
        )
        try:
            async with self._on_postgres(transaction=False) as conn:  # its own transaction
                value = (await conn.execute(self._write_call, body)).scalar()
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) else exc
            if is_conflict(cause) or sql_pg_write.left_to_general_path(cause):
                return None
            raise
        # (SQLAlchemy's asyncpg connections decode json themselves)
        result: dict[str, Any] = value if isinstance(value, dict) else json.loads(str(value))
        return result

    async def _lock_groups(self, conn: AsyncConnection, parts: Sequence[GroupPart]) -> None:
        keys = ((p.agent, p.group) for p in parts)
        await sql_groups.lock_groups(conn, keys, postgres=self._postgres)

    async def _trigger(
        self,
        conn: AsyncConnection,
        runs: Sequence[Run],
        parts: Sequence[GroupPart],
        max_runs: int | None,
    ) -> tuple[list[Run], list[str], bool]:
        """Create the runs, put the parts in their groups (and make runs of the groups they
        complete). Returns the runs of the groups completed, the ids of every run created,
        and whether workers are to be told (a queued run was made)."""
        made: list[Run] = []
        created: list[str] = []
        if parts:
            made = await sql_groups.add_parts(conn, parts, postgres=self._postgres, now=utcnow())
        if runs or made:
            created = await sql_runs.insert_runs(
                conn,
                [*runs, *made],
                postgres=self._postgres,
                schema=self._schema,
                max_runs=max_runs,
            )
            await sql_groups.link_runs(conn, made, postgres=self._postgres)
        # A run stored already claimed (by the committing worker) is nobody else's to take.
        queued = bool(made) or any(r.state == RunState.QUEUED for r in runs)
        return made, created, queued and bool(created)

    put = publish

    async def record_error(self, error: AgentError) -> None:
        moment = to_micros(error.at)
        row = correlation_row(error.correlation_id, "idle", _NO_SEQ, moment, moment)
        async with self._transaction() as conn:
            await conn.execute(sql.INSERT_ERROR, error_row(error))
            await conn.execute(self._upserts.ensure_correlation, row)

    async def _insert_artifacts(
        self,
        conn: AsyncConnection,
        items: Sequence[Artifact],
        touch: tuple[str, int] | None = None,
    ) -> int:
        """Insert the artifacts not stored yet, with their tags, audience and correlation
        rows; return how many were new. `touch` (correlation id, moment) is touched in the
        same statement as theirs, even if none was new."""
        if items:
            if len(items) == 1:
                result = await conn.execute(self._upserts.artifact, artifact_row(items[0]))
            else:
                rows = [artifact_row(a) for a in items]
                result = await conn.execute(self._upserts.artifacts, rows)
            inserted = set(result.scalars().all())
        else:
            inserted = set()
        new: dict[str, Artifact] = {}  # the first artifact of each new id, as the insert kept
        for artifact in items:
            if artifact.id in inserted:
                new.setdefault(artifact.id, artifact)
        if not new and touch is None:
            return 0
        tags = [row for a in new.values() for row in tag_rows(a)]
        if tags:
            await conn.execute(sql.INSERT_TAGS, tags)
        members = [row for a in new.values() for row in audience_rows(a)]
        if members:
            await conn.execute(sql.INSERT_AUDIENCE, members)
        spans: dict[str, tuple[int, int]] = {}
        moments = [(a.correlation_id, to_micros(a.created_at)) for a in new.values()]
        for correlation_id, moment in [*moments, *([touch] if touch else [])]:
            first, last = spans.get(correlation_id, (moment, moment))
            spans[correlation_id] = (min(first, moment), max(last, moment))
        rows = [correlation_row(cid, "idle", _NO_SEQ, *span) for cid, span in spans.items()]
        await conn.execute(self._upserts.touch_correlation, rows)
        return len(new)

    # -- runs -------------------------------------------------------------------------------

    async def claim_runs(
        self, worker: str, limit: int, lease_seconds: float, caps: Mapping[str, int]
    ) -> list[ClaimedRun]:
        now = utcnow()
        async with self._transaction() as conn:
            if self._postgres:
                await conn.execute(sql_pg.NO_FLUSH_WAIT)
            claimed = await sql_runs.claim(
                conn,
                postgres=self._postgres,
                worker=worker,
                limit=limit,
                now=now,
                lease_until=lease_until(now, lease_seconds),
                caps=caps,
            )
            if not claimed:
                return []
            rows = await sql_runs.inputs_of(conn, claimed)
        found = {artifact_id: artifact_from_row(row) for artifact_id, row in rows.items()}
        return [
            ClaimedRun(
                run,
                tuple(found[i] for i in run.input_ids if i in found),
                recovered=run.error == LEASE_LOST,
            )
            for run in claimed
        ]

    async def queued_by_agent(self) -> dict[str, int]:
        async with self._reading() as conn:
            rows = (await conn.execute(sql_runs.QUEUED_BY_AGENT)).tuples().all()
        return {agent: count for agent, count in rows}

    async def next_due(self) -> datetime | None:
        async with self._reading() as conn:
            value = (await conn.execute(sql_runs.NEXT_DUE)).scalar()
        return None if value is None else from_micros(value)

    async def renew_lease(self, run_id: str, fence: int, lease_seconds: float) -> bool:
        now = utcnow()
        params = {
            "p_run_id": run_id,
            "p_fence": fence,
            "p_now": to_micros(now),
            "p_lease_until": to_micros(lease_until(now, lease_seconds)),
        }
        async with self._transaction() as conn:
            if self._postgres:
                await conn.execute(sql_pg.NO_FLUSH_WAIT)
            result = await conn.execute(sql_runs.RENEW, params)
        return bool(result.rowcount)

    async def complete_run(
        self,
        run_id: str,
        fence: int,
        outputs: Sequence[Artifact],
        triggered: Sequence[Run],
        *,
        parts: Sequence[GroupPart] = (),
        usage: Usage | None = None,
        max_runs: int | None = None,
    ) -> Commit | None:
        now = to_micros(utcnow())
        params = sql_runs.succeed_params(run_id, fence, now, [a.id for a in outputs], usage)
        kinds = {a.correlation_id for a in outputs} | {r.correlation_id for r in triggered}
        if self._pg is not None and not parts and len(kinds) <= 1:
            done = await self._write_in_one(
                correlation_id=next(iter(kinds), None),
                artifacts=outputs,
                runs=triggered,
                max_runs=max_runs,
                moments=[now, *(to_micros(a.created_at) for a in outputs)],
                run={
                    "run_id": run_id,
                    "fence": fence,
                    "output_ids": params["p_output_ids"],
                    **{key[2:]: value for key, value in usage_params(usage).items()},
                },
            )
            if done is not None:
                return Commit(frozenset(done["created"])) if done["ok"] else None

        async def write(conn: AsyncConnection) -> Commit | None:
            row = (await conn.execute(sql_runs.SUCCEED, params)).first()
            if row is None:
                return None
            if parts:
                await self._lock_groups(conn, parts)
            # The outputs' correlation row and the consumption's moment: one touch.
            await self._insert_artifacts(conn, outputs, touch=(row.correlation_id, now))
            await self._consume(conn, row, now, touch=False)
            made, created, queued = await self._trigger(conn, triggered, parts, max_runs)
            # A correlation that got a run here is still busy: its waiters need not look.
            busy = {r.correlation_id for r in (*triggered, *made) if r.id in created and r.pending}
            changed = await self._correlations_of(conn, run_id, row)
            await self._notify(conn, queued, [c for c in changed if c not in busy])
            if self._postgres and row.correlation_id in busy:
                # Mid-cascade: this commit need not wait for the disk. The commit that ends
                # the cascade does, and its flush takes every earlier one with it; a database
                # crash before that rolls the cascade back to a consistent earlier state.
                await conn.execute(sql_pg.NO_FLUSH_WAIT)
            return Commit(frozenset(created))

        return await self._write(write, retry=bool(parts))

    async def _correlations_of(self, conn: AsyncConnection, run_id: str, row: Any) -> list[str]:
        """The correlations a finished run was pending work of: its own, and those of its
        inputs' other correlations (a join or batch across correlations)."""
        found = [row.correlation_id]
        if self._channel is not None and row.input_ids.count(",") > 0:
            params = {"p_run_id": run_id}
            found.extend((await conn.execute(sql_groups.LINKED_CORRELATIONS, params)).scalars())
        return found

    async def _consume(
        self, conn: AsyncConnection, row: Any, now: int, *, touch: bool = True
    ) -> None:
        records = sql_runs.consumption_rows(
            row.agent, row.correlation_id, json.loads(row.input_ids), now
        )
        if records:
            await conn.execute(self._upserts.consumptions, records)
        if touch:
            moment = correlation_row(row.correlation_id, "idle", _NO_SEQ, now, now)
            await conn.execute(self._upserts.touch_correlation, moment)

    async def fail_run(
        self,
        run_id: str,
        fence: int,
        error: str,
        *,
        retry_at: datetime | None,
        usage: Usage | None = None,
    ) -> bool:
        now = to_micros(utcnow())
        params = {"p_run_id": run_id, "p_fence": fence, "p_now": now, "p_error": error}
        params.update(usage_params(usage))
        async with self._transaction() as conn:
            if retry_at is not None:
                params["p_retry_at"] = to_micros(retry_at)
                result = await conn.execute(sql_runs.REQUEUE_AFTER_FAILURE, params)
                if result.rowcount:
                    await self._notify(conn, True, ())  # idle workers learn when it is due
                return bool(result.rowcount)
            row = (await conn.execute(sql_runs.DIE, params)).first()
            if row is None:
                return False
            await self._consume(conn, row, now)
            await self._notify(conn, False, await self._correlations_of(conn, run_id, row))
        return True

    async def release_run(self, run_id: str, fence: int) -> bool:
        params = {"p_run_id": run_id, "p_fence": fence, "p_now": to_micros(utcnow())}
        async with self._transaction() as conn:
            result = await conn.execute(sql_runs.RELEASE, params)
            if result.rowcount:
                await self._notify(conn, True, ())
        return bool(result.rowcount)

    async def cancel_correlation(self, correlation_id: str) -> bool:
        params = {"p_correlation_id": correlation_id, "p_now": to_micros(utcnow())}

        async def write(conn: AsyncConnection) -> bool:
            result = await conn.execute(sql_runs.CANCEL_CORRELATION, params)
            if not result.rowcount:
                return False
            cancelled = (await conn.execute(sql_runs.CANCEL_RUNS, params)).scalars().all()
            await conn.execute(sql_groups.DROP_CORRELATION_PARTS, params)
            # Waiters of the other correlations its cancelled joins and batches served.
            linked = await sql_groups.linked_correlations(conn, cancelled)
            await self._notify(conn, False, (correlation_id, *linked))
            return True

        return await self._write(write)

    async def retry_run(self, run_id: str) -> Run | None:
        params = {"p_run_id": run_id, "p_now": to_micros(utcnow())}
        async with self._transaction() as conn:
            row = (await conn.execute(sql_runs.RETRY, params)).mappings().first()
            if row is None:
                current = (await conn.execute(sql_runs.GET_RUN, params)).mappings().first()
                if current is None:
                    return None
                raise InvalidRunStateError(
                    f"run {run_id} is {current['state']}, not dead or cancelled"
                )
            run = run_from_row(row)
            await conn.execute(sql_runs.UNCANCEL, {"p_correlation_id": run.correlation_id})
            await self._notify(conn, True, (run.correlation_id,))
        return run

    async def flush_groups(self) -> GroupFlush:
        now = utcnow()
        async with self._reading() as conn:
            due = (await conn.execute(sql_groups.NEXT_DEADLINE)).scalar()
        if due is None or from_micros(due) > now:
            return GroupFlush(next_deadline=None if due is None else from_micros(due))

        async def write(conn: AsyncConnection) -> GroupFlush:
            if not self._postgres:
                # Take the file's write lock before reading, as every other write does.
                await conn.execute(sql_groups.TAKE_WRITE_LOCK)
            made, errors, next_deadline = await sql_groups.settle_due(
                conn, postgres=self._postgres, now=now
            )
            if made:
                await sql_runs.insert_runs(
                    conn, made, postgres=self._postgres, schema=self._schema, max_runs=None
                )
                await sql_groups.link_runs(conn, made, postgres=self._postgres)
            changed = {e.correlation_id for e in errors}
            changed.update(c for run in made for c in (run.correlation_id, *run.linked))
            await self._notify(conn, bool(made), changed)
            return GroupFlush(changed, len(made), next_deadline)

        return await self._write(write)

    async def open_groups(self) -> dict[str, int]:
        async with self._reading() as conn:
            rows = (await conn.execute(sql_groups.OPEN_GROUPS)).tuples().all()
        return {agent: count for agent, count in rows}

    async def get_run(self, run_id: str) -> Run | None:
        async with self._reading() as conn:
            row = (await conn.execute(sql_runs.GET_RUN, {"p_run_id": run_id})).mappings().first()
        return None if row is None else run_from_row(row)

    async def query_runs(
        self, filters: RunFilter | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Run], int]:
        page, count, params = sql_runs.query_runs_statements(filters or RunFilter(), limit, offset)
        async with self._reading(many_rows=True) as conn:
            rows = (await conn.execute(page, params)).mappings().all()
            total = await _total(conn, len(rows), limit, offset, count, params)
        return [run_from_row(row) for row in rows], total

    async def progress(self, correlation_id: str | None = None) -> Progress:
        async with self._reading() as conn:
            if correlation_id is None:
                pending_runs, timed = (await conn.execute(sql_runs.PENDING_ALL)).one()
                return Progress(pending_runs + timed, runs=pending_runs)
            row = (
                await conn.execute(sql_runs.PROGRESS, {"p_correlation_id": correlation_id})
            ).first()
        if row is None:
            return Progress(0, exists=False)
        return Progress(row.pending, bool(row.cancelled))

    # -- reads ------------------------------------------------------------------------------

    async def get(self, artifact_id: str) -> Artifact | None:
        async with self._reading() as conn:
            row = (await conn.execute(sql.GET_ARTIFACT, {"id": artifact_id})).mappings().first()
        return None if row is None else artifact_from_row(row)

    async def query_artifacts(
        self,
        filters: FilterConfig | None = None,
        limit: int = 50,
        offset: int = 0,
        embed_meta: bool = False,
    ) -> tuple[list[Artifact] | list[ArtifactEnvelope], int]:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        shape, params = sql.filter_params(filters)
        limited = limit >= 0
        page_params = {**params, "offset": offset, **({"limit": limit} if limited else {})}
        async with self._reading(many_rows=True) as conn:
            rows = (await conn.execute(sql.page(shape, limited), page_params)).mappings().all()
            total = await _total(conn, len(rows), limit, offset, sql.count(shape), params)
            items = [artifact_from_row(row) for row in rows]
            if not embed_meta:
                return items, total
            records = await self._consumptions_of(conn, [a.id for a in items])
        return [ArtifactEnvelope(a, tuple(records.get(a.id, ()))) for a in items], total

    async def summarize_artifacts(self, filters: FilterConfig | None = None) -> dict[str, Any]:
        shape, params = sql.filter_params(filters)
        async with self._reading(many_rows=True) as conn:
            rows = (await conn.execute(sql.summary(shape), params)).all()
        by_type: Counter[str] = Counter()
        by_producer: Counter[str] = Counter()
        by_visibility: Counter[str] = Counter()
        for type_name, producer, kind, count in rows:
            by_type[type_name] += count
            by_producer[producer] += count
            by_visibility[kind] += count
        return {
            "total": by_type.total(),
            "by_type": dict(by_type),
            "by_producer": dict(by_producer),
            "by_visibility": dict(by_visibility),
        }

    async def get_consumptions(self, artifact_id: str) -> list[ConsumptionRecord]:
        async with self._reading() as conn:
            records = await self._consumptions_of(conn, [artifact_id])
        return records.get(artifact_id, [])

    async def _consumptions_of(
        self, conn: AsyncConnection, artifact_ids: Sequence[str]
    ) -> dict[str, list[ConsumptionRecord]]:
        records: dict[str, list[ConsumptionRecord]] = {}
        for start in range(0, len(artifact_ids), _IN_CHUNK):
            chunk = {"ids": artifact_ids[start : start + _IN_CHUNK]}
            for row in (await conn.execute(sql.CONSUMPTIONS_OF, chunk)).mappings():
                records.setdefault(row["artifact_id"], []).append(consumption_from_row(row))
        return records

    async def get_correlation(self, correlation_id: str) -> CorrelationRecord | None:
        params = {"correlation_id": correlation_id}
        async with self._reading() as conn:
            row = (await conn.execute(sql.CORRELATION, params)).mappings().first()
            if row is None:
                return None
            errors = []
            dead: Sequence[Any] = []
            if row["has_errors"]:
                errors = [
                    error_from_row(e)
                    for e in (await conn.execute(sql.CORRELATION_ERRORS, params)).mappings()
                ]
                dead = (
                    (await conn.execute(sql_runs.DEAD_RUNS, {"p_correlation_id": correlation_id}))
                    .mappings()
                    .all()
                )
        errors.extend(dead_run_error(run_from_row(d)) for d in dead)
        errors.sort(key=lambda e: e.at)
        return CorrelationRecord(
            correlation_id,
            correlation_state(
                bool(row["cancelled"]), row["pending_runs"] + row["waiting_artifacts"]
            ),
            from_micros(row["started_at"]),
            from_micros(row["updated_at"]),
            row["artifact_count"],
            errors,
            row["pending_runs"],
            row["waiting_artifacts"],
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def ping(self) -> None:
        # Whatever stops a `SELECT 1` makes the store unusable: all of it counts as unavailable.
        try:
            if self._files is not None:
                await self._files.ping()
                return
            async with connection(self._engine, timeout=self._timeout) as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            raise unavailable(exc, self._timeout) from exc

    async def subscribe(self, callback: Callable[[str], None]) -> bool:
        """Deliver other processes' notifications to `callback`; False: this store has
        none (SQLite: processes sharing a file find each other's changes by polling)."""
        return False

    async def _notify(
        self, conn: AsyncConnection, runs: bool, correlation_ids: Iterable[str]
    ) -> None:
        """Tell other processes, when this transaction commits, that runs may be due and
        that these correlations changed (PostgreSQL only)."""
        if self._channel is None:
            return
        for payload in notifications.payloads(runs, correlation_ids):
            payload = f"{payload}|{notifications.ORIGIN}{self._origin}"
            await conn.execute(_NOTIFY, {"channel": self._channel, "payload": payload})

    async def close(self) -> None:
        if self._files is not None:
            await self._files.close()
        await self._held.release_all()
        await self._root_engine.dispose()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, committed at the end (or rolled back).

        SQLite has one writer at a time: this process's writers queue here, in order,
        instead of in SQLite's busy handler, whose sleeps grow to 100 ms under contention.
        Other processes sharing the file still wait in the busy handler.
        """
        if self._pg is not None:
            async with self._on_postgres(transaction=True) as conn:
                yield conn
            return
        if self._write_lock is None:
            async with (
                self._errors_mapped(),
                connection(self._engine, begin=True, timeout=self._timeout) as conn,
            ):
                yield conn
            return
        if self._files is not None:
            files = self._files
            async with self._write_lock, self._errors_mapped(), files.transaction() as inline:
                yield cast(AsyncConnection, inline)
            return
        async with (
            self._write_lock,
            self._errors_mapped(),
            connection(self._engine, begin=True, timeout=self._timeout) as conn,
        ):
            yield conn

    @asynccontextmanager
    async def _reading(self, *, many_rows: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only (`many_rows`: pages of rows, not run in place)."""
        if self._files is not None:
            async with self._errors_mapped(), self._files.reading(many_rows=many_rows) as conn:
                yield cast(AsyncConnection, conn)
            return
        if self._pg is not None:
            async with self._on_postgres(transaction=False) as conn:
                yield conn
            return
        async with (
            self._errors_mapped(),
            connection(self._reader, timeout=self._timeout) as conn,
        ):
            yield conn

    @asynccontextmanager
    async def _on_postgres(self, *, transaction: bool) -> AsyncIterator[AsyncConnection]:
        """PostgreSQL: a held connection, in a transaction or in autocommit (each statement
        its own transaction: reads, and `flock_write`, which commits what it did)."""
        assert self._pg is not None
        pg = sql_pg.connection(self._held, self._pg, transaction=transaction, timeout=self._timeout)
        async with self._errors_mapped(), pg as conn:
            yield conn

    @asynccontextmanager
    async def _errors_mapped(self) -> AsyncIterator[None]:
        if not self._ready:
            await self.prepare(once=True)
        try:
            yield
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc, self._timeout) from exc
            raise

    async def prepare(self, *, upgrade: bool | None = None, once: bool = False) -> Upgrade | None:
        """Create the tables, check their schema version, or upgrade an older one (when
        `upgrade`, default: the store's setting); what was done (None with `once` when it
        was done already: so it runs on first use). `SchemaVersionError` when the version
        cannot be used."""
        allowed = self._upgrade if upgrade is None else upgrade
        async with self._ready_lock:
            if once and self._ready:
                return None
            try:
                outcome = await retry_ddl(
                    lambda: prepare_schema(
                        self._engine,
                        BLACKBOARD_SCHEMA,
                        self._schema,
                        upgrade=allowed,
                        timeout=self._timeout,
                    )
                )
            except Exception as exc:
                if is_unavailable(exc):
                    raise unavailable(exc, self._timeout) from exc
                raise
            self._ready = True
            return outcome

    async def schema_state(self) -> SchemaState:
        """The database's schema version and this Flock's, changing nothing."""
        try:
            return await read_schema(
                self._engine, BLACKBOARD_SCHEMA, self._schema, timeout=self._timeout
            )
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc, self._timeout) from exc
            raise


async def _total(
    conn: AsyncConnection, found: int, limit: int, offset: int, count: Any, params: Any
) -> int:
    """How many rows match a paged query that returned `found` rows: counted only when
    the page may not hold the last match."""
    if (limit < 0 or found < limit) and (found or offset == 0):
        return offset + found
    return int((await conn.execute(count, params)).scalar_one())


class SQLiteBlackboardStore(SQLBlackboardStore):
    """The embedded, persistent store: one SQLite file in WAL mode (parent dirs are created).

    A local file does not stall like a network: its operations are bounded by
    `busy_timeout` (how long one waits for another writer's lock), not by a deadline.
    An older schema is upgraded on first use unless `upgrade=False`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        upgrade: bool = True,
        **engine_options: Any,
    ) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        engine_options.setdefault("timeout", None)
        super().__init__(
            URL.create("sqlite+aiosqlite", database=self.path), upgrade=upgrade, **engine_options
        )
        configure_sqlite(self._root_engine, busy_timeout)
        # Every statement goes to the file through these connections (see sql_thread); the
        # aiosqlite engine above only names the dialect the statements are compiled for.
        self._files = SQLiteFiles(self.path, busy_timeout)
        self._group = GroupCommit(self._transaction)


class PostgresBlackboardStore(SQLBlackboardStore):
    """The store many replicas share. `dsn`: `postgresql://` or `postgres://`.

    `schema` holds the tables (created if missing), e.g. one schema per test or per app.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        timeout: float | None = DEFAULT_STORE_TIMEOUT,
        upgrade: bool = True,
        **engine_options: Any,
    ) -> None:
        # Every publish and agent run holds a connection for its transaction. Past the pool's
        # size each extra one opened and closed a connection of its own (SQLAlchemy keeps 5
        # by default): with 16 concurrent sync calls that halved the throughput.
        engine_options.setdefault("pool_size", 32)
        target = parse_store_url(dsn, kinds=("postgresql",))
        schema = schema if schema is not None else target.schema
        super().__init__(
            target.asyncpg(), schema=schema, timeout=timeout, upgrade=upgrade, **engine_options
        )
        # One channel per schema: stores in other schemas of the database never wake us.
        self._channel = f"flock_{schema or 'public'}"[:63]
        self._listener = notifications.PostgresListener(
            target.libpq_dsn(), self._channel, connect_timeout=timeout or 10.0
        )

    async def subscribe(self, callback: Callable[[str], None]) -> bool:
        origin = self._origin

        def others(payload: str) -> None:
            # Our own writes woke this process's worker and waiters when they were made.
            if not notifications.from_origin(payload, origin):
                callback(payload)

        self._listener.start(others)
        return True

    async def close(self) -> None:
        await self._listener.close()
        await super().close()


def store_from_url(
    url: str, *, timeout: float | None = None, upgrade: bool | None = None
) -> BlackboardStore:
    """`memory://`, `sqlite:///relative.db` or `sqlite:////abs/path.db`, `postgresql://...`
    (`postgresql://...?schema=NAME` keeps the tables in that schema; driver options such as
    `?sslmode=require` pass on). `timeout`: see `SQLBlackboardStore` (default:
    `FLOCK_STORE_TIMEOUT`); `upgrade`: default True for SQLite, False for PostgreSQL."""
    target = parse_store_url(url, kinds=("memory", "sqlite", "postgresql"))
    if target.kind == "memory":
        return InMemoryBlackboardStore()
    if target.kind == "sqlite":
        assert target.path is not None
        return SQLiteBlackboardStore(target.path, upgrade=upgrade is not False)
    if timeout is None:
        from flock.settings import load_settings

        timeout = load_settings().store_timeout
    return PostgresBlackboardStore(
        target.driver_url, schema=target.schema, timeout=timeout, upgrade=bool(upgrade)
    )


__all__ = [
    "PostgresBlackboardStore",
    "SQLBlackboardStore",
    "SQLiteBlackboardStore",
    "store_from_url",
]
