"""What the client's calls return, parsed from the API's JSON."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from flock.client.errors import FlockAPIError
from flock.core.artifacts import Artifact
from flock.registry import TypeRegistry, type_registry

M = TypeVar("M", bound=BaseModel)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class AgentFailure:
    """A run of the cascade that ended dead (`run_id`, `attempts`), or a correlation-level
    error such as the run bound (both None)."""

    agent: str
    artifact_id: str | None
    message: str
    at: datetime
    run_id: str | None = None
    attempts: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentFailure:
        return cls(
            data["agent"],
            data.get("artifact_id"),
            data["message"],
            _time(data["at"]),
            data.get("run_id"),
            data.get("attempts"),
        )


@dataclass(frozen=True, slots=True)
class RunInfo:
    """`GET /runs/{id}`: one execution of one agent, its state and what it spent."""

    id: str
    agent: str
    correlation_id: str
    input_ids: list[str]
    output_ids: list[str]
    state: Literal["queued", "running", "succeeded", "dead", "cancelled"]
    attempt: int
    max_attempts: int
    error: str | None
    worker: str | None
    principal: str | None
    usage: dict[str, int] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        def moment(name: str) -> datetime | None:
            value = data.get(name)
            return None if value is None else _time(value)

        return cls(
            id=data["id"],
            agent=data["agent"],
            correlation_id=data["correlation_id"],
            input_ids=list(data["input_ids"]),
            output_ids=list(data["output_ids"]),
            state=data["state"],
            attempt=int(data["attempt"]),
            max_attempts=int(data["max_attempts"]),
            error=data.get("error"),
            worker=data.get("worker"),
            principal=data.get("principal"),
            usage=data.get("usage"),
            created_at=_time(data["created_at"]),
            started_at=moment("started_at"),
            finished_at=moment("finished_at"),
            next_attempt_at=moment("next_attempt_at"),
        )


@dataclass(frozen=True, slots=True)
class PublishResult:
    """`POST /artifacts` accepted the artifact; its cascade runs in the background."""

    artifact_id: str
    correlation_id: str
    idempotency_key: str
    replayed: bool = False  # answered from an earlier attempt with the same key


class _HasArtifacts:
    """Typed access to a result's artifacts through the type registry."""

    artifacts: Sequence[Artifact] | None
    registry: TypeRegistry

    def models(self) -> list[BaseModel]:
        """Every artifact's payload as its registered model."""
        return [self.registry.resolve(a.type).model_validate(a.payload) for a in self._all()]

    def models_of(self, model: type[M]) -> list[M]:
        """The payloads of the artifacts of `model`'s registered type, as `model` instances."""
        name = self.registry.name_for(model)
        return [model.model_validate(a.payload) for a in self._all() if a.type == name]

    def _all(self) -> Sequence[Artifact]:
        return self.artifacts or ()


@dataclass(frozen=True)
class SyncResult(_HasArtifacts):
    """`POST /artifacts/sync`: the correlation's artifacts (input first) once it is idle,
    or what there was at the timeout (`completed` False)."""

    correlation_id: str
    completed: bool
    artifacts: list[Artifact]
    errors: list[AgentFailure]
    truncated: bool
    duration_ms: float
    idempotency_key: str
    replayed: bool = False
    registry: TypeRegistry = field(default=type_registry, repr=False, compare=False)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
        replayed: bool,
        registry: TypeRegistry,
    ) -> SyncResult:
        return cls(
            correlation_id=data["correlation_id"],
            completed=bool(data["completed"]),
            artifacts=[Artifact.from_dict(a) for a in data["artifacts"]],
            errors=[AgentFailure.from_dict(e) for e in data["errors"]],
            truncated=bool(data["truncated"]),
            duration_ms=float(data["duration_ms"]),
            idempotency_key=idempotency_key,
            replayed=replayed,
            registry=registry,
        )


@dataclass(frozen=True)
class BatchItemResult(_HasArtifacts):
    """One batch item: `accepted`, `duplicate` (its own key was seen before) or `failed`
    (`error` says why). `artifacts`, `completed`, `errors`, `truncated` come with `wait`."""

    index: int
    status: Literal["accepted", "duplicate", "failed"]
    artifact_id: str | None
    correlation_id: str | None
    error: FlockAPIError | None = None
    artifacts: list[Artifact] | None = None
    completed: bool | None = None
    errors: list[AgentFailure] = field(default_factory=list)
    truncated: bool = False
    registry: TypeRegistry = field(default=type_registry, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], registry: TypeRegistry) -> BatchItemResult:
        error = data.get("error")
        artifacts = data.get("artifacts")
        return cls(
            index=int(data["index"]),
            status=data["status"],
            artifact_id=data.get("artifact_id"),
            correlation_id=data.get("correlation_id"),
            error=FlockAPIError.from_problem(error) if error else None,
            artifacts=[Artifact.from_dict(a) for a in artifacts] if artifacts is not None else None,
            completed=data.get("completed"),
            errors=[AgentFailure.from_dict(e) for e in data.get("errors") or ()],
            truncated=bool(data.get("truncated", False)),
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class BatchResult:
    """`POST /artifacts/batch`: one result per item, in the order sent."""

    items: list[BatchItemResult]
    idempotency_key: str
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    @property
    def failed(self) -> list[BatchItemResult]:
        return [item for item in self.items if not item.ok]

    def __iter__(self) -> Iterator[BatchItemResult]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> BatchItemResult:
        return self.items[index]


@dataclass(frozen=True, slots=True)
class CorrelationInfo:
    """`GET /correlations/{id}`: whether a cascade still runs, and what failed in it."""

    correlation_id: str
    state: Literal["running", "idle", "cancelled"]
    pending_runs: int
    artifact_count: int
    errors: list[AgentFailure]
    started_at: datetime
    updated_at: datetime
    waiting_artifacts: int = 0  # held in open groups (AND gates, joins, batches)

    @property
    def idle(self) -> bool:
        return self.state == "idle"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorrelationInfo:
        return cls(
            correlation_id=data["correlation_id"],
            state=data["state"],
            pending_runs=int(data["pending_runs"]),
            artifact_count=int(data["artifact_count"]),
            errors=[AgentFailure.from_dict(e) for e in data["errors"]],
            started_at=_time(data["started_at"]),
            updated_at=_time(data["updated_at"]),
            waiting_artifacts=int(data.get("waiting_artifacts", 0)),
        )


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """`GET /types`: a registered artifact type and its payload's JSON Schema."""

    name: str
    schema: dict[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TypeInfo:
        return cls(name=data["name"], schema=dict(data["schema"]))


@dataclass(frozen=True, slots=True)
class ArtifactPage:
    """One page of `GET /artifacts` (the client's iterators page through them)."""

    items: list[Artifact]
    total: int


__all__ = [
    "AgentFailure",
    "ArtifactPage",
    "BatchItemResult",
    "BatchResult",
    "CorrelationInfo",
    "PublishResult",
    "RunInfo",
    "SyncResult",
    "TypeInfo",
]
