"""FastAPI dependencies: the service and the calling principal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from flock.api.auth import Principal, authenticate

if TYPE_CHECKING:
    from flock.api.service import BlackboardHTTPService


async def get_service(request: Request) -> BlackboardHTTPService:
    service: BlackboardHTTPService = request.app.state.flock_service
    return service


async def get_principal(request: Request) -> Principal:
    """The caller (anonymous without API keys); 401 when keys are required and missing."""
    cached = request.scope["state"].get("principal")
    if isinstance(cached, Principal):
        return cached
    principal = authenticate(request.app.state.flock_service.keyring, request)
    request.scope["state"]["principal"] = principal
    return principal


def route_template(request: Request) -> str:
    path = getattr(request.scope.get("route"), "path", None)
    return path if isinstance(path, str) else request.url.path


PrincipalDep = Annotated[Principal, Depends(get_principal)]

if TYPE_CHECKING:
    ServiceDep = BlackboardHTTPService
else:  # resolved at runtime by FastAPI; the service module imports the routes
    ServiceDep = Annotated[Any, Depends(get_service)]

__all__ = ["PrincipalDep", "ServiceDep", "get_principal", "get_service", "route_template"]
