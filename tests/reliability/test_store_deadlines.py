"""A stalled store never holds a request past its deadline (`FLOCK_STORE_TIMEOUT`).

A `StallingProxy` sits between a real `flock serve` and a real PostgreSQL or Redis. Once it
stalls, it accepts connections and forwards nothing, so only a deadline ends a wait: every
request that needs the store answers `503 SERVICE_UNAVAILABLE` with `Retry-After` within the
deadline (plus the slack of a loaded machine), and a sync call never outlives its own
`timeout` by more than the deadline. A Redis connection reset answers 503, never 500.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.apps import job_app, work_after_marker, write_app
from support.polling import poll_until
from support.serve import ServeProcess, ServerFactory
from support.stall_proxy import StallingProxy

from .harness import assert_problem

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(180)]

JOB, DONE = "DeadlineJob", "DeadlineDone"
DEADLINE = 2.0
# What a loaded 2-core machine may add to an answer, beyond the deadline it is bound by.
SLACK = 6.0
SYNC = "/api/v1/artifacts/sync"
RECOVERY_SECONDS = 30.0


@pytest.fixture
def stalling_proxy() -> Iterator[list[StallingProxy]]:
    started: list[StallingProxy] = []
    yield started
    for proxy in started:
        proxy.close()


def proxy_to(url: str, started: list[StallingProxy]) -> StallingProxy:
    proxy = StallingProxy.to_url(url)
    proxy.start()
    started.append(proxy)
    return proxy


def sync_body(n: int, timeout: float = 20) -> dict[str, object]:
    return {"type": JOB, "payload": {"n": n}, "timeout": timeout}


async def timed_post(
    client: httpx.AsyncClient, path: str, body: object, **headers: str
) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = await client.post(path, json=body, headers=headers)
    return time.monotonic() - started, response


def start(serve: ServerFactory, app: Path, *, store: str, idempotency: str) -> ServeProcess:
    return serve(app, store=store, idempotency=idempotency, FLOCK_STORE_TIMEOUT=str(DEADLINE))


async def recovered(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await client.get("/ready")).status_code == 200

    await poll_until(ready, seconds=RECOVERY_SECONDS, what="/ready after the stall")


async def test_a_stalled_postgres_blackboard_answers_503_within_the_deadline(
    serve: ServerFactory,
    stalling_proxy: list[StallingProxy],
    tmp_path: Path,
    postgres_url: str,
    pg_schema: str,
) -> None:
    app = write_app(tmp_path, "deadline_app.py", job_app(job=JOB, done=DONE))
    proxy = proxy_to(postgres_url, stalling_proxy)
    server = start(
        serve,
        app,
        store=proxy.proxied(f"{postgres_url}?schema={pg_schema}&sslmode=disable"),
        idempotency="memory://",
    )
    await server.wait_healthy()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        first = await client.post(SYNC, json=sync_body(1))
        assert first.status_code == 200 and first.json()["completed"] is True, first.text

        proxy.stall()
        async_body = {"type": JOB, "payload": {"n": 3}}
        for path, body in ((SYNC, sync_body(2)), ("/api/v1/artifacts", async_body)):
            elapsed, response = await timed_post(client, path, body)
            problem = assert_problem(response, 503, "SERVICE_UNAVAILABLE")
            assert problem["retryable"] is True and int(response.headers["retry-after"]) >= 1
            assert elapsed < DEADLINE + SLACK, f"{path} answered after {elapsed:.1f} s"
        started = time.monotonic()
        assert_problem(await client.get("/ready"), 503, "SERVICE_UNAVAILABLE")
        assert time.monotonic() - started < DEADLINE + SLACK
        assert proxy.accepted_while_stalled + proxy.accepted > 1

        proxy.resume()
        await recovered(client)
        again = await client.post(SYNC, json=sync_body(4))
        assert again.status_code == 200 and again.json()["completed"] is True, again.text
    server.stop()  # before its schema is dropped


async def test_a_sync_call_waiting_when_the_store_stalls_keeps_to_its_timeout(
    serve: ServerFactory,
    stalling_proxy: list[StallingProxy],
    tmp_path: Path,
    postgres_url: str,
    pg_schema: str,
) -> None:
    marker = tmp_path / "let-go"
    app = write_app(
        tmp_path,
        "deadline_wait_app.py",
        job_app(job=JOB, done=DONE, work=work_after_marker("job.n + 1")),
    )
    proxy = proxy_to(postgres_url, stalling_proxy)
    server = serve(
        app,
        store=proxy.proxied(f"{postgres_url}?schema={pg_schema}"),
        idempotency="memory://",
        FLOCK_STORE_TIMEOUT=str(DEADLINE),
        RELIABILITY_MARKER=str(marker),
    )
    await server.wait_healthy()
    timeout = 6.0
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        call = asyncio.ensure_future(timed_post(client, SYNC, sync_body(5, timeout)))

        async def stored() -> bool:
            listed = await client.get("/api/v1/artifacts", params={"type": JOB})
            return listed.status_code == 200 and len(listed.json()["items"]) >= 1

        await poll_until(stored, seconds=30, what="the sync call's input to be stored")
        proxy.stall()
        elapsed, response = await call
        assert elapsed < timeout + DEADLINE + SLACK, f"answered after {elapsed:.1f} s"
        if response.status_code == 200:
            assert response.json()["completed"] is False, response.text
        else:
            assert_problem(response, 503, "SERVICE_UNAVAILABLE")
        marker.touch()
        proxy.resume()
        await recovered(client)
    server.stop()  # before its schema is dropped


async def test_a_stalled_or_reset_redis_answers_503(
    serve: ServerFactory,
    stalling_proxy: list[StallingProxy],
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
) -> None:
    app = write_app(tmp_path, "deadline_redis_app.py", job_app(job=JOB, done=DONE))
    proxy = proxy_to(redis_url, stalling_proxy)
    server = start(
        serve,
        app,
        store="memory://",
        idempotency=proxy.proxied(f"{redis_url}?prefix={redis_prefix}"),
    )
    await server.wait_healthy()

    def key() -> str:
        return f"deadline-{uuid.uuid4().hex}"

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        ok = await client.post(SYNC, json=sync_body(1), headers={"Idempotency-Key": key()})
        assert ok.status_code == 200, ok.text

        proxy.stall()
        for path, body in ((SYNC, sync_body(2)), ("/api/v1/artifacts", {"type": JOB})):
            elapsed, response = await timed_post(client, path, body, **{"Idempotency-Key": key()})
            assert_problem(response, 503, "SERVICE_UNAVAILABLE")
            assert elapsed < DEADLINE + SLACK, f"{path} answered after {elapsed:.1f} s"
        unkeyed = await client.post(SYNC, json=sync_body(3))  # needs no idempotency store
        assert unkeyed.status_code == 200, unkeyed.text
        proxy.resume()
        await recovered(client)

        # A reset of every pooled connection: the next keyed request finds its connection
        # dead. It may succeed on a fresh one; it must never be a 500.
        warm = await client.post(SYNC, json=sync_body(4), headers={"Idempotency-Key": key()})
        assert warm.status_code == 200, warm.text
        statuses = []
        for n in range(5):
            proxy.reset()
            response = await client.post(
                SYNC, json=sync_body(10 + n), headers={"Idempotency-Key": key()}
            )
            if response.status_code != 200:
                assert_problem(response, 503, "SERVICE_UNAVAILABLE")
            statuses.append(response.status_code)
        assert 500 not in statuses
        await recovered(client)


async def test_every_store_call_on_a_stalled_server_ends_at_its_deadline(
    stalling_proxy: list[StallingProxy],
    postgres_url: str,
    pg_schema: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """In the library: first use (creating the tables) and later calls alike, on the
    blackboard and idempotency stores, raise their unavailable errors at the deadline."""
    from flock.api.idempotency import store_from_url as idempotency_store
    from flock.api.idempotency.protocol import IdempotencyStoreUnavailableError
    from flock.core.store.protocol import StoreUnavailableError
    from flock.core.store.sql import store_from_url as blackboard_store

    pg = proxy_to(postgres_url, stalling_proxy)
    redis = proxy_to(redis_url, stalling_proxy)
    pg_url = pg.proxied(f"{postgres_url}?schema={pg_schema}")
    fresh = blackboard_store(pg_url, timeout=DEADLINE)  # never used before the stall
    used = blackboard_store(pg_url, timeout=DEADLINE)
    idem = idempotency_store(pg_url, timeout=DEADLINE)
    cache = idempotency_store(redis.proxied(f"{redis_url}?prefix={redis_prefix}"), timeout=DEADLINE)
    try:
        await used.ping()
        assert await used.query_artifacts() == ([], 0)
        await idem.ping()
        await cache.ping()
        pg.stall()
        redis.stall()
        loop = asyncio.get_running_loop()
        calls = {
            "fresh blackboard": (fresh.query_artifacts(), StoreUnavailableError),
            "blackboard": (used.query_artifacts(), StoreUnavailableError),
            "blackboard ping": (used.ping(), StoreUnavailableError),
            "idempotency claim": (
                idem.claim("k", "f", owner="o", lease_seconds=5, ttl_seconds=60),
                IdempotencyStoreUnavailableError,
            ),
            "redis claim": (
                cache.claim("k", "f", owner="o", lease_seconds=5, ttl_seconds=60),
                IdempotencyStoreUnavailableError,
            ),
        }
        for name, (call, error) in calls.items():
            started = loop.time()
            with pytest.raises(error):
                await call
            took = loop.time() - started
            assert took < DEADLINE + SLACK, f"{name}: {took:.1f} s"
    finally:
        pg.resume()
        redis.resume()
        for store in (fresh, used, idem, cache):
            await store.close()
