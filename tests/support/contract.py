"""The error contract of SPEC section 4, checked on any httpx response.

In process or over real HTTP, every response of the suite should pass through here: the
`api_client` fixture and the real-server clients install `check_response_contract` as an
httpx `response` event hook; code holding a response already read calls
`assert_response_contract`.
"""

from __future__ import annotations

import json

import httpx
from pydantic import ValidationError

from flock.api.models import ErrorResponse

PROBLEM_JSON = "application/problem+json"
PROBLEM_FIELDS = frozenset(ErrorResponse.model_fields)


def assert_response_contract(response: httpx.Response) -> ErrorResponse | None:
    """Assert what SPEC section 4 promises of a response whose body has been read.

    Every response carries `X-Correlation-ID`. Every error response (status >= 400) is an
    `application/problem+json` body that parses as `ErrorResponse` and spells out each of
    its fields, whose `status` equals the HTTP status and whose `correlation_id` equals the
    `X-Correlation-ID` header. Retryable answers (and every 429/503) carry `Retry-After`.
    Returns the parsed problem document of an error response, None otherwise.
    """
    request = response.request
    where = f"{request.method} {request.url.path} -> {response.status_code}"
    cid = response.headers.get("x-correlation-id")
    assert cid, f"{where}: no X-Correlation-ID header"
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, (
        f"{where}: error content-type is {content_type!r}, not {PROBLEM_JSON}"
    )
    if request.method == "HEAD":  # the GET's headers, no body
        assert response.content == b"", f"{where}: a HEAD answer has a body"
        return None
    try:
        body = json.loads(response.content)
        problem = ErrorResponse.model_validate(body)
    except (ValueError, ValidationError) as exc:
        raise AssertionError(f"{where}: body is not an ErrorResponse: {response.text!r}") from exc
    missing = PROBLEM_FIELDS - body.keys()
    assert not missing, f"{where}: problem document lacks {sorted(missing)}: {body}"
    assert problem.status == response.status_code, f"{where}: body status {problem.status}"
    assert problem.correlation_id == cid, (
        f"{where}: body correlation_id {problem.correlation_id!r} != header {cid!r}"
    )
    if problem.retryable or response.status_code in (429, 503):
        retry_after = response.headers.get("retry-after", "")
        assert retry_after.isdigit() and int(retry_after) >= 1, (
            f"{where}: Retry-After is {retry_after!r}"
        )
    return problem


async def check_response_contract(response: httpx.Response) -> None:
    """`assert_response_contract` as an `httpx.AsyncClient` `response` event hook."""
    if response.status_code >= 400:
        await response.aread()
    assert_response_contract(response)


__all__ = [
    "PROBLEM_FIELDS",
    "PROBLEM_JSON",
    "assert_response_contract",
    "check_response_contract",
]
