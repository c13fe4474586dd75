"""The SQL blackboard store: one implementation on SQLAlchemy Core for SQLite and PostgreSQL.

Every operation is one transaction. Driver errors that mean "the database cannot be used
right now" (refused or dropped connections, a locked SQLite file, a server shutting down)
surface as `StoreUnavailableError`; anything else is a bug and propagates as it is.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, event, exists, func, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import Insert as SQLiteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.schema import CreateSchema, Table

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
from flock.core.store.memory import InMemoryBlackboardStore
from flock.core.store.protocol import (
    BlackboardStore,
    CorrelationRecord,
    CorrelationState,
    FilterConfig,
    StoreUnavailableError,
)
from flock.core.store.sql_schema import (
    agent_errors,
    artifact_audience,
    artifact_from_row,
    artifact_row,
    artifact_tags,
    artifacts,
    audience_rows,
    consumption_from_row,
    consumption_row,
    consumptions,
    correlations,
    error_from_row,
    error_row,
    from_micros,
    metadata,
    tag_rows,
    to_micros,
)
from flock.core.visibility import Identity

_CREATE_ATTEMPTS = 5
_IN_CHUNK = 1000  # ids per `IN (...)`, far below SQLite's and asyncpg's parameter limits
# A correlation row created by an artifact or an error, before any state write: any seq wins.
_NO_SEQ = -1


class SQLBlackboardStore:
    """A `BlackboardStore` on a SQLAlchemy async URL (sqlite+aiosqlite or postgresql+asyncpg).

    `schema` places the tables in that PostgreSQL schema (created if missing).
    `engine_options` go to `create_async_engine` (pool size, connect_args, ...).
    """

    def __init__(self, url: str | URL, *, schema: str | None = None, **engine_options: Any) -> None:
        self._root_engine = create_async_engine(url, **engine_options)
        self._engine = self._root_engine
        if schema is not None:
            self._engine = self._root_engine.execution_options(schema_translate_map={None: schema})
        self._schema = schema
        self._postgres = self._root_engine.dialect.name == "postgresql"
        self._ready = False
        self._ready_lock = asyncio.Lock()

    # -- writes -----------------------------------------------------------------------------

    async def publish(self, artifact: Artifact) -> None:
        async with self._transaction() as conn:
            await self._insert_artifacts(conn, (artifact,))

    put = publish

    async def commit_run(
        self, outputs: Sequence[Artifact], consumptions: Sequence[ConsumptionRecord]
    ) -> None:
        if not outputs and not consumptions:
            return
        async with self._transaction() as conn:
            await self._insert_artifacts(conn, outputs)
            await self._insert_consumptions(conn, consumptions)

    async def record_consumptions(self, records: Sequence[ConsumptionRecord]) -> None:
        if not records:
            return
        async with self._transaction() as conn:
            await self._insert_consumptions(conn, records)

    async def set_correlation_state(
        self, correlation_id: str, state: CorrelationState, seq: int, at: datetime
    ) -> None:
        insert = self._insert(correlations).values(
            _correlation_row(correlation_id, state, seq, to_micros(at), to_micros(at))
        )
        stored = correlations.c
        later = case(
            (insert.excluded.updated_at > stored.updated_at, insert.excluded.updated_at),
            else_=stored.updated_at,
        )
        statement = insert.on_conflict_do_update(
            index_elements=[stored.correlation_id],
            set_={"state": insert.excluded.state, "seq": insert.excluded.seq, "updated_at": later},
            where=stored.seq < insert.excluded.seq,
        )
        async with self._transaction() as conn:
            await conn.execute(statement)

    async def record_error(self, error: AgentError) -> None:
        async with self._transaction() as conn:
            await conn.execute(agent_errors.insert().values(error_row(error)))
            moment = to_micros(error.at)
            row = _correlation_row(error.correlation_id, "idle", _NO_SEQ, moment, moment)
            await conn.execute(
                self._insert(correlations)
                .values(row)
                .on_conflict_do_nothing(index_elements=[correlations.c.correlation_id])
            )

    async def _insert_artifacts(self, conn: AsyncConnection, items: Sequence[Artifact]) -> None:
        """Insert the artifacts not stored yet, with their tags, audience and correlation rows."""
        if not items:
            return
        statement = (
            self._insert(artifacts)
            .on_conflict_do_nothing(index_elements=[artifacts.c.id])
            .returning(artifacts.c.id)
        )
        result = await conn.execute(statement, [artifact_row(a) for a in items])
        inserted = set(result.scalars().all())
        fresh = [a for a in items if a.id in inserted]
        if not fresh:
            return
        tags = [row for a in fresh for row in tag_rows(a)]
        if tags:
            await conn.execute(artifact_tags.insert(), tags)
        members = [row for a in fresh for row in audience_rows(a)]
        if members:
            await conn.execute(artifact_audience.insert(), members)
        spans: dict[str, tuple[int, int]] = {}
        for artifact in fresh:
            moment = to_micros(artifact.created_at)
            first, last = spans.get(artifact.correlation_id, (moment, moment))
            spans[artifact.correlation_id] = (min(first, moment), max(last, moment))
        insert = self._insert(correlations)
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=[correlations.c.correlation_id],
                set_={"updated_at": insert.excluded.updated_at},
                where=correlations.c.updated_at < insert.excluded.updated_at,
            ),
            [
                _correlation_row(cid, "idle", _NO_SEQ, first, last)
                for cid, (first, last) in spans.items()
            ],
        )

    async def _insert_consumptions(
        self, conn: AsyncConnection, records: Sequence[ConsumptionRecord]
    ) -> None:
        if not records:
            return
        statement = self._insert(consumptions).on_conflict_do_nothing(
            index_elements=[consumptions.c.artifact_id, consumptions.c.consumer]
        )
        await conn.execute(statement, [consumption_row(r) for r in records])

    # -- reads ------------------------------------------------------------------------------

    async def get(self, artifact_id: str) -> Artifact | None:
        async with self._transaction() as conn:
            result = await conn.execute(select(artifacts).where(artifacts.c.id == artifact_id))
            row = result.mappings().first()
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
        where = _conditions(filters)
        page = (
            select(artifacts)
            .where(*where)
            .order_by(artifacts.c.created_at, artifacts.c.id)
            .limit(limit if limit >= 0 else None)
            .offset(offset or None)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(page)).mappings().all()
            if (limit < 0 or len(rows) < limit) and (rows or offset == 0):
                total = offset + len(rows)  # the page holds the last match: no need to count
            else:
                count = select(func.count()).select_from(artifacts).where(*where)
                total = (await conn.execute(count)).scalar_one()
            items = [artifact_from_row(row) for row in rows]
            if not embed_meta:
                return items, total
            records = await self._consumptions_of(conn, [a.id for a in items])
        return [ArtifactEnvelope(a, tuple(records.get(a.id, ()))) for a in items], total

    async def summarize_artifacts(self, filters: FilterConfig | None = None) -> dict[str, Any]:
        c = artifacts.c
        groups = (
            select(c.type, c.produced_by, c.visibility_kind, func.count())
            .where(*_conditions(filters))
            .group_by(c.type, c.produced_by, c.visibility_kind)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(groups)).all()
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
        async with self._transaction() as conn:
            records = await self._consumptions_of(conn, [artifact_id])
        return records.get(artifact_id, [])

    async def _consumptions_of(
        self, conn: AsyncConnection, artifact_ids: Sequence[str]
    ) -> dict[str, list[ConsumptionRecord]]:
        records: dict[str, list[ConsumptionRecord]] = {}
        for start in range(0, len(artifact_ids), _IN_CHUNK):
            chunk = artifact_ids[start : start + _IN_CHUNK]
            statement = (
                select(consumptions)
                .where(consumptions.c.artifact_id.in_(chunk))
                .order_by(consumptions.c.consumed_at, consumptions.c.consumer)
            )
            for row in (await conn.execute(statement)).mappings():
                records.setdefault(row["artifact_id"], []).append(consumption_from_row(row))
        return records

    async def get_correlation(self, correlation_id: str) -> CorrelationRecord | None:
        artifact_count = (
            select(func.count())
            .select_from(artifacts)
            .where(artifacts.c.correlation_id == correlation_id)
            .scalar_subquery()
        )
        record = select(correlations, artifact_count.label("artifact_count")).where(
            correlations.c.correlation_id == correlation_id
        )
        errors = (
            select(agent_errors)
            .where(agent_errors.c.correlation_id == correlation_id)
            .order_by(agent_errors.c.id)
        )
        async with self._transaction() as conn:
            row = (await conn.execute(record)).mappings().first()
            if row is None:
                return None
            error_rows = (await conn.execute(errors)).mappings().all()
        return CorrelationRecord(
            correlation_id,
            row["state"],
            from_micros(row["started_at"]),
            from_micros(row["updated_at"]),
            row["artifact_count"],
            [error_from_row(e) for e in error_rows],
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        await self._root_engine.dispose()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            if not self._ready:
                await self._create_tables()
            async with self._engine.begin() as conn:
                yield conn
        except Exception as exc:
            if _is_unavailable(exc):
                raise _unavailable(exc) from exc
            raise

    async def _create_tables(self) -> None:
        async with self._ready_lock:
            for attempt in range(_CREATE_ATTEMPTS):
                if self._ready:
                    return
                try:
                    async with self._engine.begin() as conn:
                        await conn.run_sync(self._create_tables_sync)
                    self._ready = True
                except sa_exc.DBAPIError as exc:
                    # Another process created the same tables at the same moment: look again.
                    if _is_unavailable(exc) or attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))

    def _create_tables_sync(self, conn: Connection) -> None:
        if self._schema is not None and not conn.dialect.has_schema(conn, self._schema):
            conn.execute(CreateSchema(self._schema, if_not_exists=True))
        metadata.create_all(conn)

    def _insert(self, table: Table) -> PostgresInsert | SQLiteInsert:
        return postgres_insert(table) if self._postgres else sqlite_insert(table)


class SQLiteBlackboardStore(SQLBlackboardStore):
    """The embedded, persistent store: one SQLite file in WAL mode (parent dirs are created)."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, **engine_options: Any
    ) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(URL.create("sqlite+aiosqlite", database=self.path), **engine_options)
        timeout_ms = int(busy_timeout * 1000)

        @event.listens_for(self._root_engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()


class PostgresBlackboardStore(SQLBlackboardStore):
    """The shared store for many replicas. `dsn` is a `postgresql://` or `postgres://` URL."""

    def __init__(self, dsn: str, *, schema: str | None = None, **engine_options: Any) -> None:
        connect_args = {"timeout": 10, **engine_options.pop("connect_args", {})}
        super().__init__(
            _asyncpg_url(dsn), schema=schema, connect_args=connect_args, **engine_options
        )


def store_from_url(url: str) -> BlackboardStore:
    """`memory://`, `sqlite:///relative.db` or `sqlite:////abs/path.db`, `postgresql://...`."""
    scheme = url.partition("://")[0].lower()
    if url == "memory://" or scheme == "memory":
        return InMemoryBlackboardStore()
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        path = url.partition("://")[2]
        if not path.startswith("/") or path == "/":
            raise ValueError(f"a SQLite store URL looks like sqlite:///path/file.db, not {url!r}")
        return SQLiteBlackboardStore(path[1:])
    if scheme in {"postgresql", "postgres", "postgresql+asyncpg"}:
        return PostgresBlackboardStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: use memory://, sqlite:///path.db or postgresql://..."
    )


def _asyncpg_url(dsn: str) -> URL:
    url = make_url(dsn)
    if url.drivername not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        raise ValueError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)!r}")
    return url.set(drivername="postgresql+asyncpg")


def _correlation_row(
    correlation_id: str, state: str, seq: int, started_at: int, updated_at: int
) -> dict[str, Any]:
    return {
        "correlation_id": correlation_id,
        "state": state,
        "seq": seq,
        "started_at": started_at,
        "updated_at": updated_at,
    }


def _conditions(filters: FilterConfig | None) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions on `artifacts`: every field, `visible_to` included."""
    if filters is None:
        return []
    c = artifacts.c
    where: list[ColumnElement[bool]] = []
    if filters.correlation_id is not None:
        where.append(c.correlation_id == filters.correlation_id)
    if filters.type_names:
        where.append(c.type.in_(sorted(filters.type_names)))
    if filters.produced_by:
        where.append(c.produced_by.in_(sorted(filters.produced_by)))
    if filters.visibility:
        where.append(c.visibility_kind.in_(sorted(filters.visibility)))
    if filters.start is not None:
        where.append(c.created_at >= to_micros(filters.start))
    if filters.end is not None:
        where.append(c.created_at <= to_micros(filters.end))
    if filters.tags:
        tagged = artifact_tags.c
        where.append(
            exists().where(tagged.artifact_id == c.id, tagged.tag.in_(sorted(filters.tags)))
        )
    if filters.visible_to is not None:
        where.append(_visible_to(filters.visible_to))
    return where


def _visible_to(identity: Identity) -> ColumnElement[bool]:
    """SQL for `artifact.visibility.allows(identity)`, one branch per rule kind."""
    c, member = artifacts.c, artifact_audience.c
    allowed: list[ColumnElement[bool]] = [c.visibility_kind == "Public"]
    if identity.tenant is not None:
        allowed.append(and_(c.visibility_kind == "Tenant", c.tenant_id == identity.tenant))
    if identity.name is not None:
        named = exists().where(member.artifact_id == c.id, member.member == identity.name)
        allowed.append(and_(c.visibility_kind == "Private", named))
    # Labelled: no required label that the identity lacks.
    lacking = exists().where(
        member.artifact_id == c.id, member.member.not_in(sorted(identity.labels))
    )
    allowed.append(and_(c.visibility_kind == "Labelled", ~lacking))
    return or_(*allowed)


# SQLSTATE classes meaning "not now": connection, auth, unknown database, resources,
# operator intervention (shutdown, cancel), transaction rollback (deadlock, serialization).
_PG_UNAVAILABLE = ("08", "28", "3D", "40", "53", "57")
# SQLite primary result codes: BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_UNAVAILABLE = {5, 6, 7, 8, 10, 13, 14, 15}


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OSError | sa_exc.TimeoutError | sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _PG_UNAVAILABLE
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_UNAVAILABLE


def _unavailable(exc: BaseException) -> StoreUnavailableError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreUnavailableError(f"the blackboard store is unavailable: {reason}")


__all__ = [
    "PostgresBlackboardStore",
    "SQLBlackboardStore",
    "SQLiteBlackboardStore",
    "store_from_url",
]
