"""Correlation status: what a sync call's Content-Location points at."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from flock.api.deps import PrincipalDep, ServiceDep
from flock.api.errors import APIError, ErrorCode
from flock.api.models import CorrelationStatusResponse
from flock.api.routes.artifacts import json_response
from flock.core.store.protocol import FilterConfig

router = APIRouter(prefix="/api/v1", tags=["correlations"])


@router.get(
    "/correlations/{correlation_id}",
    response_model=CorrelationStatusResponse,
    summary="Status of a correlation (a cascade)",
)
async def correlation_status(
    correlation_id: str,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    status = await service.flock.correlation_status(correlation_id)
    if status is None:
        raise APIError(ErrorCode.NOT_FOUND, f"no correlation {correlation_id!r}")
    body = status.to_dict()
    # A caller sees a correlation only through the artifacts it may see.
    _, visible = await service.flock.store.query_artifacts(
        FilterConfig(correlation_id=correlation_id, visible_to=principal.identity), limit=0
    )
    if visible == 0 and status.artifact_count > 0:
        raise APIError(ErrorCode.NOT_FOUND, f"no correlation {correlation_id!r}")
    body["artifact_count"] = visible
    return json_response(body, headers={"X-Correlation-ID": correlation_id})
