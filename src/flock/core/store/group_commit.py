"""Group commit (SQLite): the writes that are ready together share one transaction.

A SQLite file has one writer at a time, and most of a small write's cost is its commit
(the changed pages appended to the WAL, about 0.1 ms here), not its statements. So a write
(a publish, a run's commit) does not open a transaction of its own: it joins the group
being gathered: the first writer of a group starts the task that writes it, which runs
after the event loop's other ready callbacks, so every other writer that is ready joins.
The group's writes then run in order, in one transaction, each on what the ones before it
wrote (as if they had taken turns), and every writer learns its result only once the
group is committed: what a caller was answered is on disk as before, and a crash before
the commit loses the whole group, none of which was answered yet.

A write that raises makes the group roll back; its members are then written one by one,
each in its own transaction, so one bad write cannot fail the others. When the database
cannot be used at all (`StoreUnavailableError`), every member gets that error at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from flock.core.store.protocol import StoreUnavailableError

T = TypeVar("T")
Body = Callable[[Any], Awaitable[Any]]
# At most this many writes share a transaction (a bound on how long one holds the lock).
MAX_GROUP = 64


class GroupCommit:
    """Gathers concurrent writes into shared transactions (see the module docstring)."""

    def __init__(self, transaction: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._transaction = transaction
        self._waiting: list[tuple[Body, asyncio.Future[Any]]] = []
        self._leader: asyncio.Task[None] | None = None  # writes the groups, one at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self.groups = 0  # transactions committed (a figure for tests and benchmarks)
        self.writes = 0  # writes they carried

    async def run(self, body: Callable[[Any], Awaitable[T]]) -> T:
        """Run `body(conn)` in a transaction shared with the writes ready at the same time;
        its result once that transaction is committed. The group is written by a task of
        its own: a writer that is cancelled stops waiting (its write is dropped if the
        group has not begun, else it lands or not with the group), and never fails the
        other writers of its group."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a store used again under a new event loop
            self._loop, self._waiting, self._leader = loop, [], None
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((body, future))
        if self._leader is None:
            self._leader = loop.create_task(self._lead())
        return await future

    async def _lead(self) -> None:
        try:
            # This task starts after the loop's other ready callbacks: the writers that are
            # ready by then have joined. Those that join while a group is written, next.
            while self._waiting:
                group = self._waiting[:MAX_GROUP]
                del self._waiting[:MAX_GROUP]
                await self._commit([(b, f) for b, f in group if not f.done()])
        finally:
            self._leader = None
            for _, future in self._waiting:  # only if this task itself was cancelled
                future.cancel()
            self._waiting = []

    async def _commit(self, group: list[tuple[Body, asyncio.Future[Any]]]) -> None:
        if not group:
            return
        try:
            async with self._transaction() as conn:
                results = [await body(conn) for body, _ in group]
        except StoreUnavailableError as exc:
            for _, future in group:
                _fail(future, exc)
            return
        except BaseException as exc:
            if len(group) == 1:
                _fail(group[0][1], exc)
                if not isinstance(exc, Exception):
                    raise
                return
            if not isinstance(exc, Exception):
                for _, future in group:
                    _fail(future, exc)
                raise
            for body, future in group:  # one of them failed: each on its own
                await self._commit([(body, future)])
            return
        self.groups += 1
        self.writes += len(group)
        for (_, future), value in zip(group, results, strict=True):
            if not future.done():
                future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


__all__ = ["MAX_GROUP", "GroupCommit"]
