"""The in-memory blackboard store: the default, for tests and single-process use."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
from flock.core.store.protocol import CorrelationRecord, CorrelationState, FilterConfig

_Consumption = tuple[datetime, str, str]


def _order(artifact: Artifact) -> tuple[datetime, str]:
    return (artifact.created_at, artifact.id)


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
        self._correlations: dict[str, CorrelationRecord] = {}
        self._seqs: dict[str, int] = {}

    async def publish(self, artifact: Artifact) -> None:
        self._add(artifact)

    put = publish

    async def commit_run(
        self, outputs: Sequence[Artifact], consumptions: Sequence[ConsumptionRecord]
    ) -> None:
        for artifact in outputs:
            self._add(artifact)
        self._add_consumptions(consumptions)

    def _add(self, artifact: Artifact) -> None:
        if artifact.id in self._by_id:
            return
        self._by_id[artifact.id] = artifact
        _insert_sorted(self._ordered, artifact)
        _insert_sorted(self._by_correlation.setdefault(artifact.correlation_id, []), artifact)
        record = self._correlations.get(artifact.correlation_id)
        if record is None:
            self._correlations[artifact.correlation_id] = CorrelationRecord(
                artifact.correlation_id, "idle", artifact.created_at, artifact.created_at
            )
        elif artifact.created_at > record.updated_at:
            record.updated_at = artifact.created_at

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

    async def record_consumptions(self, records: Sequence[ConsumptionRecord]) -> None:
        self._add_consumptions(records)

    def _add_consumptions(self, records: Sequence[ConsumptionRecord]) -> None:
        for record in records:
            existing = self._consumptions.get(record.artifact_id, ())
            if all(consumer != record.consumer for _, consumer, _ in existing):
                # Kept in (consumed_at, consumer) order, as the SQL stores return them.
                entry = (record.consumed_at, record.consumer, record.correlation_id)
                self._consumptions[record.artifact_id] = tuple(sorted((*existing, entry)))

    async def set_correlation_state(
        self, correlation_id: str, state: CorrelationState, seq: int, at: datetime
    ) -> None:
        if seq <= self._seqs.get(correlation_id, -1):
            return
        self._seqs[correlation_id] = seq
        record = self._correlations.get(correlation_id)
        if record is None:
            self._correlations[correlation_id] = CorrelationRecord(correlation_id, state, at, at)
        else:
            record.state = state
            record.updated_at = max(record.updated_at, at)

    async def record_error(self, error: AgentError) -> None:
        record = self._correlations.get(error.correlation_id)
        if record is None:
            record = CorrelationRecord(error.correlation_id, "idle", error.at, error.at)
            self._correlations[error.correlation_id] = record
        record.errors.append(error)

    async def get_correlation(self, correlation_id: str) -> CorrelationRecord | None:
        record = self._correlations.get(correlation_id)
        if record is None:
            return None
        return CorrelationRecord(
            correlation_id,
            record.state,
            record.started_at,
            record.updated_at,
            len(self._by_correlation.get(correlation_id, ())),
            list(record.errors),
        )

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


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
