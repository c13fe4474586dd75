"""Graceful shutdown: SIGTERM while sync calls are in flight.

The agent blocks until a marker file exists, so the calls are provably still running when
the signal arrives. After SIGTERM the server drains: it keeps listening and answers every
new request 503 SERVICE_UNAVAILABLE (a problem document with Retry-After), on new and on
kept-alive connections alike, while the calls in flight go on; they finish with their
complete results once the marker appears, and the process exits with status 0. Past the
grace period (`FLOCK_SHUTDOWN_GRACE`) it stops listening, and still lets them finish.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.apps import job_app, work_after_marker, write_app
from support.contract import check_response_contract
from support.polling import poll_until
from support.serve import ServeProcess, ServerFactory

from .harness import PROBLEM_FIELDS, RawHTTPConnection, assert_problem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

JOB = "ShutdownJob"
DONE = "ShutdownDone"
APP = job_app(job=JOB, done=DONE, agent="finisher", work=work_after_marker("job.n + 100"))

INFLIGHT = 4
EXIT_SECONDS = 30.0


def assert_shutting_down(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 503, (status, body)
    assert headers["content-type"].split(";")[0] == "application/problem+json"
    problem = json.loads(body)
    assert problem.keys() >= PROBLEM_FIELDS and problem["status"] == 503, problem
    assert problem["code"] == "SERVICE_UNAVAILABLE" and problem["retryable"] is True
    assert int(headers["retry-after"]) >= 1
    assert headers["connection"] == "close"


@asynccontextmanager
async def new_connections(server: ServeProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client that opens a new connection for every request (none is kept alive)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    hooks = {"response": [check_response_contract]}
    async with httpx.AsyncClient(
        base_url=server.url, timeout=10, limits=limits, event_hooks=hooks
    ) as client:
        yield client


class SyncCalls:
    """INFLIGHT sync calls (every other one with an idempotency key), blocked in the agent."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.calls = [
            asyncio.ensure_future(
                client.post(
                    "/api/v1/artifacts/sync",
                    json={"type": JOB, "payload": {"n": i}, "timeout": 60},
                    headers={"Idempotency-Key": f"drain-{i}"} if i % 2 else {},
                )
            )
            for i in range(INFLIGHT)
        ]

    async def wait_running(self) -> None:
        async def all_inputs_stored() -> bool:
            assert not self.any_done(), "a call ended before the signal"
            response = await self.client.get("/api/v1/artifacts", params={"type": JOB})
            return bool(response.json()["pagination"]["total"] == INFLIGHT)

        await poll_until(all_inputs_stored, seconds=30, what="every call's input artifact")

    def any_done(self) -> bool:
        return any(call.done() for call in self.calls)

    async def assert_complete(self) -> None:
        responses = await asyncio.gather(*self.calls)
        for i, response in enumerate(responses):
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            assert result["completed"] is True, result
            assert [(a["type"], a["payload"]) for a in result["artifacts"]] == [
                (JOB, {"n": i}),
                (DONE, {"n": i + 100}),
            ]


async def first_503_on_a_new_connection(server: ServeProcess) -> httpx.Response:
    """Poll with new connections until the signal took effect: until then requests are
    served as usual; from then on they get 503. A refused connection fails the test."""
    async with new_connections(server) as fresh:

        async def refused_with_503() -> httpx.Response | None:
            response = await fresh.get("/api/v1/agents")
            return None if response.status_code == 200 else response

        return await poll_until(refused_with_503, seconds=15, what="a 503 after SIGTERM")


async def assert_drains_then_exits_0(
    server: ServeProcess, marker: Path, *, check_kept_alive: bool = True
) -> None:
    """SIGTERM with sync calls in flight: new requests get 503, the calls finish, exit 0.

    `check_kept_alive`: a connection kept alive from before the signal gets a 503 too. Only
    meaningful with one process: with workers, the idle connection may belong to a worker
    with nothing in flight, whose drain rightly ends at once (closing its connections).
    """
    await server.wait_healthy()
    limits = httpx.Limits(max_connections=INFLIGHT + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=90, limits=limits) as client:
        calls = SyncCalls(client)
        await calls.wait_running()
        idle = await RawHTTPConnection.open(server.port)
        try:
            warm = await idle.request("GET", "/health")
            assert warm is not None and warm[0] == 200

            server.terminate()

            late = await first_503_on_a_new_connection(server)
            assert_problem(late, 503, "SERVICE_UNAVAILABLE")
            assert late.headers["connection"] == "close"
            server.terminate()  # another SIGTERM changes nothing
            async with new_connections(server) as fresh:
                publish = await fresh.post(
                    "/api/v1/artifacts/sync", json={"type": JOB, "payload": {"n": -1}}
                )
                assert_problem(publish, 503, "SERVICE_UNAVAILABLE")
                assert_problem(await fresh.get("/ready"), 503, "SERVICE_UNAVAILABLE")
                assert (await fresh.get("/health")).status_code == 200  # liveness holds

            if check_kept_alive:
                # A connection kept alive from before the signal gets the same answer, and
                # is closed after it.
                answer = await idle.request("GET", "/api/v1/agents")
                assert answer is not None, "a kept-alive connection was closed during the drain"
                assert_shutting_down(*answer)
        finally:
            idle.close()

        assert server.process.poll() is None, "the server exited with calls in flight"
        assert not calls.any_done(), "a call ended before the marker"

        await asyncio.to_thread(marker.touch)
        await calls.assert_complete()
    assert await server.wait_exit(EXIT_SECONDS) == 0, server.output()


async def test_sigterm_drains_with_503s_finishes_inflight_sync_calls_and_exits_0(
    serve: ServerFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "release.marker"
    app = write_app(tmp_path, "shutdown_app.py", APP)
    server = serve(app, store="memory://", idempotency="memory://", RELIABILITY_MARKER=str(marker))
    await assert_drains_then_exits_0(server, marker)


@pytest.mark.services
async def test_with_workers_each_process_drains(
    serve: ServerFactory, tmp_path: Path, shared_store_urls: dict[str, str]
) -> None:
    """`--workers 2`: uvicorn's supervisor passes SIGTERM on to its workers, which drain."""
    marker = tmp_path / "release.marker"
    app = write_app(tmp_path, "shutdown_app.py", APP)
    server = serve(
        app,
        **shared_store_urls,
        workers=2,
        RELIABILITY_MARKER=str(marker),
    )
    await assert_drains_then_exits_0(server, marker, check_kept_alive=False)


async def test_past_the_grace_period_runs_are_released_and_waiting_calls_answer_partial(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """Shutdown is bounded: engines still running after the grace period are stopped and
    their runs released (never marked done), and the sync calls waiting on them answer
    `completed: false` before the process exits 0."""
    marker = tmp_path / "release.marker"  # never created: the engines would block for good
    app = write_app(tmp_path, "shutdown_app.py", APP)
    server = serve(
        app,
        store="memory://",
        idempotency="memory://",
        RELIABILITY_MARKER=str(marker),
        FLOCK_SHUTDOWN_GRACE="1",
    )
    await server.wait_healthy()
    async with httpx.AsyncClient(base_url=server.url, timeout=90) as client:
        calls = SyncCalls(client)
        await calls.wait_running()
        server.terminate()
        assert_problem(await first_503_on_a_new_connection(server), 503, "SERVICE_UNAVAILABLE")
        outcomes = await asyncio.gather(*calls.calls)
    assert all(o.status_code == 200 for o in outcomes), outcomes
    assert all(o.json()["completed"] is False for o in outcomes)
    assert await server.wait_exit(EXIT_SECONDS) == 0, server.output()


async def test_sigint_during_the_drain_forces_an_immediate_exit(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """As a second Ctrl+C does in uvicorn: the calls in flight are abandoned, exit 0."""
    marker = tmp_path / "release.marker"  # never created: the calls would block for good
    app = write_app(tmp_path, "shutdown_app.py", APP)
    server = serve(app, store="memory://", idempotency="memory://", RELIABILITY_MARKER=str(marker))
    await server.wait_healthy()
    async with httpx.AsyncClient(base_url=server.url, timeout=90) as client:
        calls = SyncCalls(client)
        await calls.wait_running()
        server.terminate()
        assert_problem(await first_503_on_a_new_connection(server), 503, "SERVICE_UNAVAILABLE")
        assert server.process.poll() is None

        server.process.send_signal(signal.SIGINT)
        assert await server.wait_exit(EXIT_SECONDS) == 0, server.output()
        outcomes = await asyncio.gather(*calls.calls, return_exceptions=True)
    assert not any(
        isinstance(outcome, httpx.Response) and outcome.status_code == 200 for outcome in outcomes
    ), outcomes


async def test_sigterm_to_exit_is_bounded_whatever_is_in_flight(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """A 300 s sync call, its keyed duplicate waiting on it, and engines that never end:
    SIGTERM to exit still takes at most the grace period plus a few seconds, and the sync
    call answers `completed: false`."""
    stores = {"store": "memory://", "idempotency": "memory://"}
    await assert_bounded_shutdown(serve, tmp_path, 1, stores)


@pytest.mark.services
async def test_sigterm_to_exit_is_bounded_with_workers(
    serve: ServerFactory, tmp_path: Path, shared_store_urls: dict[str, str]
) -> None:
    await assert_bounded_shutdown(serve, tmp_path, 2, shared_store_urls)


async def assert_bounded_shutdown(
    serve: ServerFactory, tmp_path: Path, workers: int, stores: dict[str, str]
) -> None:
    marker = tmp_path / "release.marker"  # never created: the engines block for good
    app = write_app(tmp_path, "shutdown_app.py", APP)
    grace = 2.0
    server = serve(
        app,
        workers=workers,
        RELIABILITY_MARKER=str(marker),
        FLOCK_SHUTDOWN_GRACE=str(grace),
        **stores,
    )
    await server.wait_healthy()
    body = {"type": JOB, "payload": {"n": 1}, "timeout": 300}
    keyed = {"Idempotency-Key": "bounded-shutdown"}
    async with httpx.AsyncClient(base_url=server.url, timeout=400) as client:
        long_call = asyncio.ensure_future(client.post("/api/v1/artifacts/sync", json=body))
        holder = asyncio.ensure_future(
            client.post("/api/v1/artifacts/sync", json={**body, "payload": {"n": 2}}, headers=keyed)
        )

        async def both_stored() -> bool:
            listed = await client.get("/api/v1/artifacts", params={"type": JOB})
            return bool(listed.json()["pagination"]["total"] == 2)

        await poll_until(both_stored, seconds=30, what="both calls' inputs")
        duplicate = asyncio.ensure_future(
            client.post("/api/v1/artifacts/sync", json={**body, "payload": {"n": 2}}, headers=keyed)
        )
        await asyncio.sleep(0.5)  # let the duplicate reach the server and wait on the holder
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        server.terminate()
        # Within the grace period, the drain itself, and the last answers (3 s) and the
        # graceful shutdown (3 s) of server.py; the rest is a loaded machine's slack.
        assert await server.wait_exit(grace + 20) == 0, server.output()
        took = loop.time() - signalled
        outcomes = await asyncio.gather(long_call, holder, duplicate, return_exceptions=True)
    assert took < grace + 20
    for outcome in outcomes[:2]:
        assert isinstance(outcome, httpx.Response), outcomes
        assert outcome.status_code == 200, outcome.text
        assert outcome.json()["completed"] is False
    print(f"SIGTERM to exit: {took:.1f} s with a {grace:g} s grace period")
