"""Waiting for correlations: in-process events, the store's record as the only truth.

A waiter re-reads the store's progress of its correlation whenever it may have changed:
this process's own writes and, on PostgreSQL, other processes' notifications wake it (no
polling). Where a store has no notifications (SQLite files shared by several processes) it
also re-reads with a backoff up to 250 ms; with them, every 2 s as a fallback only.

A waiter whose correlation has a run executing in this process skips its first read, and
its early polls: that run is pending, and its end wakes the waiter (a sync call right after
its publish, whose first run was started by the publish itself, reads the store once, when
it is done). A sync answer waits with `wait_status`, which reads the correlation's whole
record instead of its progress: the record read last is what the answer reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum

from flock.core.store.protocol import BlackboardStore, CorrelationStatus, Progress

NOTIFIED_FALLBACK = 2.0  # seconds between re-reads when notifications wake waiters


class WaitOutcome(StrEnum):
    IDLE = "idle"  # no run of it is queued or running
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"  # this process stopped executing runs before it finished

    @property
    def completed(self) -> bool:
        return self is WaitOutcome.IDLE


class CorrelationWatch:
    """Wakes the waiters of a correlation (and those of everything) when it may have changed."""

    def __init__(self, *, poll_seconds: float | None) -> None:
        self.poll_seconds = poll_seconds
        # True once the store delivers other processes' changes: polling is then only the
        # fallback for a lost notification connection, at a long interval.
        self.notified = False
        self._waiters: dict[str | None, set[asyncio.Event]] = {}
        self.closed = False
        # True while a run of the correlation executes in this process and its end is still
        # to come (that end wakes the correlation's waiters, or leaves it a pending run).
        self.running_here: Callable[[str], bool] | None = None

    def changed(self, correlation_id: str) -> None:
        for key in (correlation_id, None):
            for event in self._waiters.get(key, ()):
                event.set()

    def changed_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    def close(self) -> None:
        """This process stops executing runs: every waiter answers now."""
        self.closed = True
        self.changed_all()

    def reopen(self) -> None:
        self.closed = False

    async def wait(
        self, store: BlackboardStore, correlation_id: str | None, timeout: float | None
    ) -> WaitOutcome:
        async def read(woken: bool) -> Progress:
            return await store.progress(correlation_id)

        return await self._wait(read, correlation_id, timeout)

    async def wait_status(
        self, store: BlackboardStore, correlation_id: str, timeout: float | None
    ) -> tuple[WaitOutcome, CorrelationStatus | None]:
        """The same wait, returning the correlation's record (None: unknown) as read last,
        which is current when the outcome is IDLE or CANCELLED. A look after a wake-up
        (which most likely finds it done) reads the record itself; a look after a poll's
        timeout reads the lighter progress, and the record only once that says done."""
        last: CorrelationStatus | None = None

        async def read(woken: bool) -> Progress:
            nonlocal last
            if not woken:
                progress = await store.progress(correlation_id)
                if progress.pending and not progress.cancelled:
                    return progress
            last = await store.get_correlation(correlation_id)
            if last is None:
                return Progress(0, exists=False)
            return last.progress

        outcome = await self._wait(read, correlation_id, timeout)
        return outcome, last

    def _executing_here(self, correlation_id: str | None) -> bool:
        running_here = self.running_here
        return (
            correlation_id is not None
            and running_here is not None
            and not self.closed
            and running_here(correlation_id)
        )

    async def _wait(
        self,
        read: Callable[[bool], Awaitable[Progress]],
        correlation_id: str | None,
        timeout: float | None,
    ) -> WaitOutcome:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        event = asyncio.Event()
        waiters = self._waiters.setdefault(correlation_id, set())
        waiters.add(event)
        delay = 0.005
        skip_read = self._executing_here(correlation_id)
        woken = True  # the first look, or one after a wake-up (not a poll's timeout)
        try:
            while True:
                event.clear()
                if skip_read:
                    skip_read = False  # pending, for sure: one of its runs executes here
                else:
                    progress = await read(woken)
                    if progress.cancelled:
                        return WaitOutcome.CANCELLED
                    if not progress.pending:
                        return WaitOutcome.IDLE
                if self.closed:
                    return WaitOutcome.SHUTDOWN
                wait = None if deadline is None else deadline - loop.time()
                if wait is not None and wait <= 0:
                    return WaitOutcome.TIMEOUT
                if self.notified:
                    wait = NOTIFIED_FALLBACK if wait is None else min(wait, NOTIFIED_FALLBACK)
                elif self.poll_seconds is not None:
                    wait = delay if wait is None else min(wait, delay)
                    delay = min(delay * 2, self.poll_seconds)
                try:
                    async with asyncio.timeout(wait):
                        await event.wait()
                    woken = True
                except TimeoutError:
                    woken = False
                    # The early polls (the backoff still short) skip their look while a
                    # run of it executes here: that run's end wakes this waiter. Later
                    # ones look, for what only the store tells (another process's cancel).
                    skip_read = (
                        self.poll_seconds is not None
                        and delay < self.poll_seconds
                        and self._executing_here(correlation_id)
                    )
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(correlation_id, None)


__all__ = ["CorrelationWatch", "WaitOutcome"]
