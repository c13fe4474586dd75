"""`GET /types`: the registered artifact types and their payload schemas."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from flock.api.deps import PrincipalDep
from flock.api.models import TypeListResponse
from flock.api.openapi import type_schema
from flock.api.routes.artifacts import json_response
from flock.registry import type_registry

router = APIRouter(prefix="/api/v1", tags=["types"])


@router.get(
    "/types",
    response_model=TypeListResponse,
    operation_id="listTypes",
    summary="List the artifact types",
)
async def list_types(principal: PrincipalDep) -> Response:
    """Every registered type, by name, with the JSON Schema its payload must validate against."""
    types = [
        {"name": name, "schema": type_schema(type_registry.resolve(name))}
        for name in type_registry.names()
    ]
    return json_response({"types": types})


__all__ = ["router"]
