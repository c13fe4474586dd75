"""Runs: list them, look at one, queue a dead or cancelled one again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from flock.api.auth import Principal
from flock.api.deps import PrincipalDep, ServiceDep
from flock.api.errors import APIError, ErrorCode
from flock.api.models import RunListResponse, RunModel
from flock.api.routes.artifacts import json_response
from flock.core.runs import Run, RunState
from flock.core.store.protocol import InvalidRunStateError, RunFilter

router = APIRouter(prefix="/api/v1", tags=["runs"])


async def _visible_run(service: ServiceDep, principal: Principal, run_id: str) -> Run:
    """The run, if the caller may see its input (404 otherwise, as for an unknown id)."""
    run = await service.flock.get_run(run_id)
    if run is not None and run.input_ids:
        first = await service.flock.store.get(run.input_ids[0])
        if first is not None and first.visibility.allows(principal.identity):
            return run
    raise APIError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")


@router.get(
    "/runs", operation_id="listRuns", response_model=RunListResponse, summary="List agent runs"
)
async def list_runs(
    principal: PrincipalDep,
    service: ServiceDep,
    correlation_id: str | None = None,
    agent: str | None = None,
    state: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
) -> Response:
    """Runs ordered by creation, those whose inputs the caller may see."""
    filters = RunFilter(
        correlation_id=correlation_id, agent=agent, state=state, visible_to=principal.identity
    )
    items, total = await service.flock.list_runs(filters, limit=limit, offset=offset)
    return json_response(
        {
            "items": [run.to_dict() for run in items],
            "pagination": {"limit": limit, "offset": offset, "total": total},
        }
    )


@router.get(
    "/runs/{run_id}", operation_id="getRun", response_model=RunModel, summary="Get an agent run"
)
async def get_run(run_id: str, principal: PrincipalDep, service: ServiceDep) -> Response:
    run = await _visible_run(service, principal, run_id)
    return json_response(run.to_dict(), headers={"X-Correlation-ID": run.correlation_id})


@router.post(
    "/runs/{run_id}/retry",
    operation_id="retryRun",
    response_model=RunModel,
    summary="Retry a dead run",
)
async def retry_run(run_id: str, principal: PrincipalDep, service: ServiceDep) -> Response:
    """A `dead` or `cancelled` run is queued again with fresh attempts and answered as it now
    is (retrying a run of a cancelled cascade resumes that cascade); any other state is
    `409 INVALID_STATE`."""
    await _visible_run(service, principal, run_id)
    try:
        run = await service.flock.retry_run(run_id)
    except InvalidRunStateError as exc:
        raise APIError(ErrorCode.INVALID_STATE, str(exc)) from None
    if run is None:
        raise APIError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
    return json_response(run.to_dict(), headers={"X-Correlation-ID": run.correlation_id})
