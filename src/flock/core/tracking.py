"""The scheduler's own record of queued and running work, per correlation."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flock.core.artifacts import AgentError


@dataclass(slots=True)
class CorrelationStatus:
    """A correlation as `GET /correlations/{id}` shows it."""

    correlation_id: str
    state: str
    pending_runs: int
    artifact_count: int
    errors: list[AgentError]
    started_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "state": self.state,
            "pending_runs": self.pending_runs,
            "artifact_count": self.artifact_count,
            "errors": [e.to_dict() for e in self.errors],
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "updated_at": self.updated_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(slots=True, eq=False)
class Correlation:
    """Live counters for one correlation. `pending` counts queued + running agent runs;
    `settling` counts ended runs whose bookkeeping (the idle state write) is not done yet.
    """

    correlation_id: str
    started_at: datetime
    updated_at: datetime
    pending: int = 0
    settling: int = 0
    runs: int = 0
    artifact_count: int = 0
    limit_reported: bool = False
    errors: list[AgentError] = field(default_factory=list)
    idle_event: asyncio.Event | None = None

    @property
    def busy(self) -> bool:
        """Waiters still wait: a run is queued, running, or being recorded."""
        return bool(self.pending or self.settling)

    def status(self) -> CorrelationStatus:
        return CorrelationStatus(
            self.correlation_id,
            "running" if self.pending else "idle",
            self.pending,
            self.artifact_count,
            list(self.errors),
            self.started_at,
            self.updated_at,
        )


class CorrelationTracker:
    """Tracks every correlation with work in flight, plus the most recent idle ones.

    Busy correlations are never evicted; idle ones are kept (LRU, `keep_idle` of them) so
    status reads stay cheap, and fall back to the store once evicted.
    """

    def __init__(self, keep_idle: int = 10_000) -> None:
        self._keep_idle = keep_idle
        self._slack = max(keep_idle // 10, 1)  # evict in batches: amortised O(1) per touch
        self._items: OrderedDict[str, Correlation] = OrderedDict()
        self.total_pending = 0
        self._total_settling = 0
        self._idle_event: asyncio.Event | None = None
        self._last_seq = 0

    def get(self, correlation_id: str) -> Correlation | None:
        return self._items.get(correlation_id)

    def touch(self, correlation_id: str, at: datetime) -> Correlation:
        corr = self._items.get(correlation_id)
        if corr is None:
            corr = Correlation(correlation_id, at, at)
            self._items[correlation_id] = corr
            if len(self._items) > self._keep_idle + self._slack:
                self._evict()
        else:
            self._items.move_to_end(correlation_id)
            corr.updated_at = max(corr.updated_at, at)  # artifacts may carry older timestamps
        return corr

    def _evict(self) -> None:
        """Drop the least recently touched idle correlations down to `keep_idle`."""
        excess = len(self._items) - self._keep_idle
        doomed = []
        for cid, corr in self._items.items():
            if excess <= 0:
                break
            if not corr.busy:
                doomed.append(cid)
                excess -= 1
        for cid in doomed:
            del self._items[cid]

    def next_seq(self) -> int:
        """A sequence for state writes that grows across calls and (by the clock) processes."""
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def started(self, corr: Correlation, n: int) -> bool:
        """Count n queued runs; True if the correlation went from idle to running."""
        was_idle = corr.pending == 0
        corr.pending += n
        corr.runs += n
        self.total_pending += n
        return was_idle

    def finished(self, corr: Correlation) -> bool:
        """One run ended; True if the correlation is now idle.

        Its waiters are not woken yet: the caller records the idle state first, then calls
        `settled`, so a waiter never returns before the store says idle.
        """
        corr.pending -= 1
        self.total_pending -= 1
        corr.settling += 1
        self._total_settling += 1
        corr.updated_at = datetime.now(UTC)
        return corr.pending == 0

    def settled(self, corr: Correlation) -> None:
        """The ended run is fully recorded: wake whoever waits for it or for everything."""
        corr.settling -= 1
        self._total_settling -= 1
        if not (self.total_pending or self._total_settling) and self._idle_event is not None:
            self._idle_event.set()
            self._idle_event = None
        if not corr.busy and corr.idle_event is not None:
            corr.idle_event.set()
            corr.idle_event = None

    async def wait(self, correlation_id: str | None) -> None:
        """Return once the correlation (or, with None, everything) has no queued or running runs."""
        if correlation_id is None:
            while self.total_pending or self._total_settling:
                if self._idle_event is None:
                    self._idle_event = asyncio.Event()
                await self._idle_event.wait()
            return
        corr = self._items.get(correlation_id)
        while corr is not None and corr.busy:
            if corr.idle_event is None:
                corr.idle_event = asyncio.Event()
            await corr.idle_event.wait()


__all__ = ["Correlation", "CorrelationStatus", "CorrelationTracker"]
