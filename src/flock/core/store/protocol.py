"""The blackboard store protocol every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
from flock.core.visibility import Identity


class StoreUnavailableError(RuntimeError):
    """The store's backend could not be reached; the operation may be retried."""


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


CorrelationState = Literal["running", "idle"]


@dataclass(slots=True)
class CorrelationRecord:
    """What the store knows of a correlation (so status survives restarts and is shared)."""

    correlation_id: str
    state: CorrelationState
    started_at: datetime
    updated_at: datetime
    artifact_count: int = 0
    errors: list[AgentError] = field(default_factory=list)


@runtime_checkable
class BlackboardStore(Protocol):
    """Artifacts, consumption records and correlation state. Every method is async-safe."""

    async def publish(self, artifact: Artifact) -> None:
        """Store one artifact (idempotent on its id)."""

    async def put(self, artifact: Artifact) -> None:
        """Alias of `publish`."""

    async def commit_run(
        self, outputs: Sequence[Artifact], consumptions: Sequence[ConsumptionRecord]
    ) -> None:
        """Store an agent run's outputs and consumption records in one step."""

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

    async def record_consumptions(self, records: Sequence[ConsumptionRecord]) -> None: ...

    async def set_correlation_state(
        self, correlation_id: str, state: CorrelationState, seq: int, at: datetime
    ) -> None:
        """Record a running/idle transition; a write with a lower `seq` than stored is ignored."""

    async def record_error(self, error: AgentError) -> None: ...

    async def get_correlation(self, correlation_id: str) -> CorrelationRecord | None: ...

    async def ping(self) -> None:
        """Raise `StoreUnavailableError` if the backend cannot be reached."""

    async def close(self) -> None: ...


__all__ = [
    "BlackboardStore",
    "CorrelationRecord",
    "CorrelationState",
    "FilterConfig",
    "StoreUnavailableError",
]
