"""`flock worker` and `flock serve --no-worker`: runs executed by processes of their own.

Real processes sharing one store (a SQLite file, or PostgreSQL): an HTTP-only server hands
every run to the workers; a worker killed mid-run has its run finished by another one,
exactly once; a worker stopped with SIGTERM hands its run over at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.durable import Scenario, outputs_and_run, publish, wait_idle
from support.serve import ServerFactory, free_port, server_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def scenario(serve: ServerFactory, tmp_path: Path, durable_store: str) -> Iterator[Scenario]:
    scenario = Scenario(serve, tmp_path, durable_store, FLOCK_RUN_LEASE="2")
    try:
        yield scenario
    finally:
        scenario.stop_workers()


async def test_an_http_only_server_hands_its_runs_to_a_worker(scenario: Scenario) -> None:
    server = scenario.start(FLOCK_WORKER="0")
    metrics_port = free_port()
    worker = scenario.start_worker(FLOCK_METRICS_PORT=str(metrics_port))
    await server.wait_healthy()
    await worker.wait_ready()
    scenario.marker.touch()

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        answer = (
            await client.post(
                "/api/v1/artifacts/sync", json={"type": "DurJob", "payload": {"n": 1}}
            )
        ).json()
    assert answer["completed"] is True
    assert [a["type"] for a in answer["artifacts"]] == ["DurJob", "DurDone"]
    _, run = await outputs_and_run(server, answer["correlation_id"])
    assert run["worker"].endswith(f":{worker.pid}")  # not the server's process
    assert [row[0] for row in scenario.attempt_log()] == [worker.pid]
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert 'flock_runs_total{agent="worker",outcome="succeeded"} 1.0' in metrics


async def test_a_killed_workers_run_is_finished_by_another_worker_once(
    scenario: Scenario,
) -> None:
    server = scenario.start(FLOCK_WORKER="0")
    first = scenario.start_worker()
    await server.wait_healthy()
    await first.wait_ready()
    correlation_id = await publish(server)
    [(pid, attempt, _)] = await scenario.wait_attempts(1)
    assert (pid, attempt) == (first.pid, 1)

    first.process.kill()  # SIGKILL mid-run
    scenario.marker.touch()
    second = scenario.start_worker()
    await wait_idle(server, correlation_id)

    done, run = await outputs_and_run(server, correlation_id)
    assert len(done) == 1 and run["attempt"] == 2 and run["worker"].endswith(f":{second.pid}")


async def test_sigterm_hands_a_workers_run_to_another_at_once(
    serve: ServerFactory, tmp_path: Path, durable_store: str
) -> None:
    scenario = Scenario(serve, tmp_path, durable_store, FLOCK_RUN_LEASE="60")
    try:
        server = scenario.start(FLOCK_WORKER="0")
        first = scenario.start_worker(FLOCK_SHUTDOWN_GRACE="0.5")
        await server.wait_healthy()
        await first.wait_ready()
        correlation_id = await publish(server)
        await scenario.wait_attempts(1)

        first.process.terminate()
        assert await first.wait_exit(30) == 0, first.output()
        assert "released" in first.output()
        scenario.start_worker()
        log = await scenario.wait_attempts(2)  # far sooner than the 60 s lease
        assert log[1][1] == 1  # the released attempt was not counted
        scenario.marker.touch()
        await wait_idle(server, correlation_id)
        done, _ = await outputs_and_run(server, correlation_id)
        assert len(done) == 1
    finally:
        scenario.stop_workers()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["worker", "--demo", "--store", "memory://"], "needs a store other processes share"),
        (["serve", "--demo", "--no-worker", "--store", "memory://"], "--no-worker needs a store"),
    ],
)
def test_memory_stores_are_refused_in_one_line(
    tmp_path: Path, command: list[str], message: str
) -> None:
    port = ["--port", str(free_port())] if command[0] == "serve" else []
    done = subprocess.run(
        [sys.executable, "-m", "flock.cli", *command, *port],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


async def test_two_replicas_report_the_same_pending_runs(scenario: Scenario) -> None:
    running = scenario.start()
    http_only = scenario.start(FLOCK_WORKER="0")
    await running.wait_healthy()
    await http_only.wait_healthy()
    correlation_id = await publish(http_only)  # executed by the other replica's worker
    await scenario.wait_attempts(1)

    async def status(server: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return (await client.get(f"/api/v1/correlations/{correlation_id}")).json()

    first, second = await status(running), await status(http_only)
    assert (first["state"], first["pending_runs"]) == ("running", 1)
    assert (second["state"], second["pending_runs"]) == ("running", 1)
    scenario.marker.touch()
    await wait_idle(http_only, correlation_id)
    assert (await status(running))["pending_runs"] == 0
