"""The in-memory blackboard store: the default, for tests and single-process use."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
from flock.core.groups import (
    GroupFlush,
    GroupPart,
    assemble,
    run_for,
    settle,
)
from flock.core.runs import Run, RunState, Usage, lease_until
from flock.core.store.protocol import (
    ClaimedRun,
    Commit,
    CorrelationRecord,
    FilterConfig,
    InvalidRunStateError,
    Progress,
    RunFilter,
)
from flock.core.store.shared import (
    add_usage,
    correlation_state,
    dead_run_error,
    fair_order,
    requeue,
    run_limit_error,
    start_attempt,
    utcnow,
)

QUEUED, RUNNING, SUCCEEDED = RunState.QUEUED, RunState.RUNNING, RunState.SUCCEEDED
DEAD, CANCELLED = RunState.DEAD, RunState.CANCELLED

_Consumption = tuple[datetime, str, str]


def _order(artifact: Artifact) -> tuple[datetime, str]:
    return (artifact.created_at, artifact.id)


@dataclass(slots=True, eq=False)
class _Correlation:
    started_at: datetime
    updated_at: datetime
    pending: int = 0  # its queued and running runs, those it shares with others included
    # Its artifacts waiting in open groups, with how many groups each waits in.
    waiting_ids: Counter[str] = field(default_factory=Counter)

    @property
    def waiting(self) -> int:
        return len(self.waiting_ids)

    run_count: int = 0
    cancelled: bool = False
    limit_reported: bool = False
    errors: list[AgentError] = field(default_factory=list)  # correlation-level ones
    runs: list[Run] = field(default_factory=list)
    linked_runs: list[Run] = field(default_factory=list)  # joins/batches that took its parts


class InMemoryBlackboardStore:
    """Keeps everything in dicts, indexed by id and by correlation. Nothing survives a restart."""

    def __init__(self) -> None:
        self._by_id: dict[str, Artifact] = {}
        self._ordered: list[Artifact] = []
        self._by_correlation: dict[str, list[Artifact]] = {}
        # Per artifact, its consumptions as (consumed_at, consumer, correlation_id) tuples in
        # that order: the garbage collector stops tracking tuples of strings and datetimes,
        # so a store holding many runs does not lengthen every full collection.
        self._consumptions: dict[str, tuple[_Consumption, ...]] = {}
        self._correlations: dict[str, _Correlation] = {}
        self._runs: dict[str, Run] = {}
        # Queued and running runs, oldest first: what a claim looks through.
        self._pending: dict[str, Run] = {}
        # Open groups of AND gates, joins and batches: (agent, group) -> parts, oldest first.
        self._groups: dict[tuple[str, str], list[GroupPart]] = {}

    # -- artifacts --------------------------------------------------------------------------

    async def publish(
        self,
        artifact: Artifact,
        runs: Sequence[Run] = (),
        *,
        parts: Sequence[GroupPart] = (),
        max_runs: int | None = None,
        created: set[str] | None = None,
    ) -> Artifact:
        stored = self._by_id.get(artifact.id)
        if stored is not None:
            return replace(stored)  # never the caller's object: it was not stored now
        self._add(artifact)
        ids = self._create_runs(runs, max_runs)
        if parts:
            ids.extend(self._add_parts(parts, utcnow(), max_runs))
        if created is not None:
            created.update(ids)
        return artifact

    put = publish

    def _add(self, artifact: Artifact) -> None:
        if artifact.id in self._by_id:
            return
        self._by_id[artifact.id] = artifact
        _insert_sorted(self._ordered, artifact)
        _insert_sorted(self._by_correlation.setdefault(artifact.correlation_id, []), artifact)
        self._touch(artifact.correlation_id, artifact.created_at)

    def _touch(self, correlation_id: str, at: datetime) -> _Correlation:
        record = self._correlations.get(correlation_id)
        if record is None:
            record = self._correlations[correlation_id] = _Correlation(at, at)
        elif at > record.updated_at:
            record.updated_at = at
        elif at < record.started_at:
            record.started_at = at
        return record

    def _create_runs(self, runs: Sequence[Run], max_runs: int | None) -> list[str]:
        """Store the runs not stored yet, within each correlation's bound; their ids."""
        created: list[str] = []
        for run in runs:
            if run.id in self._runs:
                continue
            record = self._touch(run.correlation_id, run.created_at)
            if record.cancelled:
                continue
            if max_runs is not None and record.run_count >= max_runs:
                if not record.limit_reported:
                    record.limit_reported = True
                    record.errors.append(run_limit_error(run, max_runs))
                continue
            record.run_count += 1  # the store keeps the record it was given
            record.runs.append(run)
            for linked in run.linked:
                self._touch(linked, run.created_at).linked_runs.append(run)
            self._runs[run.id] = run
            created.append(run.id)
            if run.pending:
                self._pending[run.id] = run
                self._count_pending(run, 1)
        return created

    def _count_pending(self, run: Run, change: int) -> None:
        """A run started or stopped being pending work of its correlations."""
        for correlation_id in (run.correlation_id, *run.linked):
            self._touch(correlation_id, run.created_at).pending += change

    # -- open groups ------------------------------------------------------------------------

    def _add_parts(
        self, parts: Sequence[GroupPart], now: datetime, max_runs: int | None
    ) -> list[str]:
        touched: dict[tuple[str, str], list[GroupPart]] = {}
        for part in parts:
            record = self._touch(part.correlation_id, part.arrived_at)
            if record.cancelled:
                continue
            group = self._groups.setdefault((part.agent, part.group), [])
            if any(p.artifact_id == part.artifact_id for p in group):
                continue
            group.append(part)
            record.waiting_ids[part.artifact_id] += 1
            touched[(part.agent, part.group)] = group
        made: list[Run] = []
        for key, group in touched.items():
            for complete in assemble(group):
                self._take_parts(key, complete)
                made.append(run_for(complete, now))
        return self._create_runs(made, max_runs)

    def _take_parts(self, key: tuple[str, str], taken: Sequence[GroupPart]) -> None:
        group = self._groups.get(key, [])
        ids = {p.artifact_id for p in taken}
        group[:] = [p for p in group if p.artifact_id not in ids]
        for part in taken:
            record = self._correlations.get(part.correlation_id)
            if record is not None:
                record.waiting_ids[part.artifact_id] -= 1
                if record.waiting_ids[part.artifact_id] <= 0:
                    del record.waiting_ids[part.artifact_id]
        if not group:
            self._groups.pop(key, None)

    async def flush_groups(self) -> GroupFlush:
        now = utcnow()
        flush = GroupFlush()
        made: list[Run] = []
        for key, group in list(self._groups.items()):
            settled = settle(group, now)
            if not settled.taken:
                continue
            self._take_parts(key, settled.taken)
            made.extend(settled.runs)
            for error in settled.errors:
                await self.record_error(error)
            flush.correlation_ids.update(p.correlation_id for p in settled.taken)
        before = len(self._runs)
        self._create_runs(made, None)
        flush.runs_created = len(self._runs) - before
        flush.next_deadline = min(
            (p.deadline for g in self._groups.values() for p in g if p.deadline is not None),
            default=None,
        )
        return flush

    async def open_groups(self) -> dict[str, int]:
        return dict(Counter(agent for (agent, _), group in self._groups.items() if group))

    async def get(self, artifact_id: str) -> Artifact | None:
        return self._by_id.get(artifact_id)

    def _select(self, filters: FilterConfig | None) -> list[Artifact]:
        if filters is None:
            return self._ordered
        if filters.correlation_id is not None:
            pool = self._by_correlation.get(filters.correlation_id, [])
        else:
            pool = self._ordered
        return [a for a in pool if filters.matches(a)]

    async def query_artifacts(
        self,
        filters: FilterConfig | None = None,
        limit: int = 50,
        offset: int = 0,
        embed_meta: bool = False,
    ) -> tuple[list[Artifact] | list[ArtifactEnvelope], int]:
        selected = self._select(filters)
        page = selected[offset : offset + limit] if limit >= 0 else selected[offset:]
        if embed_meta:
            return [ArtifactEnvelope(a, tuple(self._records_of(a.id))) for a in page], len(selected)
        return list(page), len(selected)

    async def summarize_artifacts(self, filters: FilterConfig | None = None) -> dict[str, Any]:
        return summarize(self._select(filters))

    async def get_consumptions(self, artifact_id: str) -> list[ConsumptionRecord]:
        return self._records_of(artifact_id)

    def _records_of(self, artifact_id: str) -> list[ConsumptionRecord]:
        return [
            ConsumptionRecord(artifact_id, consumer, correlation_id, consumed_at)
            for consumed_at, consumer, correlation_id in self._consumptions.get(artifact_id, ())
        ]

    def _consume(self, run: Run, at: datetime) -> None:
        for artifact_id in run.input_ids:
            existing = self._consumptions.get(artifact_id, ())
            if all(consumer != run.agent for _, consumer, _ in existing):
                # Kept in (consumed_at, consumer) order, as the SQL stores return them.
                entry = (at, run.agent, run.correlation_id)
                self._consumptions[artifact_id] = tuple(sorted((*existing, entry)))

    # -- correlations -----------------------------------------------------------------------

    async def record_error(self, error: AgentError) -> None:
        record = self._correlations.get(error.correlation_id)
        if record is None:
            record = self._correlations[error.correlation_id] = _Correlation(error.at, error.at)
        record.errors.append(error)

    async def get_correlation(self, correlation_id: str) -> CorrelationRecord | None:
        record = self._correlations.get(correlation_id)
        if record is None:
            return None
        runs = (*record.runs, *record.linked_runs)
        errors = [*record.errors, *(dead_run_error(r) for r in runs if r.state == DEAD)]
        errors.sort(key=lambda e: e.at)
        return CorrelationRecord(
            correlation_id,
            correlation_state(record.cancelled, record.pending + record.waiting),
            record.started_at,
            record.updated_at,
            len(self._by_correlation.get(correlation_id, ())),
            errors,
            record.pending,
            record.waiting,
        )

    async def progress(self, correlation_id: str | None = None) -> Progress:
        if correlation_id is None:  # plain AND gates may wait for ever: not counted
            timed = sum(p.deadline is not None for g in self._groups.values() for p in g)
            return Progress(len(self._pending) + timed, runs=len(self._pending))
        record = self._correlations.get(correlation_id)
        if record is None:
            return Progress(0, exists=False)
        return Progress(record.pending + record.waiting, record.cancelled, runs=record.pending)

    # -- runs -------------------------------------------------------------------------------

    async def claim_runs(
        self, worker: str, limit: int, lease_seconds: float, caps: Mapping[str, int]
    ) -> list[ClaimedRun]:
        now = utcnow()
        live = [r for r in self._pending.values() if r.state == RUNNING and _due(r) > now]
        running = Counter(r.agent for r in live)
        busy = Counter(r.principal for r in live)
        claimed: list[ClaimedRun] = []
        for run in fair_order((r for r in self._pending.values() if _due(r) <= now), busy):
            if len(claimed) >= limit:
                break
            cap = caps.get(run.agent)
            if cap is not None:
                if running[run.agent] >= cap:
                    continue
                running[run.agent] += 1
            recovered = run.state == RUNNING
            start_attempt(run, worker, now, lease_seconds, recovered)
            inputs = tuple(self._by_id[i] for i in run.input_ids if i in self._by_id)
            claimed.append(ClaimedRun(run.copy(), inputs, recovered))
        return claimed

    async def queued_by_agent(self) -> dict[str, int]:
        return dict(Counter(r.agent for r in self._pending.values() if r.state == QUEUED))

    async def next_due(self) -> datetime | None:
        return min((_due(r) for r in self._pending.values()), default=None)

    def _owned(self, run_id: str, fence: int, now: datetime, *, live: bool = True) -> Run | None:
        """The run if it is still claimed with `fence` (and, if `live`, its lease holds)."""
        run = self._runs.get(run_id)
        if run is None or run.state != RUNNING or run.fence != fence:
            return None
        if live and (run.lease_expires_at is None or run.lease_expires_at <= now):
            return None
        return run

    async def renew_lease(self, run_id: str, fence: int, lease_seconds: float) -> bool:
        now = utcnow()
        run = self._owned(run_id, fence, now)
        if run is None:
            return False
        run.lease_expires_at = lease_until(now, lease_seconds)
        return True

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
        now = utcnow()
        run = self._owned(run_id, fence, now)
        if run is None:
            return None
        for artifact in outputs:
            self._add(artifact)
        self._consume(run, now)
        run.output_ids = tuple(a.id for a in outputs)
        run.error = None
        self._finish(run, SUCCEEDED, now, usage)
        created = self._create_runs(triggered, max_runs)
        if parts:
            created.extend(self._add_parts(parts, now, max_runs))
        return Commit(frozenset(created))

    async def fail_run(
        self,
        run_id: str,
        fence: int,
        error: str,
        *,
        retry_at: datetime | None,
        usage: Usage | None = None,
    ) -> bool:
        now = utcnow()
        run = self._owned(run_id, fence, now)
        if run is None:
            return False
        run.error = error
        if retry_at is None:
            self._consume(run, now)
            self._finish(run, DEAD, now, usage)
        else:
            run.usage = add_usage(run.usage, usage)
            run.state = QUEUED
            run.next_attempt_at = retry_at
            run.lease_expires_at = None
        return True

    async def release_run(self, run_id: str, fence: int) -> bool:
        now = utcnow()
        run = self._owned(run_id, fence, now, live=False)
        if run is None:
            return False
        run.state = QUEUED
        run.attempt -= 1
        run.next_attempt_at = now
        run.lease_expires_at = None
        return True

    def _finish(self, run: Run, state: RunState, now: datetime, usage: Usage | None) -> None:
        run.state = state
        run.finished_at = now
        run.next_attempt_at = run.lease_expires_at = None
        run.usage = add_usage(run.usage, usage)
        if self._pending.pop(run.id, None) is not None:
            self._count_pending(run, -1)
            self._touch(run.correlation_id, now)

    async def cancel_correlation(self, correlation_id: str) -> bool:
        record = self._correlations.get(correlation_id)
        if record is None:
            return False
        record.cancelled = True
        now = utcnow()
        for run in record.runs:
            if run.pending:
                self._finish(run, CANCELLED, now, None)
        for key, group in list(self._groups.items()):
            dropped = [p for p in group if p.correlation_id == correlation_id]
            if dropped:
                self._take_parts(key, dropped)
        return True

    async def retry_run(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        if run.state not in (DEAD, CANCELLED):
            raise InvalidRunStateError(f"run {run_id} is {run.state.value}, not dead or cancelled")
        now = utcnow()
        requeue(run, now)
        record = self._touch(run.correlation_id, now)
        record.cancelled = False
        self._count_pending(run, 1)
        self._pending[run.id] = run
        return run.copy()

    async def get_run(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        return None if run is None else run.copy()

    async def query_runs(
        self, filters: RunFilter | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Run], int]:
        filters = filters or RunFilter()
        if filters.correlation_id is not None:
            record = self._correlations.get(filters.correlation_id)
            pool: list[Run] = list(record.runs) if record is not None else []
        else:
            pool = list(self._runs.values())
        selected = [r for r in pool if self._run_matches(r, filters)]
        selected.sort(key=lambda r: (r.created_at, r.id))
        page = selected[offset : offset + limit] if limit >= 0 else selected[offset:]
        return [r.copy() for r in page], len(selected)

    def _run_matches(self, run: Run, filters: RunFilter) -> bool:
        if filters.agent is not None and run.agent != filters.agent:
            return False
        if filters.state is not None and run.state != filters.state:
            return False
        if filters.visible_to is not None:
            first = self._by_id.get(run.input_ids[0]) if run.input_ids else None
            return first is not None and first.visibility.allows(filters.visible_to)
        return True

    async def subscribe(self, callback: Callable[[str], None]) -> bool:
        return False  # one process: its own changes wake it directly

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _due(run: Run) -> datetime:
    due = run.next_attempt_at if run.state == QUEUED else run.lease_expires_at
    return due if due is not None else run.created_at


def _insert_sorted(items: list[Artifact], artifact: Artifact) -> None:
    if not items or _order(items[-1]) <= _order(artifact):
        items.append(artifact)
    else:
        bisect.insort(items, artifact, key=_order)


def summarize(artifacts: Sequence[Artifact]) -> dict[str, Any]:
    """Counts by type, producer and visibility kind (shared by every store)."""
    return {
        "total": len(artifacts),
        "by_type": dict(Counter(a.type for a in artifacts)),
        "by_producer": dict(Counter(a.produced_by for a in artifacts)),
        "by_visibility": dict(Counter(a.visibility.kind for a in artifacts)),
    }


__all__ = ["InMemoryBlackboardStore", "summarize"]
