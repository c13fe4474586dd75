"""Idempotency across replicas: two `flock serve` processes sharing their stores.

A storm of identical keyed sync requests, split across both servers and fired at once,
must run the cascade exactly once: one input artifact in the shared blackboard, and every
caller gets the same answer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.apps import job_app, write_app
from support.serve import ServeProcess, ServerFactory

pytestmark = [pytest.mark.timeout(90), pytest.mark.services]

STORM = 40
JOB = "IdemMpJob"
DONE = "IdemMpDone"

APP = job_app(
    job=JOB,
    done=DONE,
    done_fields=("n: int", "pid: int"),
    work="""
async def work(job: Job) -> Done:
    await asyncio.sleep(0.2)  # the workload: long enough for duplicates to overlap
    return Done(n=job.n, pid=os.getpid())
""",
)


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    return write_app(tmp_path, "mp_app.py", APP)


async def total(client: httpx.AsyncClient, base: str, type_name: str) -> int:
    response = await client.get(f"{base}/api/v1/artifacts", params={"type": type_name})
    assert response.status_code == 200, response.text
    return int(response.json()["pagination"]["total"])


async def storm_two_servers(serve: ServerFactory, app: Path, store: str, idempotency: str) -> None:
    first = serve(app, store=store, idempotency=idempotency)
    second = serve(app, store=store, idempotency=idempotency)
    await asyncio.gather(first.wait_healthy(), second.wait_healthy())
    await storm((first, second))


async def storm(servers: Sequence[ServeProcess]) -> None:
    """STORM identical keyed sync calls at once, spread over `servers`: one execution."""
    key = f"storm-{uuid.uuid4().hex}"
    body = {"type": JOB, "payload": {"n": 7}, "timeout": 60}

    limits = httpx.Limits(max_connections=STORM)
    async with httpx.AsyncClient(timeout=90, limits=limits) as client:

        async def call(i: int) -> httpx.Response:
            base = servers[i % len(servers)].url
            return await client.post(
                f"{base}/api/v1/artifacts/sync", json=body, headers={"Idempotency-Key": key}
            )

        responses = await asyncio.gather(*(call(i) for i in range(STORM)))
        counts = [
            await total(client, server.url, type_name)
            for server in servers[:2]
            for type_name in (JOB, DONE)
        ]

    assert [r.status_code for r in responses] == [200] * STORM, [r.text for r in responses]
    bodies: list[dict[str, Any]] = [r.json() for r in responses]
    assert len({b["correlation_id"] for b in bodies}) == 1
    assert all(b["completed"] is True for b in bodies)
    artifacts = bodies[0]["artifacts"]
    assert [a["type"] for a in artifacts] == [JOB, DONE]
    assert all(b["artifacts"] == artifacts for b in bodies)
    assert len({r.content for r in responses}) == 1  # replays are the stored bytes
    assert sum(r.headers.get("idempotent-replayed") != "true" for r in responses) == 1
    assert set(counts) == {1}  # one input, one output, as every server sees the board


async def test_a_storm_across_two_servers_sharing_postgres(
    serve: ServerFactory, app_file: Path, postgres_url: str, pg_schema: str
) -> None:
    shared = f"{postgres_url}?schema={pg_schema}"
    await storm_two_servers(serve, app_file, store=shared, idempotency=shared)


async def test_a_storm_across_two_servers_sharing_redis_keys(
    serve: ServerFactory, app_file: Path, shared_store_urls: dict[str, str]
) -> None:
    await storm_two_servers(serve, app_file, **shared_store_urls)


def child_pids(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


async def test_a_storm_on_one_server_with_two_workers(
    serve: ServerFactory, app_file: Path, shared_store_urls: dict[str, str]
) -> None:
    async with serve(app_file, **shared_store_urls, workers=2) as server:
        assert len(child_pids(server.pid)) >= 2, server.output()  # uvicorn's two workers
        await storm((server,))
