"""Durable runs with real `flock serve` processes: kill, freeze and stop them mid-run.

The app's engine logs each attempt (`pid attempt run_id`) to a file, then waits for a
marker file before it answers: the tests decide when a run may end, and read from the log
which process executed which attempt.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from support.durable import Scenario, outputs_and_run, publish, wait_idle
from support.polling import poll_until
from support.serve import ServerFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_run_killed_mid_flight_finishes_after_a_restart_with_no_request(
    serve: ServerFactory, tmp_path: Path, durable_store: str
) -> None:
    scenario = Scenario(serve, tmp_path, durable_store, FLOCK_RUN_LEASE="2")
    first = scenario.start()
    await first.wait_healthy()
    correlation_id = await publish(first)
    [(first_pid, attempt, run_id)] = await scenario.wait_attempts(1)
    assert (first_pid, attempt) == (first.pid, 1)

    first.kill()  # SIGKILL mid-run: no shutdown code runs
    scenario.marker.touch()
    second = scenario.start()  # same store; nobody calls resume() or sends a request for it
    await second.wait_healthy()

    status = await wait_idle(second, correlation_id)
    assert status["errors"] == [] and status["pending_runs"] == 0
    done, run = await outputs_and_run(second, correlation_id)
    assert [a["payload"]["n"] for a in done] == [2]  # exactly one output
    assert run["id"] == run_id and run["state"] == "succeeded" and run["attempt"] == 2
    assert [row[:2] for row in scenario.attempt_log()] == [(first.pid, 1), (second.pid, 2)]


async def test_a_frozen_holder_cannot_commit_after_another_process_took_its_run(
    serve: ServerFactory, tmp_path: Path, durable_store: str
) -> None:
    scenario = Scenario(serve, tmp_path, durable_store, FLOCK_RUN_LEASE="1.5")
    frozen = scenario.start()
    await frozen.wait_healthy()
    correlation_id = await publish(frozen)
    await scenario.wait_attempts(1)

    os.kill(frozen.pid, signal.SIGSTOP)  # past its lease, as a long GC pause or a VM freeze
    try:
        taker = scenario.start()
        await taker.wait_healthy()
        log = await scenario.wait_attempts(2)  # the lease ran out: the other process took it
        assert [row[:2] for row in log] == [(frozen.pid, 1), (taker.pid, 2)]
        scenario.marker.touch()
        await wait_idle(taker, correlation_id)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)

    # The frozen process wakes with its engine released by the marker: its commit is fenced.
    async def noticed() -> bool:
        return "lost its lease" in frozen.output()

    await poll_until(noticed, seconds=30, what="the frozen worker to notice its lost lease")
    await asyncio.sleep(1.0)  # any late commit would have landed by now
    done, run = await outputs_and_run(taker, correlation_id)
    assert len(done) == 1
    assert run["state"] == "succeeded" and run["attempt"] == 2
    assert run["worker"].endswith(f":{taker.pid}")


async def test_sigterm_releases_a_running_run_to_the_next_process_at_once(
    serve: ServerFactory, tmp_path: Path, durable_store: str
) -> None:
    """The lease is long (60 s); a graceful stop hands the run over far sooner than that."""
    scenario = Scenario(serve, tmp_path, durable_store, FLOCK_RUN_LEASE="60")
    first = scenario.start(FLOCK_SHUTDOWN_GRACE="1")
    await first.wait_healthy()
    correlation_id = await publish(first)
    await scenario.wait_attempts(1)

    first.terminate()
    assert await first.wait_exit(30) == 0, first.output()
    second = scenario.start()
    await second.wait_healthy()
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        status = (await client.get(f"/api/v1/correlations/{correlation_id}")).json()
    assert status["state"] == "running"  # released, never marked idle
    log = await scenario.wait_attempts(2)  # long before the 60 s lease would have run out
    assert log[1][:2] == (second.pid, 1)  # the released attempt was not counted
    scenario.marker.touch()
    await wait_idle(second, correlation_id)
    done, run = await outputs_and_run(second, correlation_id)
    assert len(done) == 1 and run["state"] == "succeeded"
