"""PostgreSQL statements straight on asyncpg: compiled once, run with positional values.

SQLAlchemy's asyncpg adapter costs several times the database's own time per statement
(execution context, greenlet bridge, adapter cursor, result objects). The store's
statements are the same SQLAlchemy constructs; here each is compiled once for the asyncpg
dialect (per statement, parameter names and schema) and run with `fetch`/`execute` on the
pooled connection's asyncpg connection, whose statement cache prepares it once. A write
transaction is asyncpg's own; SQLAlchemy only lends the pooled connection, and a
connection that failed mid-statement is invalidated, so the pool opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flock.core.store.sql_backends import Watchdog, is_unavailable
from flock.core.store.sql_pg_write import FALLBACK
from flock.core.store.sql_results import FastResult

_MAX_COMPILED = 512


class _Plan:
    """How one compiled statement's positional values are made from its parameters,
    without SQLAlchemy's per-call expansion (for statements with no expanding list)."""

    __slots__ = ("fixed", "names", "processors", "sql")

    def __init__(
        self, sql: str, names: list[str], processors: dict[str, Any], fixed: dict[str, Any]
    ):
        self.sql = sql
        self.names = names
        self.processors = processors
        self.fixed = fixed

    def values(self, params: dict[str, Any]) -> list[Any]:
        processors, fixed = self.processors, self.fixed
        out = []
        for name in self.names:
            value = params[name] if name in params else fixed[name]
            processor = processors.get(name)
            out.append(value if processor is None else processor(value))
        return out


class PgStatements:
    """Compiled statements for one dialect and schema."""

    def __init__(self, dialect: Dialect, schema: str | None) -> None:
        self._dialect = dialect
        self._schema = schema
        self._compiled: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._plans: dict[tuple[Any, tuple[str, ...]], _Plan | None] = {}

    def compiled(self, statement: Any, params: dict[str, Any]) -> Any:
        key = (statement, tuple(params))
        made = self._compiled.get(key)
        if made is None:
            keys = sorted(params) if getattr(statement, "is_dml", False) else None
            options: dict[str, Any] = {}
            if self._schema is not None:
                options = {
                    "schema_translate_map": {None: self._schema},
                    "render_schema_translate": True,
                }
            made = statement.compile(dialect=self._dialect, column_keys=keys, **options)
            if len(self._compiled) >= _MAX_COMPILED:
                self._compiled.clear()
            self._compiled[key] = made
        return made

    def bound(self, statement: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """The SQL (expanding lists rendered) and its positional values, converted."""
        key = (statement, tuple(params))
        try:
            plan = self._plans[key]
        except KeyError:
            sql, values = self._expanded(statement, params)
            plan = self._plan(statement, params)
            # Checked once against SQLAlchemy's own expansion: a statement the plan does
            # not reproduce exactly always takes SQLAlchemy's path.
            if plan is not None and (plan.sql != sql or plan.values(params) != values):
                plan = None
            if len(self._plans) >= _MAX_COMPILED:
                self._plans.clear()
            self._plans[key] = plan
            return sql, values
        if plan is None:
            return self._expanded(statement, params)
        return plan.sql, plan.values(params)

    def _expanded(self, statement: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
        state = self.compiled(statement, params).construct_expanded_state(params)
        processors = state.processors
        names = state.positiontup or ()
        values = state.parameters
        if processors:
            return state.statement, [
                processors[n](values[n]) if n in processors else values[n] for n in names
            ]
        return state.statement, [values[n] for n in names]

    def _plan(self, statement: Any, params: dict[str, Any]) -> _Plan | None:
        compiled = self.compiled(statement, params)
        if "POSTCOMPILE" in compiled.string or getattr(compiled, "escaped_bind_names", None):
            return None
        names = list(compiled.positiontup or ())
        fixed: dict[str, Any] = {}
        for name in names:
            if name in params:
                continue
            bind = compiled.binds.get(name)
            if bind is None or bind.callable is not None or bind.required:
                return None
            fixed[name] = bind.value
        processors = dict(compiled._bind_processors)
        return _Plan(compiled.string, names, processors, fixed)


def _returns_rows(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head == "SELECT" or head.startswith("WITH") or "RETURNING" in sql


# Said inside a write transaction: its commit need not wait for the WAL to reach the disk.
# On this connection it costs no round trip of its own: it is sent with the COMMIT.
NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit TO off")
_COMMIT_NO_FLUSH = "SET LOCAL synchronous_commit TO off; COMMIT"


class PgConnection:
    """The part of `AsyncConnection` the SQL store uses, on the asyncpg connection."""

    __slots__ = ("_driver", "_statements", "no_flush")

    def __init__(self, driver: Any, statements: PgStatements) -> None:
        self._driver = driver
        self._statements = statements
        self.no_flush = False  # NO_FLUSH_WAIT was said: the COMMIT carries it

    async def execute(self, statement: Any, parameters: Any = None) -> FastResult:
        if statement is NO_FLUSH_WAIT:
            self.no_flush = True
            return FastResult.empty()
        if isinstance(parameters, list):
            if len(parameters) == 1:
                return await self._one(statement, parameters[0])
            return await self._many(statement, parameters)
        return await self._one(statement, parameters or {})

    async def _one(self, statement: Any, params: dict[str, Any]) -> FastResult:
        sql, values = self._statements.bound(statement, params)
        if _returns_rows(sql):
            records = await self._driver.fetch(sql, *values)
            if not records:
                return FastResult.empty()
            keys = tuple(records[0].keys())
            return FastResult.of(len(records), keys, [tuple(r) for r in records])
        status = await self._driver.execute(sql, *values)
        count = status.rsplit(" ", 1)[-1]
        return FastResult.empty(int(count) if count.isdigit() else -1)

    async def _many(self, statement: Any, rows: list[dict[str, Any]]) -> FastResult:
        if not rows:
            return FastResult.empty()
        sql, _ = self._statements.bound(statement, rows[0])
        if (
            _returns_rows(sql)
            or "POSTCOMPILE" in self._statements.compiled(statement, rows[0]).string
        ):
            # rare: fan-outs
            return FastResult.merged([await self._one(statement, row) for row in rows])
        await self._driver.executemany(sql, [self._statements.bound(statement, r)[1] for r in rows])
        return FastResult.empty(-1)


class HeldConnections:
    """Pooled connections a store keeps checked out between its operations, up to `size`.

    Checking a connection out of SQLAlchemy's async pool and back in costs two greenlet
    switches and the pool's bookkeeping, at every operation; a held connection is taken
    from a list. Connections are held by the event loop that opened them; one that failed
    mid-operation is invalidated and never held again.
    """

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        self.engine = engine
        self._size = size
        self._idle: list[tuple[AsyncConnection, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def take(self) -> tuple[AsyncConnection, Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another loop's connections cannot serve this one
            self._loop, self._idle = loop, []
        while self._idle:
            conn, driver = self._idle.pop()
            if not driver.is_closed():
                return conn, driver
            await conn.invalidate()
        conn = await self.engine.connect()
        fairy = await conn.get_raw_connection()
        return conn, fairy.driver_connection

    async def give_back(self, conn: AsyncConnection, driver: Any) -> None:
        if conn.invalidated or driver.is_closed() or driver.is_in_transaction():
            await conn.close()
        elif len(self._idle) < self._size and asyncio.get_running_loop() is self._loop:
            self._idle.append((conn, driver))
        else:
            await conn.close()

    async def release_all(self) -> None:
        """Give every held connection back to the pool (closing the store, a disconnect)."""
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            with contextlib.suppress(Exception):
                await conn.close()


async def _invalidate(
    held: HeldConnections, conn: AsyncConnection, driver: Any, exc: BaseException
) -> None:
    """Never reuse a connection whose state is unknown. If the database was out of reach
    (the server restarted, or terminated the connection), its pool-mates most likely were
    too: start a new pool, as SQLAlchemy does when it sees a disconnect."""
    await conn.invalidate()
    if driver.is_closed() or is_unavailable(exc):
        await held.release_all()
        await held.engine.dispose(close=False)


@asynccontextmanager
async def connection(
    held: HeldConnections,
    statements: PgStatements,
    *,
    transaction: bool,
    timeout: float | None = None,
) -> AsyncIterator[AsyncConnection]:
    """A pooled connection's asyncpg connection, in a transaction or not, for one operation
    done within `timeout` seconds (else `TimeoutError`): at the deadline the connection is
    terminated, which fails whatever waits on it at once (a stalled server answers neither
    a statement nor its cancellation), and it is dropped from the pool."""
    loop = asyncio.get_running_loop()
    conn, driver = await held.take()
    try:
        proxy: Any = PgConnection(driver, statements)
        watchdog = Watchdog(driver)
        if timeout is not None:
            watchdog.handle = loop.call_later(timeout, watchdog.fire)
        try:
            async with _operation(held, conn, proxy, watchdog, transaction):
                yield proxy
        finally:
            if watchdog.handle is not None:
                watchdog.handle.cancel()
    finally:
        await held.give_back(conn, driver)


@asynccontextmanager
async def _operation(
    held: HeldConnections,
    conn: AsyncConnection,
    proxy: PgConnection,
    watchdog: Watchdog,
    transaction: bool,
) -> AsyncIterator[None]:
    driver = proxy._driver
    try:
        if not transaction:
            try:
                yield
            except BaseException as exc:
                # A failed read is rare: start afresh. (`flock_write` handing a write to the
                # general path leaves the connection as it was: the statement just failed.)
                if getattr(exc, "sqlstate", None) != FALLBACK:
                    await _invalidate(held, conn, driver, exc)
                raise
            return
        # BEGIN and COMMIT as plain statements (not asyncpg's Transaction): the COMMIT can
        # then carry `SET LOCAL synchronous_commit` in the same round trip.
        try:
            await driver.execute("BEGIN")  # raises at once on a connection closed under us
        except BaseException as exc:
            await _invalidate(held, conn, driver, exc)
            raise
        try:
            yield
        except BaseException:
            try:
                await driver.execute("ROLLBACK")  # fails at once on a terminated connection
            except BaseException as exc:
                await _invalidate(held, conn, driver, exc)
            raise
        try:
            await driver.execute(_COMMIT_NO_FLUSH if proxy.no_flush else "COMMIT")
        except BaseException as exc:
            await _invalidate(held, conn, driver, exc)
            raise
    except Exception as exc:
        if watchdog.fired:
            raise TimeoutError() from exc
        raise


__all__ = ["NO_FLUSH_WAIT", "HeldConnections", "PgConnection", "PgStatements", "connection"]
