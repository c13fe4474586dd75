"""The outermost ASGI layer: correlation ids, body limits, metrics, 500s and shutdown."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flock import logs
from flock.api.auth import authenticate
from flock.api.errors import APIError, ErrorCode, create_error_response, internal_error_response
from flock.api.routing import is_json_media_type, routes_on_path
from flock.api.validation import url_problem
from flock.core.artifacts import new_id

if TYPE_CHECKING:
    from flock.api.service import BlackboardHTTPService

logger = logging.getLogger("flock.api")

_VALID_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLargeError(HTTPException):
    """Raised from `receive` once a streamed body passes the limit (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class RequestContextMiddleware:
    """Wraps every request: sets `X-Correlation-ID`, guards bodies, records metrics.

    It catches what nothing else handled and answers a 500 problem document with no
    exception text, logging the trace with the correlation id instead.
    """

    def __init__(self, app: ASGIApp, service: BlackboardHTTPService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        sent = _header(scope, b"x-correlation-id")
        state["correlation_id"] = sent if sent and _VALID_CORRELATION_ID.match(sent) else new_id()
        method = scope.get("method", "")
        if method == "HEAD" and not self._routes_head(scope):
            # HEAD is GET without the body (RFC 9110 9.3.2), on every GET route; the server
            # sees the original scope, so it frames the answer as one to a HEAD.
            scope = {**scope, "method": "GET"}
            state["head"] = True
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if method == "HEAD" and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = message.setdefault("headers", [])
                if not any(k.lower() == b"x-correlation-id" for k, _ in headers):
                    headers.append((b"x-correlation-id", state["correlation_id"].encode()))
            await send(message)

        admitted = False
        bound = logs.bind(state)  # log records name the request's (then workflow's) correlation
        try:
            early = self._reject_early(scope)
            if early is not None:
                await early(scope, receive, send_wrapper)
            else:
                admitted = True
                self.service.request_started()
                await self.app(scope, self._limited(scope, receive), send_wrapper)
        except Exception:
            logger.exception(
                "unhandled error in %s %s (correlation %s)",
                scope.get("method"),
                scope.get("path"),
                state["correlation_id"],
            )
            if not response_started:
                await internal_error_response(state["correlation_id"])(scope, receive, send_wrapper)
        finally:
            logs.unbind(bound)
            if admitted:
                self.service.request_finished()
            elapsed = time.perf_counter() - started
            self.service.metrics.observe_request(method, self._route_label(scope), status, elapsed)

    def _routes_head(self, scope: Scope) -> bool:
        """Whether a route of the path takes HEAD itself (an app's own `@app.head`)."""
        routes = routes_on_path(self.service.app.router.routes, scope)
        return any("HEAD" in (route.methods or ()) for route in routes)

    def _route_label(self, scope: Scope) -> str:
        """The route template a request is counted under; "unmatched" when no route has its
        path. Requests refused before routing (413, 415, 401, 503) are looked up here."""
        path = getattr(scope.get("route"), "path", None)
        if path is None:
            matched = routes_on_path(self.service.app.router.routes, scope)
            path = matched[0].path if matched else "unmatched"
        return str(path)

    def _reject_early(self, scope: Scope) -> Any:
        """A response for requests refused before any body is read, else None."""
        cid = scope["state"]["correlation_id"]
        path: str = scope.get("path", "")
        if self.service.shutting_down and path not in ("/health", "/metrics"):
            # Closing the connection sends a client's retry to a new one (another replica).
            return create_error_response(
                ErrorCode.SERVICE_UNAVAILABLE,
                "the server is shutting down",
                headers={"Connection": "close"},
                correlation_id=cid,
            )
        if self.service.keyring is not None and (path == "/api/v1" or path.startswith("/api/v1/")):
            # Authenticate before any body is read: a caller without a valid key learns
            # nothing (not even that its body was malformed or too large). `get_principal`
            # reuses the principal found here.
            try:
                scope["state"]["principal"] = authenticate(self.service.keyring, Request(scope))
            except APIError as exc:
                return create_error_response(
                    exc.code,
                    exc.message,
                    status=exc.status,
                    details=exc.details,
                    headers=exc.headers,
                    correlation_id=cid,
                )
        bad_url = url_problem(path, scope.get("raw_path"), scope.get("query_string", b""))
        if bad_url is not None:
            return create_error_response(
                ErrorCode.VALIDATION_ERROR,
                "the request URL holds characters no store can take",
                details=[bad_url.to_dict()],
                correlation_id=cid,
            )
        if scope.get("method") not in _BODY_METHODS:
            return None
        length = _header(scope, b"content-length")
        limit = self.service.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return create_error_response(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the request body exceeds the limit of {limit} bytes",
                correlation_id=cid,
            )
        if path.startswith("/api/"):
            has_body = (length is not None and length != "0") or _header(
                scope, b"transfer-encoding"
            ) is not None
            content_type = _header(scope, b"content-type")
            if has_body and (content_type is None or not is_json_media_type(content_type)):
                return create_error_response(
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "request bodies must be JSON (Content-Type: application/json)",
                    correlation_id=cid,
                )
        return None

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        if scope.get("method") not in _BODY_METHODS:
            return receive
        limit = self.service.settings.max_body_bytes
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(limit)
            return message

        return receive_limited


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


__all__ = ["BodyTooLargeError", "RequestContextMiddleware"]
