"""`JSONBodyRoute`: FastAPI's route, with a short path for endpoints that take one JSON body.

FastAPI's generic request handler solves the dependency graph and validates every declared
parameter on each request. For the publish endpoints that machinery cost more than their
own work, so this route serves them directly: it validates the body with the model's JSON
parser and calls the endpoint with the `Request` and its request-only dependencies.

Anything outside that shape takes FastAPI's own handler, unchanged: other endpoints, bodies
that are missing, not JSON or invalid (so error responses stay exactly FastAPI's), and apps
that override one of the endpoint's dependencies. The OpenAPI schema is built from the same
endpoint signature either way.

`add_routes` puts a router's routes on the app itself rather than including the router.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/*+json`, parameters and case ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to call an eligible endpoint: its body parameter, request parameter, dependencies."""

    endpoint: Callable[..., Coroutine[Any, Any, Response]]
    body_name: str
    model: type[BaseModel]
    request_name: str | None
    dependencies: tuple[tuple[str, Callable[[Request], Coroutine[Any, Any, Any]]], ...]


class JSONBodyRoute(APIRoute):
    """An `APIRoute` that serves one-JSON-body endpoints without FastAPI's generic handling.

    Eligible: an async endpoint annotated to return a `Response`, taking one pydantic model
    as its body, optionally the `Request`, and dependencies that are async functions of the
    `Request` alone. Every other endpoint of a router using this class is served as usual.

    A template with parameters does not match a path that another route names literally:
    `GET /artifacts/sync` is a 405 (that path is `POST /artifacts/sync`), not a lookup of
    the artifact "sync", so the methods a path answers are the ones it documents.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and self.param_convertors and _named_literally(scope):
            return Match.NONE, {}
        return match, child

    def get_route_handler(self) -> Handler:
        generic = super().get_route_handler()
        route = _as_included(self)
        plan = _plan(route.dependant, route.body_field is not None, route._embed_body_fields)
        if plan is None:
            return generic
        provider = route.dependency_overrides_provider
        calls = frozenset(call for _, call in plan.dependencies)

        async def handler(request: Request) -> Response:
            overrides = getattr(provider, "dependency_overrides", None)
            if overrides and not calls.isdisjoint(overrides):
                return await generic(request)
            try:
                raw = await request.body()
            except HTTPException:
                raise
            except Exception as exc:  # as FastAPI answers a body that cannot be read
                raise HTTPException(400, "There was an error parsing the body") from exc
            content_type = request.headers.get("content-type")
            if not raw or content_type is None or not is_json_media_type(content_type):
                return await generic(request)
            try:
                body = plan.model.model_validate_json(raw)
            except ValidationError:
                return await generic(request)  # FastAPI builds the error response
            kwargs: dict[str, Any] = {plan.body_name: body}
            if plan.request_name is not None:
                kwargs[plan.request_name] = request
            for name, call in plan.dependencies:
                kwargs[name] = await call(request)
            return await plan.endpoint(**kwargs)

        return handler


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add the router's routes to the app itself, each with the options it was declared with.

    What `app.include_router(router)` does when given no options of its own (the app's
    responses, dependency overrides and OpenAPI apply the same), except that requests are
    then matched once: FastAPI matches the routes of an included router twice per request.
    """
    options = [
        name
        for name in inspect.signature(app.router.add_api_route).parameters
        if name not in ("path", "endpoint", "route_class_override")
    ]
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"add_routes() takes API routes only, not {route!r}")
        declared = {name: getattr(route, name) for name in options if hasattr(route, name)}
        app.router.add_api_route(
            route.path, route.endpoint, route_class_override=type(route), **declared
        )


def _as_included(route: APIRoute) -> Any:
    """The route with the options of the router inclusion being built, if any (FastAPI keeps
    them apart from the original route); the route itself otherwise."""
    context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
    context = context_var.get() if context_var is not None else None
    if context is not None and getattr(context, "original_route", None) is route:
        return context
    return route


def _plan(dependant: Dependant | None, has_body: bool, embedded: bool) -> _Plan | None:
    """The call plan of an eligible endpoint, else None."""
    if dependant is None or dependant.call is None or not has_body or embedded:
        return None
    if (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or len(dependant.body_params) != 1
        or _has_special_params(dependant)
    ):
        return None
    endpoint = dependant.call
    model = dependant.body_params[0].field_info.annotation
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        return None
    if not inspect.iscoroutinefunction(endpoint) or not _returns_response(endpoint):
        return None
    dependencies = []
    for sub in dependant.dependencies:
        if sub.name is None or sub.call is None or not inspect.iscoroutinefunction(sub.call):
            return None
        if (
            sub.dependencies
            or sub.path_params
            or sub.query_params
            or sub.header_params
            or sub.cookie_params
            or sub.body_params
            or _has_special_params(sub)
            or sub.request_param_name is None
            or len(inspect.signature(sub.call).parameters) != 1
        ):
            return None
        dependencies.append((sub.name, sub.call))
    return _Plan(
        endpoint,
        dependant.body_params[0].name,
        model,
        dependant.request_param_name,
        tuple(dependencies),
    )


def _has_special_params(dependant: Dependant) -> bool:
    return any(
        name is not None
        for name in (
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
    )


def _returns_response(endpoint: Callable[..., Any]) -> bool:
    try:
        returned = typing.get_type_hints(endpoint).get("return")
    except (NameError, TypeError):
        return False
    return inspect.isclass(returned) and issubclass(returned, Response)


def routes_on_path(routes: Iterable[BaseRoute], scope: Scope) -> list[Route]:
    """The routes whose path template matches the request's path, whatever their methods.

    A route whose template is the path itself shadows templates with parameters.
    """
    matched = [r for r in routes if isinstance(r, Route) and r.matches(scope)[0] is not Match.NONE]
    literal = [r for r in matched if not r.param_convertors]
    return literal or matched


def _named_literally(scope: Scope) -> bool:
    app = scope.get("app")
    router = getattr(app, "router", None)
    if router is None:
        return False
    return any(
        isinstance(r, Route) and not r.param_convertors and r.matches(scope)[0] is not Match.NONE
        for r in router.routes
    )


__all__ = ["JSONBodyRoute", "add_routes", "is_json_media_type", "routes_on_path"]
