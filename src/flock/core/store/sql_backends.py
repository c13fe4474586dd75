"""What differs between SQLite and PostgreSQL: engine setup, deadlines, and what driver
errors mean. Both SQL stores (the blackboard and the idempotency records) open their
engines here, so a URL and a deadline mean the same on either."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from flock.core.store.protocol import StoreUnavailableError
from flock.core.store.urls import POSTGRES_SCHEMES, asyncpg_url

T = TypeVar("T")
# FLOCK_STORE_TIMEOUT's default: the deadline of one store operation.
DEFAULT_STORE_TIMEOUT = 5.0
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


async def retry_ddl(create: Callable[[], Awaitable[T]]) -> T:
    """Run `create` (which looks before it creates), again while a concurrent starter races it.

    Another process may be creating the same tables (PostgreSQL: duplicate object), or
    switching a new SQLite file to WAL, which SQLite answers with "database is locked" at once
    rather than through its busy handler. A lost connection is not a race: it is raised.
    """
    for attempt in range(DDL_ATTEMPTS - 1):
        try:
            return await create()
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    return await create()


def postgres_engine(url: str | URL, *, timeout: float | None, **options: Any) -> AsyncEngine:
    """An asyncpg engine whose waits for a connection are bounded by `timeout` seconds
    (asyncpg's connect `timeout`, the pool's checkout); its operations are bounded by
    `connection(..., timeout=)`. None: asyncpg's and SQLAlchemy's own limits (60 s to
    connect, 30 s for the pool)."""
    connect_args: dict[str, Any] = {}
    if timeout is not None:
        # Statements are bounded per operation (`connection`), not one timer each.
        connect_args = {"timeout": timeout}
        options.setdefault("pool_timeout", timeout)
    connect_args.update(options.pop("connect_args", {}))
    return create_async_engine(asyncpg_url(url), connect_args=connect_args, **options)


def sqlite_engine(
    path: str | os.PathLike[str], *, busy_timeout: float, **options: Any
) -> AsyncEngine:
    """An aiosqlite engine on the file at `path` (see `configure_sqlite`)."""
    engine = create_async_engine(
        URL.create("sqlite+aiosqlite", database=os.fspath(path)), **options
    )
    configure_sqlite(engine, busy_timeout)
    return engine


@asynccontextmanager
async def connection(
    engine: AsyncEngine, *, begin: bool = False, timeout: float | None = None
) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for one operation (in a transaction committed at the end when
    `begin`), all of it done within `timeout` seconds, or `TimeoutError`.

    A stalled server answers neither the statement nor its cancellation nor the rollback
    after it, so cancelling the caller is not enough (asyncpg and SQLAlchemy each wait
    for an answer once more): at the deadline the connection is terminated, which fails
    whatever waits on it at once, and it is dropped from the pool. Getting the connection
    counts: the pool's and asyncpg's connect timeouts end a wait for one at the deadline.
    One timer per operation, not one per statement.
    """
    loop = asyncio.get_running_loop()
    expires = None if timeout is None else loop.time() + timeout
    async with engine.connect() as conn:
        watchdog: Watchdog | None = None
        if expires is not None:
            assert conn.sync_connection is not None  # checked out: reading it does no I/O
            driver = conn.sync_connection.connection.driver_connection
            if hasattr(driver, "terminate"):  # asyncpg; a SQLite file has no network to stall
                watchdog = Watchdog(driver)
                watchdog.handle = loop.call_at(expires, watchdog.fire)
        try:
            if begin:
                await conn.begin()
            yield conn
            if begin:
                await conn.commit()
        except (asyncio.CancelledError, TimeoutError):  # a caller's deadline, or the driver's
            await _drop(conn)
            raise
        except Exception as exc:
            if watchdog is not None and watchdog.fired:
                await _drop(conn)
                raise TimeoutError() from exc
            if begin and conn.in_transaction() and not conn.invalidated:
                await conn.rollback()
            raise
        finally:
            if watchdog is not None and watchdog.handle is not None:
                watchdog.handle.cancel()


class Watchdog:
    """Terminates a connection when its operation's deadline passes."""

    __slots__ = ("driver", "fired", "handle")

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.fired = False
        self.handle: asyncio.TimerHandle | None = None

    def fire(self) -> None:
        self.fired = True
        self.driver.terminate()


async def _drop(conn: AsyncConnection) -> None:
    """Invalidate `conn` without a word to the server (SQLAlchemy's invalidation of an
    asyncpg connection first tries a graceful close, for up to 2 s)."""
    if conn.invalidated:
        return
    raw = await conn.get_raw_connection()
    terminate = getattr(raw.driver_connection, "terminate", None)  # asyncpg's; not aiosqlite
    if callable(terminate):
        terminate()
    await conn.invalidate()


@asynccontextmanager
async def deadline(seconds: float | None) -> AsyncIterator[None]:
    """Bound one store operation, whatever it waits on (a stalled server never answers:
    neither the statement nor the rollback after it); past it, `TimeoutError`, which
    `is_unavailable` counts as "not now"."""
    if seconds is None:
        yield
        return
    async with asyncio.timeout(seconds):
        yield


def is_unavailable(exc: BaseException) -> bool:
    """True for errors meaning the database cannot be used right now (worth a retry later)."""
    if isinstance(exc, OSError | sa_exc.TimeoutError):  # refused, reset, timed out; pool timeout
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if _asyncpg_connection_error(exc):  # raised by asyncpg directly (sql_pg)
        return True
    # asyncpg's errors (raw when raised while connecting) carry `sqlstate`.
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _PG_UNAVAILABLE
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_UNAVAILABLE


def _asyncpg_connection_error(exc: BaseException) -> bool:
    """A closed or broken asyncpg connection (asyncpg's client-side errors)."""
    if not type(exc).__module__.startswith("asyncpg"):
        return False
    from asyncpg import exceptions

    broken = (
        exceptions.InterfaceError,
        exceptions.ConnectionDoesNotExistError,
        exceptions.InternalClientError,  # e.g. a connection the server just terminated
    )
    return isinstance(exc, broken)


def describe_unavailable(exc: BaseException, timeout: float | None = None) -> str:
    """Why a store cannot be used, in one line."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout:g} s" if timeout else "no answer in time"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def is_conflict(exc: BaseException | None) -> bool:
    """A PostgreSQL deadlock or serialization failure: the transaction was rolled back and
    may simply be run again."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return sqlstate in ("40P01", "40001")


def unavailable(exc: BaseException, timeout: float | None = None) -> StoreUnavailableError:
    reason = describe_unavailable(exc, timeout)
    return StoreUnavailableError(f"the blackboard store is unavailable: {reason}")


__all__ = [
    "DEFAULT_STORE_TIMEOUT",
    "POSTGRES_SCHEMES",
    "asyncpg_url",
    "configure_sqlite",
    "connection",
    "deadline",
    "is_conflict",
    "is_unavailable",
    "postgres_engine",
    "retry_ddl",
    "sqlite_engine",
    "unavailable",
]
