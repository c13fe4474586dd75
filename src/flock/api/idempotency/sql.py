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
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flock.api.idempotency.protocol import (
    CachedResponse,
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStoreUnavailableError,
    RecordState,
)
from flock.core.store.migrations import (
    SchemaDefinition,
    SchemaState,
    Step,
    Upgrade,
    baseline,
    prepare_schema,
    read_schema,
)
from flock.core.store.sql_backends import (
    DEFAULT_STORE_TIMEOUT,
    connection,
    describe_unavailable,
    is_unavailable,
    postgres_engine,
    retry_ddl,
    sqlite_engine,
)
from flock.core.store.urls import parse_store_url

TABLE_NAME = "flock_idempotency"

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


def _legacy_version(conn: sa.Connection, schema: str | None) -> int | None:
    """The first release's table had no version table; None: no table at all."""
    return 1 if sa.inspect(conn).has_table(TABLE_NAME, schema=schema) else None


# A new schema version: change `_make_table`, and append its Step here.
IDEMPOTENCY_SCHEMA = SchemaDefinition(
    name="idempotency store",
    version_table="flock_idempotency_schema",
    lock_id=0x466C6F636B4944,  # "FlockID"
    create=lambda conn, schema: _make_table(schema).create(conn),
    steps=(Step(1, "the flock_idempotency table", baseline),),
    legacy_version=_legacy_version,
)


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


# Every operation is a single atomic statement, so connections stay in autocommit: no
# BEGIN/COMMIT round trips, and nothing for the pool to roll back on check-in.
_ENGINE_OPTIONS: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}


class SQLIdempotencyStore:
    """The shared implementation; build one through `SQLiteIdempotencyStore` or
    `PostgresIdempotencyStore`. The table is created on first use (an older schema is
    upgraded then only if `upgrade`); `timeout` bounds every operation."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        schema: str | None = None,
        timeout: float | None = DEFAULT_STORE_TIMEOUT,
        upgrade: bool = True,
    ) -> None:
        self._engine = engine
        self._timeout = timeout
        self._upgrade = upgrade
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

    @asynccontextmanager
    async def _unavailable_on_error(self) -> AsyncIterator[None]:
        """Connection-level failures (and a missed deadline, see `connection`) become
        `IdempotencyStoreUnavailableError`."""
        try:
            yield
        except Exception as exc:
            if is_unavailable(exc):
                reason = describe_unavailable(exc, self._timeout)
                raise IdempotencyStoreUnavailableError(
                    f"idempotency store unavailable: {reason}"
                ) from exc
            raise

    def _connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return connection(self._engine, timeout=self._timeout)

    async def _ensure_table(self) -> None:
        if not self._ready:
            await self.prepare(once=True)

    async def prepare(self, *, upgrade: bool | None = None, once: bool = False) -> Upgrade | None:
        """Create the table, check its schema version, or upgrade an older one (when
        `upgrade`, default: the store's setting); what was done (None with `once` when it
        was done already)."""
        allowed = self._upgrade if upgrade is None else upgrade
        async with self._ready_lock, self._unavailable_on_error():
            if once and self._ready:
                return None
            outcome = await retry_ddl(
                lambda: prepare_schema(
                    self._engine,
                    IDEMPOTENCY_SCHEMA,
                    self._schema,
                    upgrade=allowed,
                    timeout=self._timeout,
                )
            )
            self._ready = True
            return outcome

    async def schema_state(self) -> SchemaState:
        """The database's schema version and this Flock's, changing nothing."""
        async with self._unavailable_on_error():
            return await read_schema(
                self._engine, IDEMPOTENCY_SCHEMA, self._schema, timeout=self._timeout
            )

    async def _execute(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> sa.CursorResult[Any]:
        await self._ensure_table()
        async with (
            self._unavailable_on_error(),
            connection(self._engine, timeout=self._timeout) as conn,
        ):
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
        async with (
            self._unavailable_on_error(),
            connection(self._engine, timeout=self._timeout) as conn,
        ):
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
                    return ClaimResult(acquired=True, record=_record(won), taken_over=taken_over)
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
        async with (
            self._unavailable_on_error(),
            connection(self._engine, timeout=self._timeout) as conn,
        ):
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self._engine.dispose()


class SQLiteIdempotencyStore(SQLIdempotencyStore):
    """Records in a SQLite file (WAL mode), shared by every process that opens the file."""

    def __init__(
        self, path: str | Path, *, busy_timeout_seconds: float = 30.0, upgrade: bool = True
    ) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise RuntimeError(
                f"SQLiteIdempotencyStore needs SQLite >= 3.35 (RETURNING); "
                f"this Python links {sqlite3.sqlite_version}"
            )
        self.path = Path(path)
        engine = sqlite_engine(
            self.path,
            busy_timeout=busy_timeout_seconds,
            connect_args={"timeout": busy_timeout_seconds},
            **_ENGINE_OPTIONS,
        )
        # A local file: bounded by the busy timeout (another writer's lock), no deadline.
        super().__init__(engine, timeout=None, upgrade=upgrade)


class PostgresIdempotencyStore(SQLIdempotencyStore):
    """Records in PostgreSQL (asyncpg), optionally in their own `schema` (created if missing;
    `?schema=` on the DSN says the same). Driver options on the DSN (`?sslmode=...`) pass on
    as for the blackboard store."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        timeout: float | None = DEFAULT_STORE_TIMEOUT,
        upgrade: bool = True,
    ) -> None:
        target = parse_store_url(dsn, kinds=("postgresql",))
        engine = postgres_engine(target.asyncpg(), timeout=timeout, **_ENGINE_OPTIONS)
        super().__init__(
            engine,
            schema=schema if schema is not None else target.schema,
            timeout=timeout,
            upgrade=upgrade,
        )
