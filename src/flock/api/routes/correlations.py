"""Correlations: the status a sync call's Content-Location points at, and cancelling one."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from flock.api.auth import Principal
from flock.api.deps import PrincipalDep, ServiceDep
from flock.api.errors import APIError, ErrorCode
from flock.api.models import CorrelationStatusResponse
from flock.api.routes.artifacts import json_response
from flock.core.store.protocol import CorrelationRecord, FilterConfig

router = APIRouter(prefix="/api/v1", tags=["correlations"])


async def visible_count(service: ServiceDep, principal: Principal, correlation_id: str) -> int:
    """How many of the correlation's artifacts the caller may see."""
    _, visible = await service.flock.store.query_artifacts(
        FilterConfig(correlation_id=correlation_id, visible_to=principal.identity), limit=0
    )
    return visible


async def _may_see_input(service: ServiceDep, principal: Principal, correlation_id: str) -> bool:
    first, _ = await service.flock.store.query_artifacts(
        FilterConfig(correlation_id=correlation_id), limit=1
    )
    return not first or first[0].visibility.allows(principal.identity)  # type: ignore[union-attr]


async def _answer(
    service: ServiceDep, principal: Principal, correlation_id: str, status: CorrelationRecord | None
) -> Response:
    # A caller sees a correlation (its status, runs and errors) only if it may see its
    # input: the correlation's first artifact.
    if status is None or not await _may_see_input(service, principal, correlation_id):
        raise APIError(ErrorCode.NOT_FOUND, f"no correlation {correlation_id!r}")
    visible = await visible_count(service, principal, correlation_id)
    body = status.to_dict()
    body["artifact_count"] = visible
    return json_response(body, headers={"X-Correlation-ID": correlation_id})


@router.get(
    "/correlations/{correlation_id}",
    operation_id="getCorrelation",
    response_model=CorrelationStatusResponse,
    summary="Status of a correlation (a cascade)",
)
async def correlation_status(
    correlation_id: str,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    """State (`running`, `idle`, `cancelled`), pending runs and errors, derived from its runs."""
    status = await service.flock.correlation_status(correlation_id)
    return await _answer(service, principal, correlation_id, status)


@router.post(
    "/correlations/{correlation_id}/cancel",
    operation_id="cancelCorrelation",
    response_model=CorrelationStatusResponse,
    summary="Cancel a cascade",
)
async def cancel_correlation(
    correlation_id: str,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    """Queued runs are cancelled, running engines are stopped and their outputs dropped, no
    further run starts; sync calls waiting on it answer `completed: false` at once.
    Cancelling again answers the same."""
    status = await service.flock.correlation_status(correlation_id)
    await _answer(service, principal, correlation_id, status)  # 404 unless visible
    cancelled = await service.flock.cancel(correlation_id)
    return await _answer(service, principal, correlation_id, cancelled)
