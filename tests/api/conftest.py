"""Shared fixtures for the REST API tests.

`api_client` builds an in-process client around a `BlackboardHTTPService` and checks every
response it receives against the error contract (SPEC section 4), so each test of the
suite also proves that its error answers are well-formed problem documents.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from flock import Flock
from flock.api.models import ErrorResponse
from flock.api.service import BlackboardHTTPService

PROBLEM_JSON = "application/problem+json"


class ServiceClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` bound to one service's app; `.service` is that service."""

    def __init__(self, service: BlackboardHTTPService, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service


ServiceClientFactory = Callable[..., Awaitable[ServiceClient]]


async def check_response_contract(response: httpx.Response) -> None:
    """Assert what SPEC section 4 promises of a response (an httpx `response` event hook).

    Every response carries `X-Correlation-ID`. Every error response (status >= 400) is an
    `application/problem+json` body that parses as `ErrorResponse`, whose `status` equals
    the HTTP status and whose `correlation_id` equals the `X-Correlation-ID` header.
    Retryable 429/503 answers also carry `Retry-After`.
    """
    request = response.request
    where = f"{request.method} {request.url.path} -> {response.status_code}"
    cid = response.headers.get("x-correlation-id")
    assert cid, f"{where}: no X-Correlation-ID header"
    if response.status_code < 400:
        return
    await response.aread()
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, (
        f"{where}: error content-type is {content_type!r}, not {PROBLEM_JSON}"
    )
    try:
        problem = ErrorResponse.model_validate(json.loads(response.content))
    except (ValueError, ValidationError) as exc:
        raise AssertionError(f"{where}: body is not an ErrorResponse: {response.text!r}") from exc
    assert problem.status == response.status_code, f"{where}: body status {problem.status}"
    assert problem.correlation_id == cid, (
        f"{where}: body correlation_id {problem.correlation_id!r} != header {cid!r}"
    )
    if response.status_code in (429, 503):
        assert "retry-after" in response.headers, f"{where}: no Retry-After header"


@pytest.fixture
async def api_client() -> AsyncIterator[ServiceClientFactory]:
    """A factory: `client = await api_client(flock, **service_kwargs)`.

    It builds `BlackboardHTTPService(flock, **service_kwargs)`, enters the app's lifespan
    (entered/closed once per client, in reverse order at teardown) and returns a
    `ServiceClient` talking to the app in-process through `httpx.ASGITransport`, with
    base URL `http://test`. `client.service` is the service, e.g. to add a user route to
    `client.service.app` or to read `client.service.metrics`.

    Every response goes through `check_response_contract`: a malformed error answer fails
    the test that received it. Pass `check=False` to get a client without that hook.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def make(flock: Flock, *, check: bool = True, **service_kwargs: Any) -> ServiceClient:
            service = BlackboardHTTPService(flock, **service_kwargs)
            await stack.enter_async_context(service.app.router.lifespan_context(service.app))
            hooks: dict[str, list[Callable[..., Any]]] = (
                {"response": [check_response_contract]} if check else {}
            )
            client = ServiceClient(
                service,
                transport=httpx.ASGITransport(app=service.app),
                base_url="http://test",
                event_hooks=hooks,
            )
            await stack.enter_async_context(client)
            return client

        yield make
