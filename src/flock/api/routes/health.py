"""Liveness, readiness and metrics (outside /api/v1, never behind API keys)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flock.api.deps import ServiceDep
from flock.api.errors import ErrorCode, create_error_response, request_correlation_id
from flock.api.models import ErrorResponse, HealthResponse
from flock.api.routes.artifacts import json_response

router = APIRouter(tags=["health"])
logger = logging.getLogger("flock.api")
_PING_TIMEOUT = 2.0


@router.get("/health", operation_id="health", response_model=HealthResponse, summary="Liveness")
async def health() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/ready",
    operation_id="ready",
    response_model=HealthResponse,
    summary="Readiness: every store reachable",
    responses={503: {"model": ErrorResponse}},
)
async def ready(service: ServiceDep, request: Request) -> Response:
    cid = request_correlation_id(request)
    if service.shutting_down:
        return create_error_response(
            ErrorCode.SERVICE_UNAVAILABLE, "the server is shutting down", correlation_id=cid
        )
    checks = {"blackboard store": service.flock.store.ping()}
    if service.idempotency is not None:
        checks["idempotency store"] = service.idempotency.ping()
    for name, check in checks.items():
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                await check
        except Exception as exc:
            for pending in checks.values():
                pending.close()
            logger.warning("readiness: %s unavailable: %s", name, exc)
            return create_error_response(
                ErrorCode.SERVICE_UNAVAILABLE, f"the {name} is unavailable", correlation_id=cid
            )
    return json_response({"status": "ready"})


@router.get(
    "/metrics", operation_id="metrics", summary="Prometheus metrics", response_class=Response
)
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
