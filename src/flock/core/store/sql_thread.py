"""SQLite without a thread round trip per driver call: short statements run in place.

aiosqlite runs every driver call (cursor, execute, fetch, close, begin, commit) as its own
round trip to a worker thread, about four per statement, each a pair of thread wake-ups
that cost more than the statement. SQLite in WAL mode with `synchronous=NORMAL` commits
without waiting for the disk (the transaction is written to the WAL file, which the OS
keeps across a crash of the process), so what can block is only waiting for another
process's write lock, a checkpoint (which syncs the file), or a large read. So:

- A write transaction first takes the write lock (`BEGIN IMMEDIATE`) without waiting; if
  another process holds it, it waits for it on a thread, up to the busy timeout. Holding
  the lock, its statements and its commit run in place on the event loop: they cannot wait.
- The store's own checkpoints run on that thread, on a connection of their own, every
  `CHECKPOINT_EVERY` commits (`PASSIVE`: they never block a writer); the writer connection's
  automatic checkpoint, which would sync the file on the loop, is off.
- Short reads (one row, a count) run in place on a reader connection of their own, so they
  see committed data only; one that finds the file busy is repeated on the thread. Reads of
  a page of rows run on the thread.

Statements are the same SQLAlchemy constructs as for every backend: the store's code does
not change with the driver. Each is compiled once (per statement and parameter names) and
then run straight on the sqlite3 cursor, which costs a tenth of SQLAlchemy's execution
path; statements that need SQLAlchemy at run time (expanding `IN` lists, many rows with
RETURNING, bind processors) take SQLAlchemy's path. Results come back buffered, with
`rowcount`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, CursorResult, Engine, Result, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool, StaticPool

from flock.core.store.sql_results import FastResult

logger = logging.getLogger("flock.store")

T = TypeVar("T")
CHECKPOINT_EVERY = 200  # commits between two PASSIVE checkpoints (each syncs the WAL)
_BUSY = 5  # SQLITE_BUSY


class BufferedResult:
    """A statement's result, read to the end: its rows (as SQLAlchemy's `Result` methods
    give them: first(), mappings(), scalars(), all(), ...) and `rowcount`."""

    __slots__ = ("_frozen", "rowcount")

    def __init__(self, result: CursorResult[Any]) -> None:
        self.rowcount: int = result.rowcount
        self._frozen = result.freeze() if result.returns_rows else None

    def _result(self) -> Result[Any]:
        if self._frozen is None:
            raise RuntimeError("this statement returned no rows")
        return self._frozen()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result(), name)

    def __iter__(self) -> Any:
        return iter(self._result())


def _is_busy(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _BUSY


class _Compiled:
    """A statement compiled for sqlite3: its SQL, and where each positional value comes from
    (a parameter the caller passes, or a value fixed in the statement). An expanding
    parameter (`IN` a list) becomes one `?` per value when it runs."""

    __slots__ = ("expanding", "fixed", "names", "sql")

    def __init__(
        self, sql: str, names: Sequence[str], fixed: dict[str, Any], expanding: frozenset[str]
    ) -> None:
        self.sql, self.names, self.fixed, self.expanding = sql, names, fixed, expanding

    def values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        fixed = self.fixed
        return tuple(params[n] if n in params else fixed[n] for n in self.names)

    def bound(self, params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The SQL and its values for these parameters."""
        if not self.expanding:
            return self.sql, self.values(params)
        sql, values = self.sql, []
        for name in self.names:
            if name in self.expanding:
                items = list(params[name])
                if not items:
                    raise _NeedsSQLAlchemy  # an empty IN: SQLAlchemy renders it specially
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * len(items)), 1)
                values.extend(items)
            else:
                values.append(params[name] if name in params else self.fixed[name])
        return sql, tuple(values)


class _NeedsSQLAlchemy(Exception):
    pass


_SLOW = None  # a statement that takes SQLAlchemy's path
_MAX_COMPILED = 512  # statements built per call are compiled again; the rest stay


class InlineConnection:
    """The part of `AsyncConnection` the SQL store uses, run in place on a connection."""

    __slots__ = ("_conn", "_files")

    def __init__(self, conn: Connection, files: SQLiteFiles) -> None:
        self._conn = conn
        self._files = files

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._run(statement, parameters)

    def _run(self, statement: Any, parameters: Any) -> Any:
        """On sqlite3 directly where the statement allows it (see the module docstring)."""
        if isinstance(parameters, list):
            if len(parameters) != 1:
                return self._many(statement, parameters)
            parameters = parameters[0]
        params = parameters or {}
        compiled = self._files.compiled(statement, params)
        if compiled is not _SLOW:
            try:
                sql, values = compiled.bound(params)
            except _NeedsSQLAlchemy:
                pass
            else:
                return self._files.raw(self._conn, sql, values)
        return BufferedResult(self._conn.execute(statement, parameters))

    def _many(self, statement: Any, rows: list[dict[str, Any]]) -> Any:
        compiled = self._files.compiled(statement, rows[0]) if rows else _SLOW
        if compiled is _SLOW or compiled.expanding or _returns(statement):
            return BufferedResult(self._conn.execute(statement, rows))
        return self._files.raw_many(self._conn, compiled.sql, [compiled.values(r) for r in rows])

    async def exec_driver_sql(self, statement: str) -> BufferedResult:
        return BufferedResult(self._conn.exec_driver_sql(statement))

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        return fn(self._conn)


def _returns(statement: Any) -> bool:
    return bool(getattr(statement, "_returning", ())) or "RETURNING" in str(
        getattr(statement, "text", "")
    )


class ReadConnection(InlineConnection):
    """Reads in place; a read that finds the file busy is repeated on the thread."""

    __slots__ = ()

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        try:
            return self._run(statement, parameters)
        except sa_exc.OperationalError as exc:
            if not _is_busy(exc):
                raise
            self._conn.rollback()
        return await self._files.on_thread(
            lambda conn: BufferedResult(conn.execute(statement, parameters))
        )


class ThreadConnection:
    """The same, each statement run on the thread's connection (reads of many rows)."""

    __slots__ = ("_files",)

    def __init__(self, files: SQLiteFiles) -> None:
        self._files = files

    async def execute(self, statement: Any, parameters: Any = None) -> BufferedResult:
        return await self._files.on_thread(
            lambda conn: BufferedResult(conn.execute(statement, parameters))
        )


class SQLiteFiles:
    """The connections of one SQLite file: writer and reader used in place, and one thread
    (with a connection of its own) for lock waits, checkpoints and long reads."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.memory = path == ":memory:"
        self.busy_ms = int(busy_timeout * 1000)
        url = URL.create("sqlite+pysqlite", database=path)
        # `:memory:` is one database per connection: there, one connection does everything.
        pool = StaticPool if self.memory else NullPool
        self.engine: Engine = create_engine(
            url, poolclass=pool, connect_args={"check_same_thread": False}
        )

        @event.listens_for(self.engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # Opening a file another process holds (its last connection checkpointing as
            # it closes) waits, on the thread (`_open`); later waits happen there too.
            cursor.execute(f"PRAGMA busy_timeout = {self.busy_ms}")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA wal_autocheckpoint = 0")  # ours run on the thread
            cursor.execute("PRAGMA busy_timeout = 0")
            cursor.close()

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flock-sqlite")
        self._writer: Connection | None = None
        self._reader: Connection | None = None
        self._threads_own: Connection | None = None
        self._commits = 0
        self._checkpoint: Future[None] | None = None
        self._waiting: asyncio.Future[None] | None = None  # a lock wait on the thread
        self._active = False  # a transaction uses the writer
        self._compiled: dict[tuple[Any, tuple[str, ...]], _Compiled | None] = {}

    # -- statements straight on sqlite3 ----------------------------------------------------

    def compiled(self, statement: Any, params: dict[str, Any]) -> _Compiled | None:
        key = (statement, tuple(params))
        try:
            return self._compiled[key]
        except KeyError:
            pass
        except TypeError:  # not hashable: a plain string
            return _SLOW
        made = self._compile(statement, params)
        if len(self._compiled) >= _MAX_COMPILED:
            self._compiled.clear()
        self._compiled[key] = made
        return made

    def _compile(self, statement: Any, params: dict[str, Any]) -> _Compiled | None:
        if not hasattr(statement, "compile"):
            return _SLOW
        dialect = self.engine.dialect
        keys = sorted(params) if getattr(statement, "is_dml", False) else None
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        if compiled._bind_processors:
            return _SLOW  # values SQLAlchemy must convert
        names = list(compiled.positiontup or ())
        fixed = {}
        expanding = set()
        for name in names:
            bind = compiled.binds.get(name)
            if bind is None:
                return _SLOW
            if bind.expanding:
                if f"__[POSTCOMPILE_{name}]" not in compiled.string or name not in params:
                    return _SLOW
                expanding.add(name)
                continue
            if name not in params:
                if bind.callable is not None or (bind.required and bind.value is None):
                    return _SLOW
                fixed[name] = bind.value
        if "POSTCOMPILE" in compiled.string and not expanding:
            return _SLOW
        return _Compiled(compiled.string, names, fixed, frozenset(expanding))

    def raw(self, conn: Connection, sql: str, values: tuple[Any, ...]) -> FastResult:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql, values)
            description = cursor.description
            rows = list(cursor.fetchall()) if description else []
            rowcount = cursor.rowcount
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc
        finally:
            cursor.close()
        keys = tuple(d[0] for d in description) if description else ()
        return FastResult.of(rowcount, keys, rows)

    def raw_many(self, conn: Connection, sql: str, values: list[tuple[Any, ...]]) -> FastResult:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.executemany(sql, values)
            rowcount = cursor.rowcount
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc
        finally:
            cursor.close()
        return FastResult.empty(rowcount)

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> Connection:
        return self.engine.connect()

    def writer(self) -> Connection:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    def reader(self) -> Connection:
        if self.memory:
            return self.writer()
        if self._reader is None:
            self._reader = self._connect()
        return self._reader

    def _own(self) -> Connection:
        if self.memory:
            return self.writer()
        if self._threads_own is None:
            self._threads_own = self._connect()
            self._threads_own.exec_driver_sql(f"PRAGMA busy_timeout = {self.busy_ms}")
        return self._threads_own

    # -- the thread ---------------------------------------------------------------------------

    def _on_own(self, fn: Callable[[Connection], T]) -> T:
        conn = self._own()
        try:
            return fn(conn)
        finally:
            if not self.memory:
                conn.rollback()  # ends SQLAlchemy's transaction; pysqlite began none to read

    async def on_thread(self, fn: Callable[[Connection], T]) -> T:
        """`fn` on the thread's own connection (which waits for locks up to the timeout)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._on_own, fn)

    def _begin_waiting(self) -> None:
        """On the thread: take the write lock, waiting for it up to the busy timeout."""
        conn = self.writer()
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {self.busy_ms}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            conn.exec_driver_sql("PRAGMA busy_timeout = 0")

    def _checkpoint_now(self) -> None:
        try:
            self._own().exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # the next one tries again
            logger.debug("SQLite checkpoint failed: %s", exc)

    async def _open(self, connection: Callable[[], Connection]) -> Connection:
        """The writer or reader, opened on the thread the first time: its configuration
        may wait for a file another process holds, which must not stall the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, connection)

    # -- what the store uses ------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InlineConnection]:
        """One write transaction: the write lock, the statements, one commit (or rollback).
        The caller makes sure one transaction at a time uses the writer."""
        if self._waiting is not None and not self._waiting.done():
            await asyncio.wait([self._waiting])  # an abandoned wait still runs: let it end
        self._drop_stale()
        conn = self._writer or await self._open(self.writer)
        self._active = True
        try:
            try:
                self.raw(conn, "BEGIN IMMEDIATE", ())
            except sa_exc.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                conn.rollback()
                await self._wait_for_lock()
            try:
                yield InlineConnection(conn, self)
            except BaseException:
                _rollback_or_drop(self, conn)
                raise
            try:
                dbapi = conn.connection.dbapi_connection
                assert dbapi is not None
                dbapi.commit()
                if conn.in_transaction():  # a statement took SQLAlchemy's path
                    conn.commit()
            except BaseException:
                _rollback_or_drop(self, conn)
                raise
        finally:
            self._active = False
        self._commits += 1
        due = self._commits % CHECKPOINT_EVERY == 0 and not self.memory
        if due and (self._checkpoint is None or self._checkpoint.done()):
            self._checkpoint = self._executor.submit(self._checkpoint_now)

    async def _wait_for_lock(self) -> None:
        """Another process holds the write lock: wait for it on the thread. If the caller is
        cancelled meanwhile, the lock the thread may still get is given back."""
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(self._executor, self._begin_waiting)
        self._waiting = waiting
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            waiting.add_done_callback(lambda _: self._drop_stale())
            raise

    def _drop_stale(self) -> None:
        """Roll back a transaction nobody uses (a lock an abandoned wait took)."""
        conn = self._writer
        if conn is None or self._active:
            return
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None and dbapi.in_transaction:
            _rollback_or_drop(self, conn)

    @asynccontextmanager
    async def reading(self, *, many_rows: bool = False) -> AsyncIterator[Any]:
        if many_rows and not self.memory:
            yield ThreadConnection(self)
            return
        conn = (self._writer if self.memory else self._reader) or await self._open(self.reader)
        try:
            yield ReadConnection(conn, self)
        finally:
            if not self.memory:
                conn.rollback()

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        """`fn` on the writer, on the thread (table creation: it may wait for the lock)."""

        def run() -> T:
            conn = self.writer()
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {self.busy_ms}")
            try:
                return fn(conn)
            finally:
                conn.exec_driver_sql("PRAGMA busy_timeout = 0")

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def ping(self) -> None:
        """A `SELECT 1` on the thread: opening the thread's connection, the first time, waits
        (up to the busy timeout, off the loop) for a file another process holds for a
        moment: its last connection checkpointing as it closes, say, which shuts out even
        a new reader's configuration."""
        if self.memory:
            conn = self.writer()
            try:
                conn.exec_driver_sql("SELECT 1")
            finally:
                conn.rollback()
            return
        await self.on_thread(lambda own: own.exec_driver_sql("SELECT 1"))

    async def close(self) -> None:
        def close_all() -> None:
            for conn in (self._threads_own, self._reader, self._writer):
                if conn is not None:
                    conn.close()
            self._threads_own = self._reader = self._writer = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close_all)
        self._executor.shutdown(wait=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flock-sqlite")
        self.engine.dispose()


def _rollback_or_drop(files: SQLiteFiles, conn: Connection) -> None:
    try:
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None:
            dbapi.rollback()  # the transaction began on sqlite3 directly
        if conn.in_transaction():
            conn.rollback()
    except Exception:  # a broken connection: the next transaction opens a new one
        conn.invalidate()
        conn.close()
        files._writer = None


__all__ = ["CHECKPOINT_EVERY", "SQLiteFiles"]
