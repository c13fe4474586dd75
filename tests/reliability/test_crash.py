"""A server killed with SIGKILL in the middle of a keyed sync call, on persistent stores.

The agent of the app blocks until a marker file exists, so the killed server dies with the
call's input artifact stored and its cascade unfinished. A new server on the same stores,
with the marker present, answers the retry (same key, after the 1 s lease) by resuming
that cascade: one input artifact, completed=true, the downstream output present. Every
artifact accepted before the kill is still there.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.apps import job_app, work_after_marker, write_app
from support.polling import poll_until
from support.serve import ServerFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

JOB = "CrashJob"
DONE = "CrashDone"
APP = job_app(job=JOB, done=DONE, agent="doubler", work=work_after_marker("job.n * 2"))

KEYED_N = 21
ACCEPTED = 5  # async publishes made before the kill


async def jobs(client: httpx.AsyncClient, base: str) -> list[dict[str, Any]]:
    response = await client.get(f"{base}/api/v1/artifacts", params={"type": JOB, "limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def crash_and_retry(
    serve: ServerFactory, tmp_path: Path, store: str, idempotency: str
) -> None:
    marker = tmp_path / "release.marker"
    app = write_app(tmp_path, "crash_app.py", APP)
    env = {"FLOCK_IDEMPOTENCY_LEASE": "1", "RELIABILITY_MARKER": str(marker)}
    key = {"Idempotency-Key": f"crash-{uuid.uuid4().hex}"}
    body = {"type": JOB, "payload": {"n": KEYED_N}, "timeout": 60}

    doomed = serve(app, store=store, idempotency=idempotency, **env)
    await doomed.wait_healthy()
    async with httpx.AsyncClient(timeout=90) as client:
        accepted: dict[str, int] = {}
        for i in range(ACCEPTED):
            n = 1000 + i
            response = await client.post(
                f"{doomed.url}/api/v1/artifacts", json={"type": JOB, "payload": {"n": n}}
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "accepted"
            accepted[response.json()["artifact_id"]] = n

        inflight = asyncio.ensure_future(
            client.post(f"{doomed.url}/api/v1/artifacts/sync", json=body, headers=key)
        )

        async def keyed_input_stored() -> dict[str, Any] | None:
            assert not inflight.done(), "the sync call ended before the kill"
            found = [j for j in await jobs(client, doomed.url) if j["payload"]["n"] == KEYED_N]
            return found[0] if found else None

        stored = await poll_until(keyed_input_stored, seconds=30, what="the keyed input")
        doomed.kill()
        with pytest.raises(httpx.TransportError):
            await inflight

        marker.touch()
        restarted = serve(app, store=store, idempotency=idempotency, **env)
        await restarted.wait_healthy()
        # The killed holder's claim lapses after its 1 s lease; the retry waits for that
        # (up to its own timeout), takes the claim over and resumes the stored cascade.
        sync_url = f"{restarted.url}/api/v1/artifacts/sync"
        retry = await client.post(sync_url, json=body, headers=key)
        replay = await client.post(sync_url, json=body, headers=key)
        after = await jobs(client, restarted.url)
        survivors = {
            artifact_id: await client.get(f"{restarted.url}/api/v1/artifacts/{artifact_id}")
            for artifact_id in accepted
        }

    assert retry.status_code == 200, retry.text
    result = retry.json()
    assert result["completed"] is True, result
    assert result["correlation_id"] == stored["correlation_id"]
    assert [a["type"] for a in result["artifacts"]] == [JOB, DONE]
    assert result["artifacts"][0]["id"] == stored["id"]
    assert result["artifacts"][1]["payload"] == {"n": KEYED_N * 2}
    assert result["errors"] == []
    assert [j["id"] for j in after if j["payload"]["n"] == KEYED_N] == [stored["id"]]
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["artifacts"] == result["artifacts"]
    for artifact_id, n in accepted.items():
        response = survivors[artifact_id]
        assert response.status_code == 200, f"accepted artifact {artifact_id} lost"
        assert response.json()["payload"] == {"n": n}
    assert len(after) == ACCEPTED + 1


async def test_sigkill_mid_sync_call_on_sqlite(serve: ServerFactory, tmp_path: Path) -> None:
    await crash_and_retry(
        serve,
        tmp_path,
        store=f"sqlite:///{tmp_path / 'blackboard.db'}",
        idempotency=f"sqlite:///{tmp_path / 'idempotency.db'}",
    )


@pytest.mark.services
async def test_sigkill_mid_sync_call_on_postgres(
    serve: ServerFactory, tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    shared = f"{postgres_url}?schema={pg_schema}"
    await crash_and_retry(serve, tmp_path, store=shared, idempotency=shared)
