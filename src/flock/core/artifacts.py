"""Artifacts: the typed records agents read from and write to the blackboard."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from flock.core.visibility import PUBLIC, AnyVisibility, visibility_from_dict, visibility_to_dict
from flock.registry import type_registry


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random (version 4) UUID in canonical form, as `str(uuid.uuid4())` gives it.

    Built from the random bytes directly: ids are minted several times per request, and
    the `UUID` object cost twice as much as the bytes.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(slots=True, kw_only=True)
class Artifact:
    """One published record. `payload` is the JSON form of the typed model."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    produced_by: str = "external"
    correlation_id: str = field(default_factory=new_id)
    id: str = field(default_factory=new_id)
    partition_key: str | None = None
    tags: frozenset[str] = frozenset()
    visibility: AnyVisibility = PUBLIC
    created_at: datetime = field(default_factory=_now)
    version: int = 1
    # The validated model instance, kept so agents do not re-parse the payload.
    _model: BaseModel | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tags, frozenset):
            self.tags = frozenset(self.tags)

    @property
    def visibility_kind(self) -> str:
        return self.visibility.kind

    def model(self) -> BaseModel:
        """The payload as its registered model (validated once, then cached)."""
        if self._model is None:
            self._model = type_registry.resolve(self.type).model_validate(self.payload)
        return self._model

    def to_dict(self) -> dict[str, Any]:
        """The serialized form used by the REST API and the SQL stores."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "produced_by": self.produced_by,
            "correlation_id": self.correlation_id,
            "partition_key": self.partition_key,
            "tags": sorted(self.tags),
            "visibility": visibility_to_dict(self.visibility),
            "visibility_kind": self.visibility.kind,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        created = data.get("created_at")
        if isinstance(created, str):
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        return cls(
            id=str(data["id"]),
            type=data["type"],
            payload=dict(data.get("payload") or {}),
            produced_by=data.get("produced_by", "external"),
            correlation_id=str(data["correlation_id"]),
            partition_key=data.get("partition_key"),
            tags=frozenset(data.get("tags") or ()),
            visibility=visibility_from_dict(data.get("visibility") or {"kind": "Public"}),
            created_at=created or _now(),
            version=int(data.get("version", 1)),
        )


@dataclass(frozen=True, slots=True)
class ConsumptionRecord:
    """Agent `consumer` consumed artifact `artifact_id` (written when its run finished)."""

    artifact_id: str
    consumer: str
    correlation_id: str
    consumed_at: datetime = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact_id": self.artifact_id,
            "consumer": self.consumer,
            "correlation_id": self.correlation_id,
            "consumed_at": self.consumed_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True, slots=True)
class ArtifactEnvelope:
    """An artifact with its consumption records (`embed_meta=True` queries)."""

    artifact: Artifact
    consumptions: tuple[ConsumptionRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = self.artifact.to_dict()
        data["consumptions"] = [c.to_dict() for c in self.consumptions]
        return data


@dataclass(frozen=True, slots=True)
class AgentError:
    """A failure recorded against a correlation: a run that ended `dead` (with its `run_id`
    and `attempts`), or a correlation-level error such as the run bound (no run)."""

    agent: str
    artifact_id: str | None
    message: str
    correlation_id: str
    at: datetime = field(default_factory=_now)
    run_id: str | None = None
    attempts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "artifact_id": self.artifact_id,
            "message": self.message,
            "attempts": self.attempts,
            "at": self.at.isoformat().replace("+00:00", "Z"),
        }


__all__ = ["AgentError", "Artifact", "ArtifactEnvelope", "ConsumptionRecord", "new_id"]
