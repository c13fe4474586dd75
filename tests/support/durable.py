"""The durable-runs scenario of the process tests: an app whose engine logs each attempt
(`pid attempt run_id`) to a file and then waits for a marker file, and servers and workers
sharing one store.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from support.apps import job_app, write_app
from support.polling import poll_until
from support.serve import ServeProcess, ServerFactory, server_env

WORK = """
MARKER = os.environ["RELIABILITY_MARKER"]
ATTEMPTS = os.environ["RELIABILITY_ATTEMPTS"]


class Work:
    async def evaluate(self, ctx, inputs):
        with open(ATTEMPTS, "a") as log:
            log.write(f"{os.getpid()} {ctx.attempt} {ctx.run_id}\\n")
        while not os.path.exists(MARKER):  # blocks until the test lets it go
            await asyncio.sleep(0.02)
        return Done(n=inputs[0].n + 1)
"""

APP = job_app(job="DurJob", done="DurDone", work=WORK).replace(
    ".with_engines(work)", ".with_engines(Work())"
)


class Scenario:
    """The app, its marker and attempts log, and servers sharing one store."""

    def __init__(self, serve: ServerFactory, tmp_path: Path, store: str, **env: str) -> None:
        self.serve, self.store = serve, store
        self.marker = tmp_path / "release.marker"
        self.attempts = tmp_path / "attempts.log"
        self.app = write_app(tmp_path, "durable_app.py", APP)
        self.workers: list[WorkerProcess] = []
        self.env = {
            "RELIABILITY_MARKER": str(self.marker),
            "RELIABILITY_ATTEMPTS": str(self.attempts),
            "FLOCK_WORKER_POLL": "0.2",
            **env,
        }

    def start(self, **env: str) -> ServeProcess:
        return self.serve(
            self.app, store=self.store, idempotency="memory://", **{**self.env, **env}
        )

    def start_worker(self, **env: str) -> WorkerProcess:
        log = self.attempts.parent / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.app, self.store, log, **{**self.env, **env})
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def attempt_log(self) -> list[tuple[int, int, str]]:
        if not self.attempts.exists():
            return []
        rows = [line.split() for line in self.attempts.read_text().splitlines() if line]
        return [(int(pid), int(attempt), run_id) for pid, attempt, run_id in rows]

    async def wait_attempts(self, n: int) -> list[tuple[int, int, str]]:
        async def enough() -> list[tuple[int, int, str]] | None:
            log = self.attempt_log()
            return log if len(log) >= n else None

        return await poll_until(enough, seconds=60, what=f"{n} attempt(s) to start")


async def publish(server: ServeProcess) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.post(
            "/api/v1/artifacts", json={"type": "DurJob", "payload": {"n": 1}}
        )
    assert response.status_code == 200, response.text
    return str(response.json()["correlation_id"])


async def wait_idle(server: ServeProcess, correlation_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def idle() -> dict[str, Any] | None:
            status = (await client.get(f"/api/v1/correlations/{correlation_id}")).json()
            return status if status["state"] == "idle" else None

        return await poll_until(idle, seconds=90, what="the correlation to be idle")


async def outputs_and_run(server: ServeProcess, correlation_id: str) -> tuple[list[Any], Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        items = (
            await client.get("/api/v1/artifacts", params={"correlation_id": correlation_id})
        ).json()["items"]
        runs = (await client.get("/api/v1/runs", params={"correlation_id": correlation_id})).json()[
            "items"
        ]
    (run,) = runs
    return [a for a in items if a["type"] == "DurDone"], run


class WorkerProcess:
    """One `flock worker APP --store URL` subprocess, its output in a log file."""

    def __init__(self, app: Path, store: str, log: Path, **env: str) -> None:
        self.log = log
        command = [sys.executable, "-m", "flock.cli", "worker", str(app), "--store", store]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=app.parent, stdout=out, stderr=subprocess.STDOUT, env=server_env(**env)
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited: {self.output()}")
            return "executing runs" in self.output()

        await poll_until(ready, seconds=60, what="the worker to start")

    async def wait_exit(self, seconds: float) -> int:
        async def exited() -> int | None:
            return self.process.poll()

        return await poll_until(exited, seconds=seconds, what="the worker to exit")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
