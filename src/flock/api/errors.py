"""Error codes, the one problem-document builder, and every exception handler.

Every error on every route is an RFC 9457 problem document carrying the seed's fields
(`code`, `message`, `correlation_id`, `retryable`, `details`) and the RFC's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from flock.api.idempotency.protocol import IdempotencyStoreUnavailableError
from flock.api.routing import routes_on_path
from flock.core.agent import AgentOutputError
from flock.core.store.protocol import RunQueueFullError, StoreUnavailableError
from flock.core.validation import ArtifactValidationError, scrub_json
from flock.core.visibility import TenantScopeError, VisibilityError
from flock.registry import RegistryError

logger = logging.getLogger("flock.api")

PROBLEM_JSON = "application/problem+json"
ERROR_TYPE_BASE = "https://flock.dev/errors/"
RETRY_AFTER_SECONDS = 1


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    INVALID_STATE = "INVALID_STATE"
    IDEMPOTENCY_IN_PROGRESS = "IDEMPOTENCY_IN_PROGRESS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"


# code -> (default HTTP status, title, retryable)
ERROR_CATALOG: dict[ErrorCode, tuple[int, str, bool]] = {
    ErrorCode.VALIDATION_ERROR: (422, "Validation error", False),
    ErrorCode.UNAUTHORIZED: (401, "Unauthorized", False),
    ErrorCode.FORBIDDEN: (403, "Forbidden", False),
    ErrorCode.NOT_FOUND: (404, "Not found", False),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "Method not allowed", False),
    ErrorCode.IDEMPOTENCY_CONFLICT: (409, "Idempotency key reused with a different body", False),
    ErrorCode.INVALID_STATE: (409, "Invalid state for this operation", False),
    ErrorCode.IDEMPOTENCY_IN_PROGRESS: (409, "Idempotent request still in progress", True),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "Payload too large", False),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported media type", False),
    ErrorCode.RATE_LIMITED: (429, "Too many requests", True),
    ErrorCode.INTERNAL_ERROR: (500, "Internal server error", True),
    ErrorCode.SERVICE_UNAVAILABLE: (503, "Service unavailable", True),
    ErrorCode.TIMEOUT: (504, "Timeout", True),
}
# An HTTP status raised by the framework (404, 405, 413, ...) -> its code. 409 is left out:
# two codes share it, and only Flock's own errors (which carry their code) use it.
_STATUS_TO_CODE = {400: ErrorCode.VALIDATION_ERROR} | {
    status: code for code, (status, _, _) in ERROR_CATALOG.items() if status != 409
}


class APIError(Exception):
    """Raise anywhere in the request path to answer with a problem document."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        details: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or ERROR_CATALOG[code][0]
        self.details = details
        self.headers = dict(headers or {})
        self.correlation_id = correlation_id


def problem_body(
    code: ErrorCode,
    message: str,
    *,
    status: int | None = None,
    correlation_id: str | None = None,
    details: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The problem document as a dict (also used for batch item errors)."""
    default_status, title, retryable = ERROR_CATALOG[code]
    return {
        "type": ERROR_TYPE_BASE + code.value.lower().replace("_", "-"),
        "title": title,
        "status": status or default_status,
        "code": code.value,
        "message": message,
        "correlation_id": correlation_id,
        "retryable": retryable,
        "details": [dict(d) for d in details] if details else None,
    }


def create_error_response(
    code: ErrorCode,
    message: str,
    *,
    status: int | None = None,
    correlation_id: str | None = None,
    details: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The single place an error response is built."""
    body = problem_body(
        code, message, status=status, correlation_id=correlation_id, details=details
    )
    out_headers = dict(headers or {})
    if body["retryable"]:
        out_headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    if correlation_id:
        out_headers["X-Correlation-ID"] = correlation_id
    return Response(
        strict_json(body), status_code=body["status"], headers=out_headers, media_type=PROBLEM_JSON
    )


def strict_json(body: Any) -> bytes:
    """`body` as RFC 8259 JSON: NaN/Infinity become null, and text no encoder can take
    (stored before input was checked) is answered with replacement characters."""
    try:
        return to_json(body, inf_nan_mode="null")
    except PydanticSerializationError:
        logger.warning("a response held text that is not valid Unicode; it was replaced")
        return to_json(scrub_json(body), inf_nan_mode="null")


def request_correlation_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("correlation_id")
    return value if isinstance(value, str) else None


def validation_details(
    errors: Sequence[Mapping[str, Any]], prefix: str = ""
) -> list[dict[str, str]]:
    """Pydantic errors -> `[{field, message, code}]`; `field` dotted, like `payload.qty`."""
    details = []
    for error in errors:
        loc = [p for p in error.get("loc", ()) if p != "body"]
        field = prefix
        for part in loc:
            if isinstance(part, int):
                field += f"[{part}]"
            else:
                field += f".{part}" if field else str(part)
        # Checks of flock.api.validation report each problem inside the value (`.a[2]`).
        problems = (error.get("ctx") or {}).get("problems")
        if isinstance(problems, list) and problems:
            for problem in problems:
                details.append(
                    {
                        "field": (field + problem["field"]).lstrip(".") or "body",
                        "message": problem["message"],
                        "code": problem["code"],
                    }
                )
            continue
        details.append(
            {
                "field": field or "body",
                "message": str(error.get("msg", "invalid")),
                "code": str(error.get("type", "invalid")),
            }
        )
    return details


def problem_details(exc: ArtifactValidationError, prefix: str = "") -> list[dict[str, str]]:
    """The details of an artifact refused by `flock.core.validation`."""
    return [{**p.to_dict(), "field": f"{prefix}{p.field}"} for p in exc.problems]


async def _flock_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return create_error_response(
        exc.code,
        exc.message,
        status=exc.status,
        details=exc.details,
        headers=exc.headers,
        correlation_id=exc.correlation_id or request_correlation_id(request),
    )


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    cid = request_correlation_id(request)
    if any(e.get("type") == "json_invalid" for e in errors):
        return create_error_response(
            ErrorCode.VALIDATION_ERROR,
            "the request body is not valid JSON",
            status=400,
            correlation_id=cid,
            details=[{"field": "body", "message": "malformed JSON", "code": "json_invalid"}],
        )
    return create_error_response(
        ErrorCode.VALIDATION_ERROR,
        "the request is invalid",
        correlation_id=cid,
        details=validation_details(errors),
    )


async def _payload_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return create_error_response(
        ErrorCode.VALIDATION_ERROR,
        f"the payload does not validate as {exc.title}",
        correlation_id=request_correlation_id(request),
        details=validation_details(exc.errors(), prefix="payload"),
    )


async def _registry_error(request: Request, exc: Exception) -> Response:
    return create_error_response(
        ErrorCode.NOT_FOUND, str(exc), correlation_id=request_correlation_id(request)
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_TO_CODE.get(exc.status_code)
    if code is None:
        code = ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.VALIDATION_ERROR
    message = exc.detail if isinstance(exc.detail, str) else ERROR_CATALOG[code][1]
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route matches {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        method = "HEAD" if request.scope["state"].get("head") else request.method
        message = f"{method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = ", ".join(allowed)
    return create_error_response(
        code,
        message,
        status=exc.status_code,
        headers=headers,
        correlation_id=request_correlation_id(request),
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method routed on the request's path, sorted.

    Starlette's 405 names only the methods of the first route whose path matched, though
    other routes may serve the same path with other methods (`GET` and `POST /artifacts`).
    """
    methods: set[str] = set()
    for route in routes_on_path(request.app.router.routes, request.scope):
        methods |= route.methods or set()
    if "GET" in methods:
        methods.add("HEAD")  # answered on every GET route (RequestContextMiddleware)
    return sorted(methods)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RunQueueFullError):
        return create_error_response(
            ErrorCode.SERVICE_UNAVAILABLE, str(exc), correlation_id=request_correlation_id(request)
        )
    logger.warning("store unavailable during %s %s: %s", request.method, request.url.path, exc)
    return create_error_response(
        ErrorCode.SERVICE_UNAVAILABLE,
        "a backing store is unavailable; retry shortly",
        correlation_id=request_correlation_id(request),
    )


async def _timeout(request: Request, exc: Exception) -> Response:
    return create_error_response(
        ErrorCode.TIMEOUT, "the operation timed out", correlation_id=request_correlation_id(request)
    )


async def _invalid_artifact(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ArtifactValidationError)
    return create_error_response(
        ErrorCode.VALIDATION_ERROR,
        "the artifact holds values no store or strict JSON client can take",
        correlation_id=request_correlation_id(request),
        details=problem_details(exc),
    )


def _visibility_details(exc: Exception) -> list[dict[str, str]] | None:
    if isinstance(exc, TenantScopeError):
        return [{"field": "visibility", "message": str(exc), "code": "tenant_scope"}]
    return None


async def _not_visible(request: Request, exc: Exception) -> Response:
    return create_error_response(
        ErrorCode.FORBIDDEN,
        str(exc),
        correlation_id=request_correlation_id(request),
        details=_visibility_details(exc),
    )


async def _agent_output(request: Request, exc: Exception) -> Response:
    return create_error_response(
        ErrorCode.VALIDATION_ERROR, str(exc), correlation_id=request_correlation_id(request)
    )


def internal_error_response(correlation_id: str | None) -> Response:
    """The 500 answer: no exception text or trace leaves the server."""
    return create_error_response(
        ErrorCode.INTERNAL_ERROR,
        "an internal error occurred; it has been logged with this correlation id",
        correlation_id=correlation_id,
    )


_HANDLERS: dict[type[Exception], Any] = {}


def error_response_for(exc: Exception, correlation_id: str | None) -> Response | None:
    """The problem response a known exception maps to, or None for an unexpected one.

    Used outside FastAPI's handler chain, where an outcome must be captured as a response
    (an idempotent call stores its 4xx outcome).
    """
    if isinstance(exc, APIError):
        return create_error_response(
            exc.code,
            exc.message,
            status=exc.status,
            details=exc.details,
            headers=exc.headers,
            correlation_id=exc.correlation_id or correlation_id,
        )
    if isinstance(exc, RegistryError):
        return create_error_response(ErrorCode.NOT_FOUND, str(exc), correlation_id=correlation_id)
    if isinstance(exc, RunQueueFullError):
        return create_error_response(
            ErrorCode.SERVICE_UNAVAILABLE, str(exc), correlation_id=correlation_id
        )
    if isinstance(exc, StoreUnavailableError | IdempotencyStoreUnavailableError):
        return create_error_response(
            ErrorCode.SERVICE_UNAVAILABLE,
            "a backing store is unavailable; retry shortly",
            correlation_id=correlation_id,
        )
    if isinstance(exc, AgentOutputError):
        return create_error_response(
            ErrorCode.VALIDATION_ERROR, str(exc), correlation_id=correlation_id
        )
    if isinstance(exc, ArtifactValidationError):
        return create_error_response(
            ErrorCode.VALIDATION_ERROR,
            "the artifact holds values no store or strict JSON client can take",
            correlation_id=correlation_id,
            details=problem_details(exc),
        )
    if isinstance(exc, VisibilityError):
        return create_error_response(
            ErrorCode.FORBIDDEN,
            str(exc),
            correlation_id=correlation_id,
            details=_visibility_details(exc),
        )
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the request path raises to a problem document."""
    app.add_exception_handler(APIError, _flock_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ValidationError, _payload_validation)
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailableError, _store_unavailable)
    app.add_exception_handler(IdempotencyStoreUnavailableError, _store_unavailable)
    app.add_exception_handler(TimeoutError, _timeout)
    app.add_exception_handler(AgentOutputError, _agent_output)
    app.add_exception_handler(ArtifactValidationError, _invalid_artifact)
    app.add_exception_handler(VisibilityError, _not_visible)


__all__ = [
    "ERROR_CATALOG",
    "APIError",
    "ErrorCode",
    "create_error_response",
    "install_error_handlers",
    "internal_error_response",
    "problem_body",
    "problem_details",
    "strict_json",
    "validation_details",
]
