"""Shared fixtures for the REST API tests.

`api_client` builds an in-process client around a `BlackboardHTTPService` and checks every
response it receives against the error contract (SPEC section 4), so each test of the
suite also proves that its error answers are well-formed problem documents.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from flock import Flock
from flock.api.service import BlackboardHTTPService
from support.contract import check_response_contract


class ServiceClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` bound to one service's app; `.service` is that service."""

    def __init__(self, service: BlackboardHTTPService, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service


ServiceClientFactory = Callable[..., Awaitable[ServiceClient]]


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
