"""BlackboardHTTPService: builds the FastAPI app around a Flock and wires its parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from flock.api.auth import APIKeyring, Principal
from flock.api.docs import install_docs
from flock.api.errors import APIError, ErrorCode, install_error_handlers
from flock.api.idempotency.guard import IdempotencyGuard
from flock.api.idempotency.memory import InMemoryIdempotencyStore
from flock.api.idempotency.protocol import IdempotencyStore
from flock.api.idempotency.purge import purge_periodically
from flock.api.metrics import ServiceMetrics
from flock.api.middleware import RequestContextMiddleware
from flock.api.models import ErrorResponse
from flock.api.publishing import CascadeWaiter
from flock.api.routes import agents, artifacts, batch, correlations, health, runs, types
from flock.api.routing import add_routes
from flock.api.settings import ServiceSettings
from flock.core.orchestrator import Flock

logger = logging.getLogger("flock.api")

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503, 504)
}


class BlackboardHTTPService:
    """The REST API of one Flock. `.app` is the ASGI app; extra routes can be added to it."""

    def __init__(
        self,
        flock: Flock,
        *,
        idempotency: IdempotencyStore | None = None,
        api_keys: APIKeyring | None = None,
        settings: ServiceSettings | None = None,
        title: str = "Flock",
        drain_seconds: float = 10.0,
    ) -> None:
        self.flock = flock
        self.settings = settings or ServiceSettings.from_env()
        self.idempotency: IdempotencyStore = (
            idempotency if idempotency is not None else InMemoryIdempotencyStore()
        )
        self.keyring = api_keys if api_keys is not None else APIKeyring.from_env()
        self.metrics = ServiceMetrics(flock.stats)
        self.guard = IdempotencyGuard(
            self.idempotency,
            ttl_seconds=self.settings.idempotency_ttl,
            lease_seconds=self.settings.idempotency_lease,
            wait_seconds=self.settings.idempotency_wait,
        )
        self.metrics.watch_idempotency(self.guard.outcomes)
        self.waiter = CascadeWaiter(flock, self.settings.max_sync_artifacts)
        self.shutting_down = False
        # Counted by the middleware (not those it refuses up front); the drain waits on it.
        self._in_flight = 0
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.drain_seconds = drain_seconds
        self._inflight_sync: dict[str, int] = {}
        self.app = self._build_app(title)

    def _build_app(self, title: str) -> FastAPI:
        app = FastAPI(
            title=title,
            version="1",
            docs_url=None,
            redoc_url=None,
            lifespan=self._lifespan,
            responses=_ERROR_RESPONSES,
            description="Publish typed artifacts, wait for agent cascades, retry safely.",
        )
        app.state.flock_service = self
        install_error_handlers(app)
        for module in (artifacts, batch, agents, correlations, runs, types, health):
            add_routes(app, module.router)
        install_docs(app, title)
        app.add_middleware(RequestContextMiddleware, service=self)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.flock.agents  # noqa: B018 - validates the declared agents before serving
        # The app may be started again after a shutdown (test clients run one lifespan per
        # test): a new lifespan serves again instead of answering 503 forever.
        self.shutting_down = False
        # The worker starts with the app, so runs a crashed process left behind are taken
        # over without waiting for a request.
        self.flock.start()
        loop = asyncio.get_running_loop()
        purger = loop.create_task(
            purge_periodically(self.idempotency, self.settings.purge_interval)
        )
        gauge = loop.create_task(self.flock.watch_queue())
        try:
            yield
        finally:
            self.begin_shutdown()
            purger.cancel()
            gauge.cancel()
            await asyncio.gather(purger, gauge, return_exceptions=True)
            await self.stop_runs(self.drain_seconds)
            await self.idempotency.close()
            await self.flock.close()

    def begin_shutdown(self) -> None:
        """From now on new requests get 503 and no new run is claimed; requests and runs in
        flight go on."""
        self.shutting_down = True
        self.flock.worker.stop_claiming()

    async def stop_runs(self, grace: float) -> None:
        """Give running engines `grace` seconds, then release their runs to other workers."""
        await self.flock.worker.stop(grace)

    def answer_waiters(self) -> None:
        """Sync calls still waiting answer now (`completed: false`)."""
        self.flock.watch.close()

    @property
    def requests_in_flight(self) -> int:
        return self._in_flight

    def request_started(self) -> None:
        self._in_flight += 1

    def request_finished(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            for waiter in self._drain_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._drain_waiters.clear()

    async def wait_drained(self, seconds: float) -> bool:
        """Wait until no request is in flight, at most `seconds`; whether none is left."""
        if not self._in_flight:
            return True
        drained = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(drained)
        await asyncio.wait((drained,), timeout=seconds)
        if not drained.done():
            self._drain_waiters.remove(drained)
            drained.cancel()
            return False
        return True

    def sync_slot(self, principal: Principal) -> SyncSlot:
        """Bound concurrent sync calls per caller (429 RATE_LIMITED past the limit):
        `async with service.sync_slot(principal): ...`."""
        return SyncSlot(self._inflight_sync, principal.scope, self.settings.max_inflight_sync)


class SyncSlot:
    """One caller's sync call, counted while it runs (a plain class: it is entered on every
    sync request, and a generator-based context manager cost several times more)."""

    __slots__ = ("_counts", "_limit", "_name")

    def __init__(self, counts: dict[str, int], name: str, limit: int) -> None:
        self._counts, self._name, self._limit = counts, name, limit

    async def __aenter__(self) -> None:
        count = self._counts.get(self._name, 0)
        if count >= self._limit:
            raise APIError(
                ErrorCode.RATE_LIMITED, f"too many concurrent sync requests (limit {self._limit})"
            )
        self._counts[self._name] = count + 1

    async def __aexit__(self, *exc_info: object) -> None:
        left = self._counts[self._name] - 1
        if left:
            self._counts[self._name] = left
        else:
            del self._counts[self._name]


__all__ = ["BlackboardHTTPService", "SyncSlot"]
