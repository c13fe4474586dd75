"""What differs between SQLite and PostgreSQL: engine setup, URLs, and what driver errors mean."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from flock.core.store.protocol import StoreUnavailableError

POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})
# How often table creation is tried while concurrent starters race it.
DDL_ATTEMPTS = 8

# SQLSTATE classes meaning "not now": connection, auth, unknown database, resources,
# operator intervention (shutdown, cancel), transaction rollback (deadlock, serialization).
_PG_UNAVAILABLE = frozenset({"08", "28", "3D", "40", "53", "57"})
# SQLite primary result codes: BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def configure_sqlite(engine: AsyncEngine, busy_timeout: float) -> None:
    """On every connection: wait up to `busy_timeout` seconds for locks, and NORMAL sync.

    WAL mode belongs to the file, not the connection: the store sets it once, with its tables.
    """
    timeout_ms = int(busy_timeout * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()


async def retry_ddl(create: Callable[[], Awaitable[None]]) -> None:
    """Run `create` (which looks before it creates), again while a concurrent starter races it.

    Another process may be creating the same tables (PostgreSQL: duplicate object), or
    switching a new SQLite file to WAL, which SQLite answers with "database is locked" at once
    rather than through its busy handler. A lost connection is not a race: it is raised.
    """
    for attempt in range(DDL_ATTEMPTS):
        try:
            await create()
            return
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated or attempt == DDL_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


def asyncpg_url(dsn: str | URL) -> URL:
    """`postgresql://` and `postgres://` DSNs, as SQLAlchemy's asyncpg URL."""
    url = make_url(dsn)
    if url.drivername not in POSTGRES_SCHEMES:
        shown = url.render_as_string(hide_password=True)
        raise ValueError(f"not a PostgreSQL URL (postgresql://...): {shown!r}")
    query = dict(url.query)
    if "sslmode" in query:  # libpq's name; asyncpg takes the same values as `ssl`
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername="postgresql+asyncpg", query=query)


def is_unavailable(exc: BaseException) -> bool:
    """True for errors meaning the database cannot be used right now (worth a retry later)."""
    if isinstance(exc, OSError | sa_exc.TimeoutError):  # refused, reset, timed out; pool timeout
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    # asyncpg's errors (raw when raised while connecting) carry `sqlstate`.
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _PG_UNAVAILABLE
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_UNAVAILABLE


def is_conflict(exc: BaseException | None) -> bool:
    """A PostgreSQL deadlock or serialization failure: the transaction was rolled back and
    may simply be run again."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return sqlstate in ("40P01", "40001")


def unavailable(exc: BaseException) -> StoreUnavailableError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreUnavailableError(f"the blackboard store is unavailable: {reason}")


__all__ = [
    "POSTGRES_SCHEMES",
    "asyncpg_url",
    "configure_sqlite",
    "is_conflict",
    "is_unavailable",
    "unavailable",
]
