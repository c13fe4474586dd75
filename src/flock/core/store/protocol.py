"""The blackboard store protocol every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
from flock.core.groups import GroupFlush, GroupPart
from flock.core.runs import Run, RunState, Usage
from flock.core.visibility import Identity


class StoreUnavailableError(RuntimeError):
    """The store's backend could not be reached; the operation may be retried."""


class RunQueueFullError(StoreUnavailableError):
    """More runs are queued than `FLOCK_MAX_QUEUED_RUNS`: nothing was stored; retry later."""


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """What `query_artifacts` and `summarize_artifacts` select. Empty fields match everything.

    `visibility` selects by rule kind ("Public", "Private", ...); `visible_to` keeps only the
    artifacts that identity may see.
    """

    type_names: frozenset[str] | None = None
    produced_by: frozenset[str] | None = None
    correlation_id: str | None = None
    tags: frozenset[str] | None = None
    visibility: frozenset[str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    visible_to: Identity | None = None

    def __post_init__(self) -> None:
        for name in ("type_names", "produced_by", "tags", "visibility"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, frozenset):
                if isinstance(value, str):
                    value = (value,)
                object.__setattr__(self, name, frozenset(value))

    def matches(self, artifact: Artifact) -> bool:
        """The filter as a predicate (the memory store's query, the SQL stores' post-filter)."""
        if self.correlation_id is not None and artifact.correlation_id != self.correlation_id:
            return False
        if self.type_names and artifact.type not in self.type_names:
            return False
        if self.produced_by and artifact.produced_by not in self.produced_by:
            return False
        if self.tags and not (self.tags & artifact.tags):
            return False
        if self.visibility and artifact.visibility.kind not in self.visibility:
            return False
        if self.start is not None and artifact.created_at < self.start:
            return False
        if self.end is not None and artifact.created_at > self.end:
            return False
        return self.visible_to is None or artifact.visibility.allows(self.visible_to)


CorrelationState = Literal["running", "idle", "cancelled"]


@dataclass(slots=True)
class CorrelationRecord:
    """A correlation as the store derives it from its runs (the same on every replica).

    `state` is `cancelled` once cancelled, else `running` while any run is queued or
    running (a pending retry included) or any of its artifacts waits in an open group
    (`waiting_artifacts`), else `idle`. `errors` holds the runs that ended `dead` and
    correlation-level errors, oldest first.
    """

    correlation_id: str
    state: CorrelationState
    started_at: datetime
    updated_at: datetime
    artifact_count: int = 0
    errors: list[AgentError] = field(default_factory=list)
    pending_runs: int = 0
    waiting_artifacts: int = 0

    @property
    def progress(self) -> Progress:
        """What `BlackboardStore.progress` tells of this correlation, from the record."""
        pending = self.pending_runs + self.waiting_artifacts
        return Progress(pending, self.state == "cancelled", runs=self.pending_runs)

    def to_dict(self) -> dict[str, Any]:
        """The correlation as `GET /correlations/{id}` shows it."""
        return {
            "correlation_id": self.correlation_id,
            "state": self.state,
            "pending_runs": self.pending_runs,
            "waiting_artifacts": self.waiting_artifacts,
            "artifact_count": self.artifact_count,
            "errors": [e.to_dict() for e in self.errors],
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "updated_at": self.updated_at.isoformat().replace("+00:00", "Z"),
        }


CorrelationStatus = CorrelationRecord


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a correlation (or, for None, the whole store) is: what waiters check.

    `pending` counts its queued and running runs and its artifacts waiting in open groups
    (for the whole store: the pending runs, and the waiting artifacts a deadline will
    settle, of joins and batches with a timeout).
    """

    pending: int
    cancelled: bool = False
    exists: bool = True
    runs: int | None = None  # of `pending`, the queued and running runs (None: all of it)

    @property
    def pending_runs(self) -> int:
        return self.pending if self.runs is None else self.runs


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run a worker claimed under a lease, with its input artifacts in order.

    `recovered` says the run was taken over from a worker whose lease ran out.
    """

    run: Run
    inputs: tuple[Artifact, ...]
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """What `complete_run` stored: the ids of the runs it created (the triggered runs not
    stored already, within the correlation's bound, and the runs of groups it completed).

    A triggered run handed in already claimed (state `running`, under the committing
    worker's lease: see `Worker`) is the committing worker's to execute only if its id is
    here; one stored earlier belongs to whoever claimed it."""

    created: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What `query_runs` selects; empty fields match everything."""

    correlation_id: str | None = None
    agent: str | None = None
    state: RunState | None = None
    visible_to: Identity | None = None


class InvalidRunStateError(ValueError):
    """The run is not in a state that allows the operation (e.g. retrying a queued run)."""


@runtime_checkable
class BlackboardStore(Protocol):
    """Artifacts, runs, consumption records and correlations. Every method is async-safe.

    The run methods that change a claimed run (`renew_lease`, `complete_run`, `fail_run`,
    `release_run`) are *fenced*: they take the `fence` the claim returned and do nothing,
    returning False, once the run was claimed again, cancelled or finished meanwhile.
    """

    async def publish(
        self,
        artifact: Artifact,
        runs: Sequence[Run] = (),
        *,
        parts: Sequence[GroupPart] = (),
        max_runs: int | None = None,
        created: set[str] | None = None,
    ) -> Artifact:
        """Store the artifact and create the runs it triggers, together (one transaction).
        The ids of the runs it created are added to `created` when given; a run may come
        claimed already (by the publishing process's worker): it is stored as it is.

        `parts` join their open groups; a group they complete becomes a run at once
        (`flock.core.groups.assemble`), exactly once even when two writers complete it at
        the same moment. If an artifact with its id is stored already, return that one and
        create nothing. At most `max_runs` runs are created per correlation in all; past it
        one correlation-level error is recorded. Nothing is created in a cancelled
        correlation.
        """

    async def put(
        self,
        artifact: Artifact,
        runs: Sequence[Run] = (),
        *,
        parts: Sequence[GroupPart] = (),
        max_runs: int | None = None,
    ) -> Artifact:
        """Alias of `publish`."""

    async def get(self, artifact_id: str) -> Artifact | None: ...

    async def query_artifacts(
        self,
        filters: FilterConfig | None = None,
        limit: int = 50,
        offset: int = 0,
        embed_meta: bool = False,
    ) -> tuple[list[Artifact] | list[ArtifactEnvelope], int]:
        """Matching artifacts ordered by (created_at, id), and the total count of matches."""

    async def summarize_artifacts(self, filters: FilterConfig | None = None) -> dict[str, Any]:
        """`{total, by_type: {name: n}, by_producer: {name: n}, by_visibility: {kind: n}}`."""

    async def get_consumptions(self, artifact_id: str) -> list[ConsumptionRecord]: ...

    async def record_error(self, error: AgentError) -> None:
        """Record a correlation-level error (one that belongs to no run)."""

    async def get_correlation(self, correlation_id: str) -> CorrelationRecord | None: ...

    async def progress(self, correlation_id: str | None = None) -> Progress:
        """Pending runs of the correlation (of the whole store for None)."""

    # -- runs -------------------------------------------------------------------------------

    async def claim_runs(
        self, worker: str, limit: int, lease_seconds: float, caps: Mapping[str, int]
    ) -> list[ClaimedRun]:
        """Claim up to `limit` runs that are due: queued ones whose `next_attempt_at` has
        come, and running ones whose lease ran out. Each claim starts an attempt under a
        lease of `lease_seconds` and grows the run's fence. `caps` bounds how many runs of
        an agent may be running at once, across every worker."""

    async def next_due(self) -> datetime | None:
        """When the earliest pending run becomes claimable (now or later), if any."""

    async def queued_by_agent(self) -> dict[str, int]:
        """How many runs of each agent are queued (waiting to be claimed)."""

    async def renew_lease(self, run_id: str, fence: int, lease_seconds: float) -> bool: ...

    async def complete_run(
        self,
        run_id: str,
        fence: int,
        outputs: Sequence[Artifact],
        triggered: Sequence[Run],
        *,
        parts: Sequence[GroupPart] = (),
        usage: Usage | None = None,
        max_runs: int | None = None,
    ) -> Commit | None:
        """Commit a run's effects in one step: outputs, the runs and group parts they
        trigger (as `publish` does), its consumption records and the `succeeded` state.
        None if the fence no longer holds (nothing is written). A triggered run may come
        claimed already (its lease, fence and attempt set): it is stored as it is."""

    async def fail_run(
        self,
        run_id: str,
        fence: int,
        error: str,
        *,
        retry_at: datetime | None,
        usage: Usage | None = None,
    ) -> bool:
        """End a failed attempt: queued again at `retry_at`, or `dead` when it is None."""

    async def release_run(self, run_id: str, fence: int) -> bool:
        """Give a claimed run back (shutdown): queued now, its attempt not counted."""

    async def cancel_correlation(self, correlation_id: str) -> bool:
        """Cancel every pending run of the correlation and any future one; False if the
        correlation is unknown."""

    async def retry_run(self, run_id: str) -> Run | None:
        """Queue a `dead` or `cancelled` run again with fresh attempts (None if unknown;
        `InvalidRunStateError` in any other state)."""

    async def get_run(self, run_id: str) -> Run | None: ...

    # -- open groups ------------------------------------------------------------------------

    async def flush_groups(self) -> GroupFlush:
        """Settle the open groups whose deadline came: a batch becomes a run with what it
        gathered; a join part that waited past its window is dropped and recorded as an
        error of its correlation. Any worker may call it; each group is settled once."""

    async def open_groups(self) -> dict[str, int]:
        """How many open groups each agent has (agents with none are left out)."""

    async def query_runs(
        self, filters: RunFilter | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Run], int]:
        """Matching runs ordered by (created_at, id), and the total count of matches."""

    async def subscribe(self, callback: Callable[[str], None]) -> bool:
        """Deliver other processes' change notifications (payloads of
        `flock.core.store.notifications`) to `callback`; False if the store has none."""

    async def ping(self) -> None:
        """Raise `StoreUnavailableError` if the backend cannot be reached."""

    async def close(self) -> None: ...


__all__ = [
    "BlackboardStore",
    "ClaimedRun",
    "Commit",
    "CorrelationRecord",
    "CorrelationState",
    "CorrelationStatus",
    "FilterConfig",
    "InvalidRunStateError",
    "Progress",
    "RunFilter",
    "RunQueueFullError",
    "StoreUnavailableError",
]
