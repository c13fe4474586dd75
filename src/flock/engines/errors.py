"""How a model call fails, in the terms of the run model (SPEC sections 6 and 8).

`LLMRequestError` is an ordinary exception: the attempt failed (429, 5xx, timeout, no
connection) and the agent's retry policy applies. The other two are `NonRetryableError`s:
another attempt with the same input cannot mend them, so the run goes dead at once.
"""

from __future__ import annotations

from flock.core.runs import NonRetryableError


class LLMError(Exception):
    """A model call of an `LLMEngine` failed."""


class LLMRequestError(LLMError):
    """The model server did not answer usefully this time (429, 5xx, timeout, connection).

    `status_code` is the HTTP status, if there was one; `retry_after` the seconds the server
    asked to wait, if it said.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class LLMRejectedError(LLMError, NonRetryableError):
    """The model server refused the request itself (bad key, unknown model, quota, 4xx)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LLMOutputError(LLMError, NonRetryableError):
    """The model's answer still failed validation after `output_retries` corrections (or the
    model misbehaved in a way a retry will not mend, like looping past the request limit)."""


__all__ = ["LLMError", "LLMOutputError", "LLMRejectedError", "LLMRequestError"]
