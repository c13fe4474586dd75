"""The FLOCK_* settings through `flock serve`, and `Flock.serve()`, in real server processes.

`flock serve APP` runs here with no option at all: address, stores, body limit and
idempotency TTL all come from the environment, and each is seen taking effect over HTTP.
`Flock.serve()` is what an app calls to serve itself; a small script does just that.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.apps import job_app, write_app
from support.contract import check_response_contract
from support.polling import poll_until
from support.serve import ServeProcess

pytestmark = pytest.mark.timeout(120)

JOB = "SettingsEnvJob"
DONE = "SettingsEnvDone"
APP = job_app(job=JOB, done=DONE)
PUBLISH = "/api/v1/artifacts"
# Not the default host: a server answering there, and only there, read FLOCK_HOST.
HOST = "127.0.0.2"
BODY_LIMIT = 2048
TTL_SECONDS = 3.0

SERVE_SCRIPT = (
    APP
    + """

if __name__ == "__main__":
    import argparse

    options = argparse.ArgumentParser()
    options.add_argument("--host", required=True)
    options.add_argument("--port", type=int, required=True)
    given = options.parse_args()
    flock.serve(given.host, given.port)
"""
)


@contextlib.asynccontextmanager
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    hooks = {"response": [check_response_contract]}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, event_hooks=hooks) as client:
        yield client


def job(n: int, **extra: object) -> dict[str, object]:
    return {"type": JOB, "payload": {"n": n, **extra}}


def first_column(database: Path, query: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute(query)]


async def test_flock_serve_takes_every_setting_from_the_environment(tmp_path: Path) -> None:
    app = write_app(tmp_path, "settings_app.py", APP)
    blackboard = tmp_path / "data" / "blackboard.db"
    idempotency = tmp_path / "data" / "idempotency.db"
    env = {
        "FLOCK_STORE": f"sqlite:///{blackboard}",
        "FLOCK_IDEMPOTENCY": f"sqlite:///{idempotency}",
        "FLOCK_MAX_BODY_BYTES": str(BODY_LIMIT),
        "FLOCK_IDEMPOTENCY_TTL": str(TTL_SECONDS),
    }
    key = {"Idempotency-Key": f"settings-{uuid.uuid4().hex}"}
    server = ServeProcess(app.name, cwd=tmp_path, env=env, host=HOST, address_in_env=True)

    async with server, http(server.url) as client:
        assert server.process.args == [sys.executable, "-m", "flock.cli", "serve", app.name]
        # FLOCK_HOST and FLOCK_PORT: healthy on HOST at that port (entering waited for it),
        # while the default host refuses connections on it.
        assert (await client.get("/health")).json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{server.port}/health")

        # FLOCK_MAX_BODY_BYTES: far below the 1 MiB default.
        small = await client.post(PUBLISH, json=job(1, pad="x" * (BODY_LIMIT // 2)))
        assert small.status_code == 200, small.text
        too_big = await client.post(PUBLISH, json=job(1, pad="x" * BODY_LIMIT))
        assert too_big.status_code == 413
        assert too_big.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert str(BODY_LIMIT) in too_big.json()["message"]

        # FLOCK_STORE and FLOCK_IDEMPOTENCY: the SQLite files named there, nothing elsewhere.
        started = time.time()
        first = await client.post(PUBLISH, json=job(7), headers=key)
        assert first.status_code == 200, first.text
        assert blackboard.is_file() and idempotency.is_file()
        assert not (tmp_path / ".flock").exists()

        # FLOCK_IDEMPOTENCY_TTL: the key replays, then once its outcome expired runs anew.
        replay = await client.post(PUBLISH, json=job(7), headers=key)
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.content == first.content

        async def run_anew() -> tuple[float, httpx.Response] | None:
            response = await client.post(PUBLISH, json=job(7), headers=key)
            if response.headers.get("idempotent-replayed") == "true":
                return None
            return time.time(), response

        answered_at, anew = await poll_until(
            run_anew, seconds=TTL_SECONDS + 30, what="the key's outcome to expire", interval=0.1
        )
        assert anew.status_code == 200, anew.text
        assert answered_at - started >= TTL_SECONDS
        assert anew.json()["artifact_id"] != first.json()["artifact_id"]

    ids = {small.json()["artifact_id"], first.json()["artifact_id"], anew.json()["artifact_id"]}
    jobs = first_column(blackboard, f"SELECT id FROM artifacts WHERE type = '{JOB}'")
    assert sorted(jobs) == sorted(ids)
    # One record: the key's (stored hashed), its expired outcome replaced by the new one.
    assert first_column(idempotency, "SELECT count(*) FROM flock_idempotency") == [1]


@pytest.fixture
def serve_script(tmp_path: Path) -> Iterator[ServeProcess]:
    """`python serve_api.py --host 127.0.0.1 --port <free port>`: an app calling
    `Flock.serve()` (started, not yet waited for; stopped after the test)."""
    script = write_app(tmp_path, "serve_api.py", SERVE_SCRIPT)
    server = ServeProcess(cwd=tmp_path, program=[script.name])
    try:
        yield server
    finally:
        server.stop()


async def test_flock_serve_method_answers_health_and_a_publish(
    serve_script: ServeProcess,
) -> None:
    async with serve_script as server, http(server.url) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        response = await client.post(f"{PUBLISH}/sync", json=job(41))
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True
        assert [a["payload"] for a in response.json()["artifacts"]] == [{"n": 41}, {"n": 42}]

        server.terminate()
        await server.wait_exit(30)
    assert "Application shutdown complete" in server.output()


async def test_flock_serve_method_exits_0_on_sigterm(serve_script: ServeProcess) -> None:
    async with serve_script as server:
        server.terminate()
        assert await server.wait_exit(30) == 0
