"""What a failed call raises: the server's problem document as an exception."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

# Answers without a problem document (a proxy or load balancer in between) worth retrying.
_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


class FlockAPIError(Exception):
    """An error answer from Flock (or a connection that failed), with the problem's fields.

    `code` is one of the codes of the API's error table (`VALIDATION_ERROR`, `NOT_FOUND`, ...),
    `HTTP_ERROR` for an answer that was not a problem document, or `TRANSPORT_ERROR`.
    """

    def __init__(
        self,
        code: str,
        message: str,
        correlation_id: str | None = None,
        retryable: bool = False,
        status: int | None = None,
        details: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.correlation_id = correlation_id
        self.retryable = retryable
        self.status = status
        self.details = [dict(d) for d in details]

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any], status: int | None = None) -> FlockAPIError:
        """From a problem document (an error response's body, or a batch item's `error`)."""
        return cls(
            code=str(problem.get("code", "HTTP_ERROR")),
            message=str(problem.get("message", "")),
            correlation_id=problem.get("correlation_id"),
            retryable=bool(problem.get("retryable", False)),
            status=status if status is not None else problem.get("status"),
            details=problem.get("details") or (),
        )

    def __repr__(self) -> str:
        return (
            f"FlockAPIError(code={self.code!r}, message={self.message!r}, "
            f"status={self.status!r}, retryable={self.retryable!r}, "
            f"correlation_id={self.correlation_id!r})"
        )


class FlockTransportError(FlockAPIError):
    """The connection failed or timed out (every retry of it, when retries were allowed)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__("TRANSPORT_ERROR", message, retryable=retryable)


def error_from_response(response: httpx.Response) -> FlockAPIError:
    """The exception an error response stands for."""
    problem: Any = None
    if response.content:
        try:
            problem = json.loads(response.content)
        except ValueError:
            problem = None
    if isinstance(problem, dict) and "code" in problem and "message" in problem:
        error = FlockAPIError.from_problem(problem, status=response.status_code)
        error.correlation_id = error.correlation_id or response.headers.get("x-correlation-id")
        return error
    status = response.status_code
    text = response.text.strip()[:200] if response.content else "no body"
    return FlockAPIError(
        "HTTP_ERROR",
        f"HTTP {status}: {text}",
        correlation_id=response.headers.get("x-correlation-id"),
        retryable=status in _RETRYABLE_STATUSES or (status >= 500 and not response.content),
        status=status,
    )


__all__ = ["FlockAPIError", "FlockTransportError", "error_from_response"]
