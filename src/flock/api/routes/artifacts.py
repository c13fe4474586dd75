"""Artifact routes: publish (async and sync), query, summary, get."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from flock.api.auth import Principal
from flock.api.deps import PrincipalDep, ServiceDep, route_template
from flock.api.errors import APIError, ErrorCode, create_error_response, strict_json
from flock.api.idempotency.guard import (
    IdempotentOperation,
    KeyedCall,
    fingerprint_of,
    parse_idempotency_key,
    scoped_key,
)
from flock.api.idempotency.protocol import IdempotencyRecord
from flock.api.models import (
    ArtifactListResponse,
    ArtifactModel,
    ArtifactSummary,
    PublishRequest,
    PublishResponse,
    SyncPublishRequest,
    SyncPublishResponse,
)
from flock.api.publishing import build_artifact
from flock.api.routing import JSONBodyRoute
from flock.api.validation import Identifier, Name, Tag, Timestamp
from flock.core.artifacts import Artifact
from flock.core.store.protocol import FilterConfig
from flock.core.validation import MAX_LIMIT, MAX_OFFSET

router = APIRouter(prefix="/api/v1", tags=["artifacts"], route_class=JSONBodyRoute)

JSON = "application/json"
VisibilityKind = Literal["Public", "Private", "Labelled", "Tenant"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(strict_json(body), status_code=status, headers=headers, media_type=JSON)


async def publish_once(
    service: ServiceDep,
    body: PublishRequest,
    principal: Principal,
    call: KeyedCall | None,
    *,
    field_prefix: str = "",
) -> Artifact:
    """Publish a request's artifact exactly once, whatever crashed before.

    A caller that took over an abandoned claim reuses the recorded ids: publishing an
    artifact id that is stored already returns the stored one and triggers nothing, and
    its runs, being records in the store, finish wherever a worker is alive.
    """
    prior = call.prior if call is not None else None
    if prior is not None and prior.correlation_id and prior.artifact_id:
        artifact = build_artifact(
            body,
            principal,
            correlation_id=prior.correlation_id,
            artifact_id=prior.artifact_id,
            field_prefix=field_prefix,
        )
    else:
        artifact = build_artifact(body, principal, field_prefix=field_prefix)
    if call is not None:
        await call.record_publish(artifact.correlation_id, artifact.id)
    stored = await service.flock.publish(artifact, principal=principal.name)
    if call is not None:
        call.mark_published()
    return stored


async def published_before_failing(
    service: ServiceDep, record: IdempotencyRecord
) -> tuple[str, str] | None:
    """The (artifact id, correlation id) of a stored 5xx whose artifact was published anyway.

    That call failed after its publish took effect, so a retry is answered as accepted
    instead of with the stored error. None for any other outcome.
    """
    response = record.response
    if response is None or response.status_code < 500 or not record.artifact_id:
        return None
    if await service.flock.store.get(record.artifact_id) is None:
        return None
    assert record.correlation_id is not None
    return record.artifact_id, record.correlation_id


class AsyncPublish:
    """`POST /artifacts`: publish and answer at once."""

    def __init__(
        self,
        service: ServiceDep,
        body: PublishRequest,
        principal: Principal,
        request: Request,
    ) -> None:
        self.service, self.body, self.principal, self.request = service, body, principal, request

    async def execute(self, call: KeyedCall | None) -> Response:
        artifact = await publish_once(self.service, self.body, self.principal, call)
        self.request.scope["state"]["correlation_id"] = artifact.correlation_id
        return self._accepted(artifact.id, artifact.correlation_id)

    async def refresh(self, record: IdempotencyRecord) -> Response | None:
        published = await published_before_failing(self.service, record)
        return None if published is None else self._accepted(*published)

    @staticmethod
    def _accepted(artifact_id: str, correlation_id: str) -> Response:
        return json_response(
            {"status": "accepted", "artifact_id": artifact_id, "correlation_id": correlation_id},
            headers={"X-Correlation-ID": correlation_id},
        )


class SyncPublish:
    """`POST /artifacts/sync`: publish, wait for that correlation, answer its results."""

    def __init__(
        self,
        service: ServiceDep,
        body: SyncPublishRequest,
        principal: Principal,
        request: Request,
    ) -> None:
        self.service, self.body, self.principal, self.request = service, body, principal, request
        self.started = time.perf_counter()

    def remaining(self) -> float:
        return max(self.body.timeout - (time.perf_counter() - self.started), 0.0)

    async def execute(self, call: KeyedCall | None) -> Response:
        artifact = await publish_once(self.service, self.body, self.principal, call)
        return await self._answer(artifact.correlation_id, artifact.id)

    async def refresh(self, record: IdempotencyRecord) -> Response | None:
        """Re-attach to a stored outcome that did not complete (never re-publish)."""
        response = record.response
        if response is None or record.correlation_id is None:
            return None
        if response.status_code == 200 and answer_completed(response.body):
            return None
        if response.status_code not in (200, 504) and response.status_code < 500:
            return None
        return await self._answer(record.correlation_id, record.artifact_id)

    async def _answer(self, correlation_id: str, input_id: str | None) -> Response:
        service = self.service
        self.request.scope["state"]["correlation_id"] = correlation_id
        waited = await service.waiter.wait(correlation_id, self.remaining())
        service.metrics.count_sync(waited.completed)
        headers = {
            "Content-Location": f"/api/v1/correlations/{correlation_id}",
            "X-Correlation-ID": correlation_id,
        }
        if not waited.completed and self.body.on_timeout == "error":
            return create_error_response(
                ErrorCode.TIMEOUT,
                f"the cascade did not finish within {self.body.timeout:g} s; it goes on, "
                "follow it at the Content-Location URL",
                correlation_id=correlation_id,
                headers=headers,
            )
        result = await service.waiter.collect(
            correlation_id,
            self.principal,
            waited=waited,
            started=self.started,
            input_id=input_id,
            filters=self.body.filters,
        )
        return json_response(result.to_dict(), headers=headers)


_COMPLETED_KEY = b'"completed":'


def answer_completed(body: bytes) -> bool:
    """Whether a stored sync answer says `completed: true`, read without parsing all of it.

    In `CascadeResult.to_dict()` the `completed` key follows the artifacts, and nothing
    after it holds an object with that key (only numbers, booleans and the fixed keys of
    the errors, whose strings are escaped), so the body's last `"completed":` is its own.
    A body in any other form is parsed.
    """
    at = body.rfind(_COMPLETED_KEY)
    if at < 0:
        return bool(json.loads(body).get("completed", True))
    start = at + len(_COMPLETED_KEY)
    return body[start : start + 8].lstrip().startswith(b"true")


async def run_keyed(
    service: ServiceDep,
    request: Request,
    principal: Principal,
    body: BaseModel,
    operation: IdempotentOperation,
    wait_seconds: float | None = None,
) -> Response:
    """Run a publish operation, through the idempotency guard when the request has a key."""
    key = parse_idempotency_key(request.headers)
    if key is None:
        return await operation.execute(None)
    scoped = scoped_key(principal.scope, request.method, route_template(request), key)
    # A `timeout` (sync publish, batch) only says how long this call waits: a retry that
    # waits longer (or less) is the same request, re-attached to the same outcome.
    fingerprint = fingerprint_of(body.model_dump(mode="json", exclude={"timeout"}))
    return await service.guard.run(
        scoped,
        fingerprint,
        operation,
        wait_seconds=wait_seconds,
        correlation_id=request.scope["state"].get("correlation_id"),
    )


@router.post(
    "/artifacts",
    operation_id="publishArtifact",
    response_model=PublishResponse,
    summary="Publish an artifact",
)
async def publish_artifact(
    body: PublishRequest,
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    """Validate and publish; the cascade runs in the background. Idempotency keys honoured."""
    body = principal.scoped(body)
    return await run_keyed(
        service, request, principal, body, AsyncPublish(service, body, principal, request)
    )


@router.post(
    "/artifacts/sync",
    operation_id="publishArtifactSync",
    response_model=SyncPublishResponse,
    summary="Publish an artifact and wait for its cascade",
)
async def publish_sync(
    body: SyncPublishRequest,
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    """Publish under a fresh correlation id and wait (up to `timeout`) for that cascade only."""
    body = principal.scoped(body)
    async with service.sync_slot(principal):
        operation = SyncPublish(service, body, principal, request)
        return await run_keyed(
            service, request, principal, body, operation, wait_seconds=body.timeout
        )


@router.get(
    "/artifacts",
    operation_id="listArtifacts",
    response_model=ArtifactListResponse,
    summary="Query artifacts",
)
async def list_artifacts(
    principal: PrincipalDep,
    service: ServiceDep,
    type: Annotated[list[Name] | None, Query(max_length=100)] = None,
    produced_by: Annotated[list[Name] | None, Query(max_length=100)] = None,
    correlation_id: Identifier | None = None,
    tag: Annotated[list[Tag] | None, Query(max_length=100)] = None,
    start: Annotated[Timestamp | None, Query(alias="from")] = None,
    end: Annotated[Timestamp | None, Query(alias="to")] = None,
    visibility: Annotated[list[VisibilityKind] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    embed_meta: bool = False,
) -> Response:
    """Artifacts the caller may see, in (created_at, id) order. `from`/`to` are ISO 8601."""
    filters = FilterConfig(
        type_names=frozenset(type) if type else None,
        produced_by=frozenset(produced_by) if produced_by else None,
        correlation_id=correlation_id,
        tags=frozenset(tag) if tag else None,
        visibility=frozenset(visibility) if visibility else None,
        start=start,
        end=end,
        visible_to=principal.identity,
    )
    items, total = await service.flock.store.query_artifacts(
        filters, limit=limit, offset=offset, embed_meta=embed_meta
    )
    return json_response(
        {
            "items": [item.to_dict() for item in items],
            "pagination": {"limit": limit, "offset": offset, "total": total},
        }
    )


@router.get(
    "/artifacts/summary",
    operation_id="summarizeArtifacts",
    response_model=ArtifactSummary,
    summary="Count artifacts",
)
async def summarize_artifacts(
    principal: PrincipalDep,
    service: ServiceDep,
    type: Annotated[list[Name] | None, Query(max_length=100)] = None,
    produced_by: Annotated[list[Name] | None, Query(max_length=100)] = None,
    correlation_id: Identifier | None = None,
) -> Response:
    filters = FilterConfig(
        type_names=frozenset(type) if type else None,
        produced_by=frozenset(produced_by) if produced_by else None,
        correlation_id=correlation_id,
        visible_to=principal.identity,
    )
    return json_response(await service.flock.store.summarize_artifacts(filters))


@router.get(
    "/artifacts/{artifact_id}",
    operation_id="getArtifact",
    response_model=ArtifactModel,
    summary="Get an artifact",
)
async def get_artifact(
    artifact_id: Identifier,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    artifact = await service.flock.store.get(artifact_id)
    if artifact is None or not artifact.visibility.allows(principal.identity):
        raise APIError(ErrorCode.NOT_FOUND, f"no artifact {artifact_id!r}")
    return json_response(artifact.to_dict())


__all__ = [
    "AsyncPublish",
    "SyncPublish",
    "answer_completed",
    "json_response",
    "publish_once",
    "published_before_failing",
    "router",
    "run_keyed",
]
