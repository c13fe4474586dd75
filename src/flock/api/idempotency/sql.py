"""Idempotency records in SQLite or PostgreSQL, through one SQLAlchemy Core implementation.

`claim` is a single `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE <free> RETURNING`
statement, so processes racing for a key are settled by the database: one statement
inserts or takes the row, the others get no row back and read the holder's record. Every
other operation is a single conditional UPDATE/DELETE/SELECT, run in autocommit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateSchema, CreateTable

from flock.api.idempotency.protocol import (
    CachedResponse,
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStoreUnavailableError,
    RecordState,
)
from flock.core.store.sql_backends import retry_ddl

TABLE_NAME = "flock_idempotency"
CONNECT_TIMEOUT_SECONDS = 10.0
# The advisory lock PostgreSQL starters take turns on while creating the table.
_DDL_LOCK_ID = 0x466C6F636B4944  # "FlockID"

# A claim that keeps finding its key freed between its two statements gives up eventually.
_CLAIM_ATTEMPTS = 10

_IN_PROGRESS: Final = "in_progress"
_COMPLETED: Final = "completed"


# The atomic claim, the same on SQLite (>= 3.35) and PostgreSQL: insert, or update a row whose
# TTL ran out (fresh record) or whose holder's lease lapsed with the same fingerprint
# (take-over, keeping what it recorded). RETURNING yields no row when the key is held, which
# includes a lapsed lease claimed with another body: the key stays bound to its first body.
# Plain SQL because SQLAlchemy 2.0 cannot cache a compiled
# dialect-specific upsert, and recompiling it took about as long as running it.
_CLAIM_SQL = """
INSERT INTO {table} AS t ("key", fingerprint, state, owner, created_at, expires_at,
                          lease_expires_at, takeovers)
VALUES (:p_key, :p_fingerprint, 'in_progress', :p_owner, :p_now, :p_expires_at,
        :p_lease_expires_at, 0)
ON CONFLICT ("key") DO UPDATE SET
    fingerprint = excluded.fingerprint,
    state = excluded.state,
    owner = excluded.owner,
    created_at = CASE WHEN {fresh} THEN excluded.created_at ELSE t.created_at END,
    expires_at = excluded.expires_at,
    lease_expires_at = excluded.lease_expires_at,
    correlation_id = CASE WHEN {fresh} THEN NULL ELSE t.correlation_id END,
    artifact_id = CASE WHEN {fresh} THEN NULL ELSE t.artifact_id END,
    status_code = NULL,
    body = NULL,
    headers = NULL,
    takeovers = CASE WHEN {fresh} THEN 0 ELSE t.takeovers + 1 END
WHERE t.expires_at <= :p_now
   OR (t.state = 'in_progress' AND t.lease_expires_at <= :p_now
       AND t.fingerprint = excluded.fingerprint)
RETURNING "key", fingerprint, state, owner, created_at, expires_at, lease_expires_at,
          correlation_id, artifact_id, status_code, body, headers, takeovers
"""
_FRESH = "t.expires_at <= :p_now"


def _make_table(schema: str | None) -> sa.Table:
    return sa.Table(
        TABLE_NAME,
        sa.MetaData(),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("lease_expires_at", sa.Double, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.Column("artifact_id", sa.Text),
        sa.Column("status_code", sa.Integer),
        sa.Column("body", sa.LargeBinary),
        sa.Column("headers", sa.Text),
        # How often a lapsed lease was taken over; > 0 on a claim's row means "taken over",
        # which RETURNING cannot otherwise tell from a fresh insert.
        sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"),
        sa.Index(f"ix_{TABLE_NAME}_expires_at", "expires_at"),
        schema=schema,
    )


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn connection-level failures into `IdempotencyStoreUnavailableError`."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeoutError, OSError, TimeoutError) as exc:
        raise IdempotencyStoreUnavailableError(f"idempotency store unavailable: {exc}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise IdempotencyStoreUnavailableError(f"idempotency store unavailable: {exc}") from exc
        raise


def _record(row: sa.Row[Any]) -> IdempotencyRecord:
    state: RecordState = _COMPLETED if row.state == _COMPLETED else _IN_PROGRESS
    response = None
    if state == _COMPLETED:
        headers = json.loads(row.headers) if row.headers else {}
        response = CachedResponse(
            status_code=int(row.status_code),
            body=bytes(row.body or b""),
            headers={str(k): str(v) for k, v in headers.items()},
        )
    return IdempotencyRecord(
        key=str(row.key),
        fingerprint=str(row.fingerprint),
        state=state,
        owner=str(row.owner),
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
        lease_expires_at=float(row.lease_expires_at),
        correlation_id=row.correlation_id,
        artifact_id=row.artifact_id,
        response=response,
    )


class SQLIdempotencyStore:
    """The shared implementation; build one through `SQLiteIdempotencyStore` or
    `PostgresIdempotencyStore`. The table is created on first use."""

    def __init__(
        self, url: str | URL, *, schema: str | None = None, connect_args: dict[str, Any]
    ) -> None:
        # Every operation is a single atomic statement, so connections stay in autocommit:
        # no BEGIN/COMMIT round trips, and nothing for the pool to roll back on check-in.
        self._engine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, connect_args=connect_args
        )
        self._schema = schema
        self._table = _make_table(schema)
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._statements()

    def _statements(self) -> None:
        t = self._table
        p = sa.bindparam
        now = p("p_now", type_=sa.Double)
        table = self._engine.dialect.identifier_preparer.format_table(t)
        self._claim_stmt = sa.text(_CLAIM_SQL.format(table=table, fresh=_FRESH)).bindparams(
            now,
            p("p_key", type_=sa.Text),
            p("p_fingerprint", type_=sa.Text),
            p("p_owner", type_=sa.Text),
            p("p_expires_at", type_=sa.Double),
            p("p_lease_expires_at", type_=sa.Double),
        )

        key = p("p_key", type_=sa.Text)
        held = sa.and_(
            t.c.key == key,
            t.c.owner == p("p_owner", type_=sa.Text),
            t.c.state == _IN_PROGRESS,
            t.c.expires_at > now,
        )
        self._get_stmt = sa.select(t).where(t.c.key == key, t.c.expires_at > now)
        self._select_stmt = sa.select(t).where(t.c.key == key)
        self._publish_stmt = (
            sa.update(t)
            .where(held)
            .values(
                correlation_id=p("p_correlation_id", type_=sa.Text),
                artifact_id=p("p_artifact_id", type_=sa.Text),
            )
        )
        self._renew_stmt = (
            sa.update(t)
            .where(held)
            .values(lease_expires_at=p("p_lease_expires_at", type_=sa.Double))
        )
        self._complete_stmt = (
            sa.update(t)
            .where(held)
            .values(
                state=_COMPLETED,
                status_code=p("p_status_code", type_=sa.Integer),
                body=p("p_body", type_=sa.LargeBinary),
                headers=p("p_headers", type_=sa.Text),
                expires_at=p("p_expires_at", type_=sa.Double),
            )
        )
        self._release_stmt = sa.delete(t).where(held)
        self._purge_stmt = sa.delete(t).where(t.c.expires_at <= now)

    async def _ensure_table(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                with _unavailable_on_error():
                    await retry_ddl(self._create_table)
                self._ready = True

    def _table_exists(self, conn: sa.Connection) -> bool:
        return sa.inspect(conn).has_table(TABLE_NAME, schema=self._schema)

    def _schema_exists(self, conn: sa.Connection) -> bool:
        return self._schema is None or sa.inspect(conn).has_schema(self._schema)

    async def _create_table(self) -> None:
        async with self._engine.connect() as conn:
            # Look before creating: IF NOT EXISTS still needs the CREATE privilege.
            if await conn.run_sync(self._table_exists):
                return
            if self._engine.dialect.name == "postgresql":
                # Concurrent `CREATE TABLE IF NOT EXISTS` can still collide on PostgreSQL's
                # catalog: starters take turns on an advisory lock.
                await conn.execute(sa.select(sa.func.pg_advisory_lock(_DDL_LOCK_ID)))
                try:
                    await self._create_ddl(conn)
                finally:
                    if not conn.invalidated:  # else the lock went with the session
                        await conn.execute(sa.select(sa.func.pg_advisory_unlock(_DDL_LOCK_ID)))
                return
            # SQLite: WAL sticks to the file once set (readers then run beside the writer);
            # the DDL runs in one write-locked transaction, so a concurrent starter waits for
            # it and never sees the table without its index.
            await conn.exec_driver_sql("PRAGMA journal_mode = WAL")
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                await self._create_ddl(conn)
            except BaseException:
                # An interrupted statement (a cancellation, a lost connection) invalidates the
                # connection: closing it discarded the transaction, and another statement on
                # it would raise in place of the original error, a CancelledError included.
                if not conn.invalidated:
                    await conn.exec_driver_sql("ROLLBACK")
                raise
            await conn.exec_driver_sql("COMMIT")

    async def _create_ddl(self, conn: AsyncConnection) -> None:
        if self._schema is not None and not await conn.run_sync(self._schema_exists):
            await conn.execute(CreateSchema(self._schema, if_not_exists=True))
        await conn.execute(CreateTable(self._table, if_not_exists=True))
        for index in self._table.indexes:
            await conn.execute(CreateIndex(index, if_not_exists=True))

    async def _execute(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> sa.CursorResult[Any]:
        await self._ensure_table()
        with _unavailable_on_error():
            async with self._engine.connect() as conn:
                return await conn.execute(statement, params)

    async def claim(
        self,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> ClaimResult:
        await self._ensure_table()
        with _unavailable_on_error():
            async with self._engine.connect() as conn:
                for _ in range(_CLAIM_ATTEMPTS):
                    now = time.time()
                    params = {
                        "p_key": key,
                        "p_fingerprint": fingerprint,
                        "p_owner": owner,
                        "p_now": now,
                        "p_expires_at": now + ttl_seconds,
                        "p_lease_expires_at": now + lease_seconds,
                    }
                    won = (await conn.execute(self._claim_stmt, params)).first()
                    if won is not None:
                        taken_over = won.takeovers > 0
                        return ClaimResult(
                            acquired=True, record=_record(won), taken_over=taken_over
                        )
                    row = (await conn.execute(self._select_stmt, {"p_key": key})).first()
                    now = time.time()
                    if row is not None and row.expires_at > now:
                        held = _record(row)
                        if held.fingerprint != fingerprint or not held.lease_expired(now):
                            return ClaimResult(acquired=False, record=held)
                    # Released, expired or abandoned since the upsert: try again.
        raise IdempotencyStoreUnavailableError(f"could not settle a claim on {key!r}; retry")

    async def record_publish(
        self, key: str, owner: str, correlation_id: str, artifact_id: str | None = None
    ) -> bool:
        params = {
            "p_key": key,
            "p_owner": owner,
            "p_now": time.time(),
            "p_correlation_id": correlation_id,
            "p_artifact_id": artifact_id,
        }
        return (await self._execute(self._publish_stmt, params)).rowcount == 1

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        params = {
            "p_key": key,
            "p_owner": owner,
            "p_now": now,
            "p_lease_expires_at": now + lease_seconds,
        }
        return (await self._execute(self._renew_stmt, params)).rowcount == 1

    async def complete(
        self, key: str, owner: str, response: CachedResponse, ttl_seconds: float
    ) -> bool:
        now = time.time()
        params = {
            "p_key": key,
            "p_owner": owner,
            "p_now": now,
            "p_status_code": response.status_code,
            "p_body": response.body,
            "p_headers": json.dumps(response.headers, separators=(",", ":")),
            "p_expires_at": now + ttl_seconds,
        }
        return (await self._execute(self._complete_stmt, params)).rowcount == 1

    async def release(self, key: str, owner: str) -> bool:
        params = {"p_key": key, "p_owner": owner, "p_now": time.time()}
        return (await self._execute(self._release_stmt, params)).rowcount == 1

    async def get(self, key: str) -> IdempotencyRecord | None:
        result = await self._execute(self._get_stmt, {"p_key": key, "p_now": time.time()})
        row = result.first()
        return None if row is None else _record(row)

    async def purge_expired(self) -> int:
        return (await self._execute(self._purge_stmt, {"p_now": time.time()})).rowcount

    async def ping(self) -> None:
        with _unavailable_on_error():
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self._engine.dispose()


class SQLiteIdempotencyStore(SQLIdempotencyStore):
    """Records in a SQLite file (WAL mode), shared by every process that opens the file."""

    def __init__(self, path: str | Path, *, busy_timeout_seconds: float = 30.0) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise RuntimeError(
                f"SQLiteIdempotencyStore needs SQLite >= 3.35 (RETURNING); "
                f"this Python links {sqlite3.sqlite_version}"
            )
        self.path = Path(path)
        super().__init__(
            f"sqlite+aiosqlite:///{self.path}", connect_args={"timeout": busy_timeout_seconds}
        )

        @event.listens_for(self._engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
            # Safe with WAL: a commit survives a crash of the process, if not of the machine.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()


class PostgresIdempotencyStore(SQLIdempotencyStore):
    """Records in PostgreSQL (asyncpg), optionally in their own `schema` (created if missing)."""

    def __init__(self, dsn: str, *, schema: str | None = None) -> None:
        url = make_url(dsn)
        if url.drivername not in {"postgresql", "postgres", "postgresql+asyncpg"}:
            raise ValueError(f"not a PostgreSQL DSN: {url.render_as_string()}")
        super().__init__(
            url.set(drivername="postgresql+asyncpg"),
            schema=schema,
            connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
        )
