"""Idempotency through crashes: `flock serve` killed with SIGKILL, restarted on its files.

A claim left by a killed process expires after its lease; the retry then re-attaches to
what was already published instead of publishing again. A completed outcome stored in
SQLite is replayed by the restarted server.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from support.apps import job_app, write_app
from support.contract import check_response_contract
from support.serve import ServerFactory

pytestmark = pytest.mark.timeout(90)

JOB = "IdemCrashJob"
DONE = "IdemCrashDone"
# Every response, the 409 conflict among them, is checked against the error contract.
CONTRACT_CHECK = {"response": [check_response_contract]}

APP = job_app(
    job=JOB,
    done=DONE,
    agent="doubler",
    work="""
async def work(job: Job) -> Done:
    if os.environ.get("CRASH_AGENT_BLOCKS") == "1":
        await asyncio.Event().wait()  # this server will be killed mid-cascade
    return Done(n=job.n * 2)
""",
)


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    return write_app(tmp_path, "crash_app.py", APP)


def sqlite_urls(tmp_path: Path) -> dict[str, str]:
    return {
        "store": f"sqlite:///{tmp_path / 'blackboard.db'}",
        "idempotency": f"sqlite:///{tmp_path / 'idempotency.db'}",
    }


async def artifacts_of(client: httpx.AsyncClient, base: str, type_name: str) -> list[dict]:  # type: ignore[type-arg]
    response = await client.get(f"{base}/api/v1/artifacts", params={"type": type_name})
    assert response.status_code == 200, response.text
    items: list[dict] = response.json()["items"]  # type: ignore[type-arg]
    return items


async def test_a_retry_after_sigkill_resumes_the_published_cascade(
    serve: ServerFactory, app_file: Path, tmp_path: Path
) -> None:
    urls = sqlite_urls(tmp_path)
    key = {"X-Idempotency-Key": f"crash-{uuid.uuid4().hex}"}
    body = {"type": JOB, "payload": {"n": 21}, "timeout": 30}
    doomed = serve(app_file, **urls, FLOCK_IDEMPOTENCY_LEASE="1", CRASH_AGENT_BLOCKS="1")
    await doomed.wait_healthy()

    async with httpx.AsyncClient(timeout=60, event_hooks=CONTRACT_CHECK) as client:
        inflight = asyncio.ensure_future(
            client.post(f"{doomed.url}/api/v1/artifacts/sync", json=body, headers=key)
        )
        deadline = asyncio.get_running_loop().time() + 15
        while not (published := await artifacts_of(client, doomed.url, JOB)):
            assert not inflight.done(), inflight.result().text
            assert asyncio.get_running_loop().time() < deadline, "the input was never stored"
            await asyncio.sleep(0.02)
        doomed.kill()
        lease_lapsed = asyncio.get_running_loop().time() + 1.2
        with pytest.raises(httpx.TransportError):
            await inflight

        restarted = serve(app_file, **urls, FLOCK_IDEMPOTENCY_LEASE="1")
        await restarted.wait_healthy()
        # The abandoned claim stays bound to its body: another body cannot take it over.
        await asyncio.sleep(max(0.0, lease_lapsed - asyncio.get_running_loop().time()))
        other_body = {**body, "payload": {"n": 22}}
        conflict = await client.post(
            f"{restarted.url}/api/v1/artifacts/sync", json=other_body, headers=key
        )
        retry = await client.post(f"{restarted.url}/api/v1/artifacts/sync", json=body, headers=key)
        replay = await client.post(f"{restarted.url}/api/v1/artifacts/sync", json=body, headers=key)
        jobs = await artifacts_of(client, restarted.url, JOB)
        dones = await artifacts_of(client, restarted.url, DONE)

    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["code"] == "IDEMPOTENCY_CONFLICT"
    assert retry.status_code == 200, retry.text
    result = retry.json()
    assert result["completed"] is True
    (input_artifact,) = published
    assert result["correlation_id"] == input_artifact["correlation_id"]
    assert [a["type"] for a in result["artifacts"]] == [JOB, DONE]
    assert result["artifacts"][0]["id"] == input_artifact["id"]
    assert result["artifacts"][1]["payload"] == {"n": 42}
    assert [j["id"] for j in jobs] == [input_artifact["id"]]  # never published twice
    assert len(dones) == 1
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == retry.content


async def test_a_stored_outcome_survives_a_restart(
    serve: ServerFactory, app_file: Path, tmp_path: Path
) -> None:
    urls = sqlite_urls(tmp_path)
    key = {"Idempotency-Key": f'"restart-{uuid.uuid4().hex}"'}
    body = {"type": JOB, "payload": {"n": 5}}
    first_server = serve(app_file, **urls)
    await first_server.wait_healthy()

    async with httpx.AsyncClient(timeout=60, event_hooks=CONTRACT_CHECK) as client:
        first = await client.post(
            f"{first_server.url}/api/v1/artifacts/sync", json=body, headers=key
        )
        assert first.status_code == 200 and first.json()["completed"] is True
        first_server.kill()

        second_server = serve(app_file, **urls)
        await second_server.wait_healthy()
        replay = await client.post(
            f"{second_server.url}/api/v1/artifacts/sync", json=body, headers=key
        )
        jobs = await artifacts_of(client, second_server.url, JOB)

    assert "idempotent-replayed" not in first.headers
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.status_code == 200
    assert replay.content == first.content
    assert len(jobs) == 1
