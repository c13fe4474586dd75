"""`@idempotent()`: idempotency keys on the user-defined routes of a Flock app.

Place it *under* the route decorator of an app built by `BlackboardHTTPService`:

    @service.app.post("/orders", status_code=201)
    @idempotent()
    async def create_order(order: Order) -> OrderOut: ...

A request carrying `X-Idempotency-Key` / `Idempotency-Key` then runs through the app's
`IdempotencyGuard`, like the publish routes: the first one runs the endpoint and stores its
response; repeats get it back byte for byte with `Idempotent-Replayed: true`; the same key
with another request is a 409; a duplicate of a running request waits for its outcome.
Requests without a key run the endpoint as if it were not decorated.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fastapi import Header, Request
from fastapi.datastructures import DefaultPlaceholder, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import ResponseValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse

from flock.api.deps import get_principal, route_template
from flock.api.idempotency.guard import KeyedCall, fingerprint_of, parse_idempotency_key, scoped_key
from flock.api.idempotency.protocol import IdempotencyRecord

if TYPE_CHECKING:
    from flock.api.idempotency.guard import IdempotencyGuard

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

# Parameters added to the endpoint's signature: FastAPI fills them, the endpoint never sees
# them. The header ones only document the keys in OpenAPI; the raw headers are parsed.
_REQUEST_PARAM = "flock_idempotency_request__"
_KEY_PARAMS = {
    "flock_idempotency_x_key__": "X-Idempotency-Key",
    "flock_idempotency_key__": "Idempotency-Key",
}
_KEY_DESCRIPTION = (
    "Makes the request safe to retry: 1-255 printable ASCII characters "
    "(Idempotency-Key may be an RFC 8941 quoted string). Send one of the two headers."
)


def idempotent(*, wait_seconds: float | None = None) -> Callable[[Endpoint], Endpoint]:
    """Make a FastAPI endpoint honour idempotency keys. Put it under `@app.post(...)`.

    A key is scoped to the caller's principal, the method and the route template. The
    fingerprint covers the concrete path, the query string and the body (canonical JSON, or
    the raw bytes' hash when the body is not JSON). `wait_seconds` bounds how long a
    duplicate waits for a running original (default: the service's `idempotency_wait`).
    2xx/4xx outcomes are stored; a 5xx or an unhandled exception releases the key.
    """
    if wait_seconds is not None and wait_seconds < 0:
        raise ValueError("wait_seconds must not be negative")

    def decorate(endpoint: Endpoint) -> Endpoint:
        return cast(Endpoint, _KeyedEndpoint(endpoint, wait_seconds).wrapper())

    return decorate


class _KeyedEndpoint:
    """One decorated endpoint: its FastAPI-facing signature and the keyed call path."""

    def __init__(self, endpoint: Callable[..., Any], wait_seconds: float | None) -> None:
        self.endpoint = endpoint
        self.wait_seconds = wait_seconds
        self.is_async = inspect.iscoroutinefunction(endpoint)
        self.signature = _resolved_signature(endpoint)
        params = list(self.signature.parameters.values())
        self.request_param = next((p.name for p in params if _is_a(p.annotation, Request)), None)
        # FastAPI's injected `response: Response` objects carry status/headers to merge.
        self.response_params = [p.name for p in params if _is_a(p.annotation, Response)]
        self._adapters: dict[Any, TypeAdapter[Any]] = {}

    def wrapper(self) -> Callable[..., Any]:
        @functools.wraps(self.endpoint)
        async def keyed_endpoint(**kwargs: Any) -> Any:
            return await self.handle(kwargs)

        keyed_endpoint.__signature__ = self._public_signature()  # type: ignore[attr-defined]
        return keyed_endpoint

    def _public_signature(self) -> inspect.Signature:
        params = list(self.signature.parameters.values())
        extra = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=Header(None, alias=alias, description=_KEY_DESCRIPTION),
                annotation=str | None,
            )
            for name, alias in _KEY_PARAMS.items()
        ]
        if self.request_param is None:
            extra.insert(
                0,
                inspect.Parameter(
                    _REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request
                ),
            )
        tail = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        head = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        return self.signature.replace(parameters=[*head, *extra, *tail])

    async def handle(self, kwargs: dict[str, Any]) -> Any:
        for name in _KEY_PARAMS:
            kwargs.pop(name, None)
        if self.request_param is None:
            request: Request = kwargs.pop(_REQUEST_PARAM)
        else:
            request = kwargs[self.request_param]
        key = parse_idempotency_key(request.headers)
        if key is None:
            return await self.call(kwargs)
        guard = _guard_of(request)
        principal = await get_principal(request)
        scoped = scoped_key(principal.scope, request.method, route_template(request), key)
        return await guard.run(
            scoped,
            await request_fingerprint(request),
            _EndpointOperation(self, kwargs, request),
            wait_seconds=self.wait_seconds,
            correlation_id=request.scope.get("state", {}).get("correlation_id"),
        )

    async def call(self, kwargs: dict[str, Any]) -> Any:
        if not self.is_async:
            return await run_in_threadpool(functools.partial(self.endpoint, **kwargs))
        return await self.endpoint(**kwargs)

    def to_response(self, value: Any, request: Request, kwargs: Mapping[str, Any]) -> Response:
        """What FastAPI would answer for `value`, as a complete response (bytes in hand)."""
        if isinstance(value, Response):
            return value
        route = request.scope.get("route")
        status: int = getattr(route, "status_code", None) or 200
        subs = [s for s in (kwargs.get(n) for n in self.response_params) if s is not None]
        for sub in subs:
            status = sub.status_code or status
        if status < 200 or status in (204, 304):
            response = Response(status_code=status)
        else:
            response_class: Any = getattr(route, "response_class", JSONResponse)
            if isinstance(response_class, DefaultPlaceholder):
                response_class = response_class.value
            response = response_class(self._content(value, route), status_code=status)
        for sub in subs:
            response.headers.raw.extend(sub.headers.raw)
        return response

    def _content(self, value: Any, route: Any) -> Any:
        """The JSON-ready content, shaped by the route's `response_model` as FastAPI does."""
        model = getattr(route, "response_model", None)
        if model is None:
            return jsonable_encoder(value)
        adapter = self._adapters.get(model)
        if adapter is None:
            adapter = self._adapters[model] = TypeAdapter(model)
        try:
            validated = adapter.validate_python(value, from_attributes=True)
        except ValidationError as exc:
            raise ResponseValidationError(exc.errors(), body=value) from None
        return adapter.dump_python(
            validated,
            mode="json",
            include=route.response_model_include,
            exclude=route.response_model_exclude,
            by_alias=route.response_model_by_alias,
            exclude_unset=route.response_model_exclude_unset,
            exclude_defaults=route.response_model_exclude_defaults,
            exclude_none=route.response_model_exclude_none,
        )


class _EndpointOperation:
    """The guard's view of one keyed call of a decorated endpoint."""

    def __init__(self, owner: _KeyedEndpoint, kwargs: dict[str, Any], request: Request) -> None:
        self.owner, self.kwargs, self.request = owner, kwargs, request

    async def execute(self, call: KeyedCall | None) -> Response:
        try:
            value = await self.owner.call(self.kwargs)
        except Exception as exc:
            # A 4xx the app's handlers answer is an outcome (stored, replayed); anything
            # else propagates, and the guard releases the key so a retry runs.
            handled = await _handled_error(self.request, exc)
            if handled is None or handled.status_code >= 500:
                raise
            return handled
        return await _complete(self.owner.to_response(value, self.request, self.kwargs))

    async def refresh(self, record: IdempotencyRecord) -> Response | None:
        return None  # a user route's stored outcome is final


async def request_fingerprint(request: Request) -> str:
    """SHA-256 over the concrete path, the query and the body (canonical JSON if it is JSON)."""
    body: Any
    try:
        raw = await request.body()
    except RuntimeError:  # FastAPI streamed a form body into `request.form()` already
        body = {"form": await _form_digest(request)}
    else:
        try:
            body = {"json": json.loads(raw)} if raw else None
        except ValueError:
            body = {"sha256": hashlib.sha256(raw).hexdigest()}
    return fingerprint_of(
        {
            "path": request.url.path,
            "query": sorted(request.query_params.multi_items()),
            "body": body,
        }
    )


async def _form_digest(request: Request) -> list[list[str]]:
    items: list[list[str]] = []
    for name, value in (await request.form()).multi_items():
        if isinstance(value, UploadFile):
            digest = hashlib.sha256()
            while chunk := await value.read(1 << 16):
                digest.update(chunk)
            await value.seek(0)
            items.append([name, str(value.filename), digest.hexdigest()])
        else:
            items.append([name, str(value)])
    return sorted(items)


async def _handled_error(request: Request, exc: Exception) -> Response | None:
    """The response the app's exception handlers give `exc`, or None if none handles it."""
    handlers = request.app.exception_handlers
    handler = handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
    if handler is None:
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
    if handler is None:
        return None
    result = handler(request, exc)
    response = await result if inspect.isawaitable(result) else result
    return response if isinstance(response, Response) else None


async def _complete(response: Response) -> Response:
    """A response whose body is in memory, so the guard can store it."""
    if isinstance(response, StreamingResponse):
        chunks = [
            chunk if isinstance(chunk, bytes) else str(chunk).encode(response.charset)
            async for chunk in response.body_iterator
        ]
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        return Response(
            b"".join(chunks),
            status_code=response.status_code,
            headers=headers,
            background=response.background,
        )
    if not hasattr(response, "body"):
        raise TypeError(
            f"an @idempotent route must answer with a complete body, not {type(response).__name__}"
        )
    return response


def _guard_of(request: Request) -> IdempotencyGuard:
    service = getattr(request.app.state, "flock_service", None)
    if service is None:
        raise RuntimeError("@idempotent() needs an app built by BlackboardHTTPService")
    guard: IdempotencyGuard = service.guard
    return guard


def _resolved_signature(endpoint: Callable[..., Any]) -> inspect.Signature:
    """The signature with string annotations evaluated in the endpoint's own module."""
    signature = inspect.signature(endpoint)
    try:
        hints = typing.get_type_hints(endpoint, include_extras=True)
    except (NameError, TypeError):
        return signature
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
    ]
    return signature.replace(
        parameters=params, return_annotation=hints.get("return", signature.return_annotation)
    )


def _is_a(annotation: Any, cls: type) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, cls)


__all__ = ["idempotent", "request_fingerprint"]
