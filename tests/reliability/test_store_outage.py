"""A store that goes away and comes back, under a live `flock serve`.

A TCP proxy sits between the server and PostgreSQL (as blackboard store, or as idempotency
store) or Redis (as idempotency store). The test cuts it: every open connection drops and
new ones are refused. While cut, the requests that need the missing store answer 503
SERVICE_UNAVAILABLE problem documents with Retry-After, `/ready` answers 503 and `/health`
200. Nothing half-written: a request that got 503 left no artifact, and a keyed one, retried
with its key once the store is back, runs exactly once. The server recovers by itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.apps import job_app, write_app
from support.polling import poll_until
from support.serve import ServeProcess, ServerFactory

from .harness import TCPProxy, assert_problem

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(120)]

JOB = "OutageJob"
DONE = "OutageDone"
APP = job_app(job=JOB, done=DONE)  # Done(n=job.n + 1)

RECOVERY_SECONDS = 30.0
ASYNC = "/api/v1/artifacts"
SYNC = "/api/v1/artifacts/sync"


@dataclass
class Attempt:
    """One publish made while the store was cut, identified by its own tag."""

    path: str
    keyed: bool
    tag: str
    n: int

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"type": JOB, "payload": {"n": self.n}, "tags": [self.tag]}
        if self.path == SYNC:
            body["timeout"] = 20
        return body

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": f"key-{self.tag}"} if self.keyed else {}

    async def send(self, client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(self.path, json=self.body(), headers=self.headers())


async def tagged(client: httpx.AsyncClient, tag: str) -> list[dict[str, object]]:
    response = await client.get(ASYNC, params={"tag": tag, "limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, object]] = response.json()["items"]
    return items


async def ready_status(client: httpx.AsyncClient) -> int:
    return (await client.get("/ready")).status_code


async def outage_round_trip(server: ServeProcess, proxy: TCPProxy, *, blackboard: bool) -> None:
    """Cut the proxy, check the server's answers, restore it, check recovery and the data.

    `blackboard`: the proxied store is the blackboard (every publish needs it); otherwise it
    is the idempotency store, which only keyed requests need.
    """
    await server.wait_healthy()
    attempts = [
        Attempt(path, keyed, f"t{i}-{uuid.uuid4().hex[:10]}", i)
        for i, (path, keyed) in enumerate(
            [(ASYNC, False), (SYNC, False), (ASYNC, True), (SYNC, True)] * 2
        )
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert await ready_status(client) == 200
        # Fill the server's connection pools (sync calls: no cascade is left running), so the
        # cut also kills pooled connections, and the first request after it meets a dead one.
        for warm in (
            Attempt(SYNC, True, f"warm-{uuid.uuid4().hex[:10]}", 0),
            Attempt(SYNC, False, f"warm-{uuid.uuid4().hex[:10]}", 0),
        ):
            assert (await warm.send(client)).status_code == 200

        proxy.cut()
        assert proxy.connections_cut > 0, "the server held no connection through the proxy"

        refused: list[Attempt] = []
        for attempt in attempts:
            response = await attempt.send(client)
            if blackboard or attempt.keyed:
                problem = assert_problem(response, 503, "SERVICE_UNAVAILABLE")
                assert problem["retryable"] is True
                refused.append(attempt)
            else:  # the idempotency store is not needed without a key
                assert response.status_code == 200, response.text
        assert_problem(await client.get("/ready"), 503, "SERVICE_UNAVAILABLE")
        health = await client.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}

        proxy.restore()

        async def ready() -> bool:
            return await ready_status(client) == 200

        await poll_until(ready, seconds=RECOVERY_SECONDS, what="/ready to answer 200 again")
        after = Attempt(SYNC, False, f"after-{uuid.uuid4().hex[:10]}", 99)
        response = await after.send(client)
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True

        for attempt in attempts:
            stored_now = await tagged(client, attempt.tag)
            if attempt in refused:
                assert stored_now == [], f"{attempt} got 503 but left an artifact"
            else:
                assert len(stored_now) == 1, f"{attempt} got 200: {stored_now}"
        for attempt in (a for a in refused if a.keyed):
            first = await attempt.send(client)
            assert first.status_code == 200, first.text
            assert first.headers.get("idempotent-replayed") is None
            again = await attempt.send(client)
            assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
            (stored,) = await tagged(client, attempt.tag)  # exactly once
            assert stored["payload"] == {"n": attempt.n}
            if attempt.path == SYNC:
                assert first.json()["completed"] is True
                types = [a["type"] for a in first.json()["artifacts"]]
                assert types == [JOB, DONE]

        # A silent outage: nothing calls while the store is away, so the pools still hold
        # dead connections when it is back. Readiness finds them out; then publishes work.
        cut_before = proxy.connections_cut
        proxy.cut()
        proxy.restore()
        assert proxy.connections_cut > cut_before
        await poll_until(ready, seconds=RECOVERY_SECONDS, what="/ready after a silent outage")
        quiet = Attempt(SYNC, True, f"quiet-{uuid.uuid4().hex[:10]}", 7)
        response = await quiet.send(client)
        assert response.status_code == 200, response.text
        assert [a["type"] for a in response.json()["artifacts"]] == [JOB, DONE]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return write_app(tmp_path, "outage_app.py", APP)


async def test_postgres_blackboard_store_outage(
    serve: ServerFactory,
    tcp_proxy: Callable[[str], TCPProxy],
    app: Path,
    postgres_url: str,
    pg_schema: str,
) -> None:
    proxy = tcp_proxy(postgres_url)
    store = proxy.proxied(f"{postgres_url}?schema={pg_schema}")
    server = serve(app, store=store, idempotency="memory://")
    await outage_round_trip(server, proxy, blackboard=True)


async def test_postgres_idempotency_store_outage(
    serve: ServerFactory,
    tcp_proxy: Callable[[str], TCPProxy],
    app: Path,
    postgres_url: str,
    pg_schema: str,
) -> None:
    proxy = tcp_proxy(postgres_url)
    idempotency = proxy.proxied(f"{postgres_url}?schema={pg_schema}")
    server = serve(app, store="memory://", idempotency=idempotency)
    await outage_round_trip(server, proxy, blackboard=False)


async def test_redis_idempotency_store_outage(
    serve: ServerFactory,
    tcp_proxy: Callable[[str], TCPProxy],
    app: Path,
    redis_url: str,
    redis_prefix: str,
) -> None:
    proxy = tcp_proxy(redis_url)
    idempotency = proxy.proxied(f"{redis_url}?prefix={redis_prefix}")
    server = serve(app, store="memory://", idempotency=idempotency)
    await outage_round_trip(server, proxy, blackboard=False)
