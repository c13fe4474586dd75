"""Publishing over HTTP: turn a request into an artifact, wait for a cascade, collect results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from flock.api.auth import Principal
from flock.api.errors import APIError, ErrorCode, validation_details
from flock.api.models import PublishRequest, SyncPublishFilters
from flock.core.artifacts import Artifact, new_id
from flock.core.orchestrator import Flock
from flock.core.store.protocol import CorrelationStatus, FilterConfig
from flock.core.visibility import PUBLIC
from flock.core.waiting import WaitOutcome
from flock.registry import type_registry

_NO_TAGS: frozenset[str] = frozenset()  # shared: a stored artifact keeps one object less


def build_artifact(
    request: PublishRequest,
    principal: Principal,
    *,
    correlation_id: str | None = None,
    artifact_id: str | None = None,
    field_prefix: str = "",
) -> Artifact:
    """Validate a publish request into an artifact (403, 404 or 422 as `APIError`)."""
    principal.check_may_publish(request.type)
    model = type_registry.resolve(request.type)  # RegistryError -> 404
    try:
        value = model.model_validate(request.payload)
    except ValidationError as exc:
        raise APIError(
            ErrorCode.VALIDATION_ERROR,
            f"the payload does not validate as {request.type}",
            details=validation_details(exc.errors(), prefix=f"{field_prefix}payload"),
        ) from None
    return Artifact(
        type=request.type,
        payload=value.model_dump(mode="json"),
        correlation_id=correlation_id or new_id(),
        id=artifact_id or new_id(),
        tags=frozenset(request.tags) if request.tags else _NO_TAGS,
        partition_key=request.partition_key,
        visibility=request.visibility or PUBLIC,
        _model=value,
    )


@dataclass(frozen=True, slots=True)
class CascadeResult:
    correlation_id: str
    artifacts: list[dict[str, Any]]
    completed: bool
    duration_ms: float
    errors: list[dict[str, Any]]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "artifacts": self.artifacts,
            "completed": self.completed,
            "duration_ms": self.duration_ms,
            "errors": self.errors,
            "truncated": self.truncated,
        }


@dataclass(frozen=True, slots=True)
class Waited:
    """How waiting for a correlation ended: `completed` (idle), and its status as read by
    the wait, when that is current (`fresh`: it was idle or cancelled then)."""

    completed: bool
    status: CorrelationStatus | None = None
    fresh: bool = False


class CascadeWaiter:
    """Waits for one correlation and reads its results, as a sync publish answers them."""

    def __init__(self, flock: Flock, max_artifacts: int) -> None:
        self.flock = flock
        self.max_artifacts = max_artifacts

    async def wait(self, correlation_id: str, timeout: float) -> Waited:
        """Completed once the correlation is idle; not after `timeout` seconds, once it was
        cancelled, or once this process stopped executing runs (shutdown)."""
        outcome, status = await self.flock.wait_status(correlation_id, timeout)
        fresh = outcome in (WaitOutcome.IDLE, WaitOutcome.CANCELLED)
        return Waited(outcome.completed, status, fresh)

    async def collect(
        self,
        correlation_id: str,
        principal: Principal,
        *,
        waited: Waited,
        started: float,
        input_id: str | None,
        filters: SyncPublishFilters | None = None,
    ) -> CascadeResult:
        query = FilterConfig(
            correlation_id=correlation_id,
            type_names=frozenset(filters.type_names) if filters and filters.type_names else None,
            produced_by=frozenset(filters.produced_by) if filters and filters.produced_by else None,
            visible_to=principal.identity,
        )
        items, _ = await self.flock.store.query_artifacts(query, limit=self.max_artifacts + 1)
        artifacts: list[Artifact] = list(items)  # type: ignore[arg-type]
        if input_id is not None:
            for i, artifact in enumerate(artifacts):
                if artifact.id == input_id:
                    if i:
                        artifacts.insert(0, artifacts.pop(i))
                    break
        truncated = len(artifacts) > self.max_artifacts
        status = waited.status
        if not waited.fresh:  # the wait ended before the cascade: what it has so far
            status = await self.flock.correlation_status(correlation_id)
        errors = [e.to_dict() for e in status.errors] if status is not None else []
        return CascadeResult(
            correlation_id=correlation_id,
            artifacts=[a.to_dict() for a in artifacts[: self.max_artifacts]],
            completed=waited.completed,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            errors=errors,
            truncated=truncated,
        )


__all__ = ["CascadeResult", "CascadeWaiter", "Waited", "build_artifact"]
