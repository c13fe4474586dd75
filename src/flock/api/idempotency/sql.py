"""Idempotency records in SQLite or PostgreSQL, through one SQLAlchemy Core implementation.

`claim` is a single `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE <free> RETURNING`
statement, so two processes racing for a key are settled by the database: at most one
statement inserts or updates the row, and the loser reads the winner's row in the same
transaction (PostgreSQL locks a conflicting row even when the WHERE leaves it unchanged).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateSchema, CreateTable

from flock.api.idempotency.protocol import (
    CachedResponse,
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStoreUnavailableError,
    RecordState,
)

TABLE_NAME = "flock_idempotency"
CONNECT_TIMEOUT_SECONDS = 10.0
# Serialises table creation when several PostgreSQL clients start at once: concurrent
# `CREATE TABLE IF NOT EXISTS` can still fail there on the catalog's unique index.
_DDL_LOCK_ID = 0x466C6F636B4944  # "FlockID"

_IN_PROGRESS: Final = "in_progress"
_COMPLETED: Final = "completed"


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

    def __init__(self, engine: AsyncEngine, *, schema: str | None = None) -> None:
        self._engine = engine
        self._schema = schema
        self._table = _make_table(schema)
        self._ready = False
        self._statements()

    def _statements(self) -> None:
        t = self._table
        p = sa.bindparam
        now = p("now", type_=sa.Double)
        values = {
            "key": p("key", type_=sa.Text),
            "fingerprint": p("fingerprint", type_=sa.Text),
            "state": _IN_PROGRESS,
            "owner": p("owner", type_=sa.Text),
            "created_at": now,
            "expires_at": p("new_expires_at", type_=sa.Double),
            "lease_expires_at": p("new_lease_expires_at", type_=sa.Double),
            "takeovers": 0,
        }
        upsert: sa.Insert
        if self._engine.dialect.name == "postgresql":
            pg_insert = postgresql.insert(t).values(values)
            set_, where = self._takeover(pg_insert.excluded, now)
            upsert = pg_insert.on_conflict_do_update(
                index_elements=[t.c.key], set_=set_, where=where
            )
        else:
            sqlite_insert = sqlite_dialect.insert(t).values(values)
            set_, where = self._takeover(sqlite_insert.excluded, now)
            upsert = sqlite_insert.on_conflict_do_update(
                index_elements=[t.c.key], set_=set_, where=where
            )
        self._claim_stmt = upsert.returning(*t.c)

        key = p("key", type_=sa.Text)
        held = sa.and_(
            t.c.key == key,
            t.c.owner == p("owner", type_=sa.Text),
            t.c.state == _IN_PROGRESS,
            t.c.expires_at > now,
        )
        self._get_stmt = sa.select(t).where(t.c.key == key, t.c.expires_at > now)
        self._select_stmt = sa.select(t).where(t.c.key == key)
        self._publish_stmt = (
            sa.update(t)
            .where(held)
            .values(
                correlation_id=p("new_correlation_id", type_=sa.Text),
                artifact_id=p("new_artifact_id", type_=sa.Text),
            )
        )
        self._renew_stmt = (
            sa.update(t)
            .where(held)
            .values(lease_expires_at=p("new_lease_expires_at", type_=sa.Double))
        )
        self._complete_stmt = (
            sa.update(t)
            .where(held)
            .values(
                state=_COMPLETED,
                status_code=p("new_status_code", type_=sa.Integer),
                body=p("new_body", type_=sa.LargeBinary),
                headers=p("new_headers", type_=sa.Text),
                expires_at=p("new_expires_at", type_=sa.Double),
            )
        )
        self._release_stmt = sa.delete(t).where(held)
        self._purge_stmt = sa.delete(t).where(t.c.expires_at <= now)

    def _takeover(
        self, excluded: Any, now: sa.BindParameter[float]
    ) -> tuple[dict[str, Any], sa.ColumnElement[bool]]:
        """The ON CONFLICT update: replace an expired row, or take over a lapsed lease.

        A lapsed lease claimed with another fingerprint is replaced like an expired row.
        """
        t = self._table
        expired = t.c.expires_at <= now
        lapsed = sa.and_(t.c.state == _IN_PROGRESS, t.c.lease_expires_at <= now)
        fresh = sa.or_(expired, t.c.fingerprint != excluded.fingerprint)
        set_ = {
            "fingerprint": excluded.fingerprint,
            "state": excluded.state,
            "owner": excluded.owner,
            "created_at": sa.case((fresh, excluded.created_at), else_=t.c.created_at),
            "expires_at": excluded.expires_at,
            "lease_expires_at": excluded.lease_expires_at,
            "correlation_id": sa.case((fresh, sa.null()), else_=t.c.correlation_id),
            "artifact_id": sa.case((fresh, sa.null()), else_=t.c.artifact_id),
            "status_code": sa.null(),
            "body": sa.null(),
            "headers": sa.null(),
            "takeovers": sa.case((fresh, 0), else_=t.c.takeovers + 1),
        }
        return set_, sa.or_(expired, lapsed)

    async def _ensure_table(self) -> None:
        if self._ready:
            return
        with _unavailable_on_error():
            async with self._engine.begin() as conn:
                await self._create_table(conn)
        self._ready = True

    async def _create_table(self, conn: AsyncConnection) -> None:
        if self._engine.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_ID)))
            if self._schema is not None:
                await conn.execute(CreateSchema(self._schema, if_not_exists=True))
        await conn.execute(CreateTable(self._table, if_not_exists=True))
        for index in self._table.indexes:
            await conn.execute(CreateIndex(index, if_not_exists=True))

    async def _execute(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> sa.CursorResult[Any]:
        await self._ensure_table()
        with _unavailable_on_error():
            async with self._engine.begin() as conn:
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
        now = time.time()
        params = {
            "key": key,
            "fingerprint": fingerprint,
            "owner": owner,
            "now": now,
            "new_expires_at": now + ttl_seconds,
            "new_lease_expires_at": now + lease_seconds,
        }
        with _unavailable_on_error():
            async with self._engine.begin() as conn:
                won = (await conn.execute(self._claim_stmt, params)).first()
                if won is not None:
                    return ClaimResult(
                        acquired=True, record=_record(won), taken_over=won.takeovers > 0
                    )
                existing = (await conn.execute(self._select_stmt, {"key": key})).one()
        return ClaimResult(acquired=False, record=_record(existing))

    async def record_publish(
        self, key: str, owner: str, correlation_id: str, artifact_id: str | None = None
    ) -> bool:
        params = {
            "key": key,
            "owner": owner,
            "now": time.time(),
            "new_correlation_id": correlation_id,
            "new_artifact_id": artifact_id,
        }
        return (await self._execute(self._publish_stmt, params)).rowcount == 1

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        params = {
            "key": key,
            "owner": owner,
            "now": now,
            "new_lease_expires_at": now + lease_seconds,
        }
        return (await self._execute(self._renew_stmt, params)).rowcount == 1

    async def complete(
        self, key: str, owner: str, response: CachedResponse, ttl_seconds: float
    ) -> bool:
        now = time.time()
        params = {
            "key": key,
            "owner": owner,
            "now": now,
            "new_status_code": response.status_code,
            "new_body": response.body,
            "new_headers": json.dumps(response.headers, separators=(",", ":")),
            "new_expires_at": now + ttl_seconds,
        }
        return (await self._execute(self._complete_stmt, params)).rowcount == 1

    async def release(self, key: str, owner: str) -> bool:
        params = {"key": key, "owner": owner, "now": time.time()}
        return (await self._execute(self._release_stmt, params)).rowcount == 1

    async def get(self, key: str) -> IdempotencyRecord | None:
        result = await self._execute(self._get_stmt, {"key": key, "now": time.time()})
        row = result.first()
        return None if row is None else _record(row)

    async def purge_expired(self) -> int:
        return (await self._execute(self._purge_stmt, {"now": time.time()})).rowcount

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
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{self.path}",
            connect_args={"timeout": busy_timeout_seconds},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        super().__init__(engine)


class PostgresIdempotencyStore(SQLIdempotencyStore):
    """Records in PostgreSQL (asyncpg), optionally in their own `schema` (created if missing)."""

    def __init__(self, dsn: str, *, schema: str | None = None) -> None:
        url = make_url(dsn)
        if url.drivername not in {"postgresql", "postgres", "postgresql+asyncpg"}:
            raise ValueError(f"not a PostgreSQL DSN: {url.render_as_string()}")
        engine = create_async_engine(
            url.set(drivername="postgresql+asyncpg"),
            connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
        )
        super().__init__(engine, schema=schema)
