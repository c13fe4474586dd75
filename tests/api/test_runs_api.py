"""The runs API and cancel over HTTP (in process): what a calling service sees of runs."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Flock, flock_type

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]
TASK, RESULT = f"RunsApiTask_{_SUFFIX}", f"RunsApiResult_{_SUFFIX}"


@flock_type(name=TASK)
class Task(BaseModel):
    mode: str


@flock_type(name=RESULT)
class Result(BaseModel):
    mode: str


def flock_with(engine: Any) -> Flock:
    flock = Flock()
    flock.agent("doer").consumes(Task).publishes(Result).with_engines(engine).retry(
        max_attempts=2, initial_delay=0.01, max_delay=0.01
    )
    return flock


def task(mode: str, **extra: Any) -> dict[str, Any]:
    return {"type": TASK, "payload": {"mode": mode}, **extra}


async def test_a_dead_run_shows_in_the_sync_answer_and_can_be_retried(api_client: Any) -> None:
    broken = {"on": True}

    def doer(t: Task) -> Result:
        if broken["on"]:
            raise ValueError("cannot do it")
        return Result(mode=t.mode)

    client = await api_client(flock_with(doer))
    answer = (await client.post("/api/v1/artifacts/sync", json=task("x"))).json()
    assert answer["completed"] is True
    (error,) = answer["errors"]
    assert error["attempts"] == 2 and error["agent"] == "doer"
    assert error["message"] == "ValueError: cannot do it"

    run = (await client.get(f"/api/v1/runs/{error['run_id']}")).json()
    assert run["state"] == "dead" and run["attempt"] == 2 and run["max_attempts"] == 2
    assert run["input_ids"] == [answer["artifacts"][0]["id"]] and run["usage"] is None
    listed = await client.get("/api/v1/runs", params={"correlation_id": answer["correlation_id"]})
    assert [r["id"] for r in listed.json()["items"]] == [run["id"]]
    assert listed.json()["pagination"]["total"] == 1
    dead = (await client.get("/api/v1/runs", params={"state": "dead"})).json()
    assert [r["id"] for r in dead["items"]] == [run["id"]]

    broken["on"] = False
    retried = await client.post(f"/api/v1/runs/{run['id']}/retry")
    assert retried.status_code == 200 and retried.json()["state"] in {
        "queued",
        "running",
        "succeeded",
    }
    await client.service.flock.run_until_idle(answer["correlation_id"], timeout=10)
    done = (await client.get(f"/api/v1/runs/{run['id']}")).json()
    assert done["state"] == "succeeded" and len(done["output_ids"]) == 1

    again = await client.post(f"/api/v1/runs/{run['id']}/retry")
    assert again.status_code == 409 and again.json()["code"] == "INVALID_STATE"
    assert again.json()["retryable"] is False
    missing = await client.post("/api/v1/runs/no-such-run/retry")
    assert missing.status_code == 404
    assert (await client.get("/api/v1/runs/no-such-run")).status_code == 404
    bad = await client.get("/api/v1/runs", params={"state": "sleeping"})
    assert bad.status_code == 422


async def test_cancel_stops_the_cascade_and_answers_the_same_again(api_client: Any) -> None:
    entered = asyncio.Event()

    async def doer(t: Task) -> Result:
        entered.set()
        await asyncio.sleep(60)
        return Result(mode=t.mode)

    client = await api_client(flock_with(doer))
    accepted = (await client.post("/api/v1/artifacts", json=task("slow"))).json()
    cid = accepted["correlation_id"]
    await entered.wait()
    status = (await client.get(f"/api/v1/correlations/{cid}")).json()
    assert status["state"] == "running" and status["pending_runs"] == 1

    cancelled = await client.post(f"/api/v1/correlations/{cid}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["pending_runs"] == 0
    assert (await client.post(f"/api/v1/correlations/{cid}/cancel")).json()["state"] == "cancelled"
    unknown = await client.post(f"/api/v1/correlations/{uuid.uuid4()}/cancel")
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
    (run,) = (await client.get("/api/v1/runs", params={"correlation_id": cid})).json()["items"]
    assert run["state"] == "cancelled"


async def test_a_sync_call_on_a_cancelled_cascade_returns_completed_false(
    api_client: Any,
) -> None:
    entered = asyncio.Event()

    async def doer(t: Task) -> Result:
        entered.set()
        await asyncio.sleep(60)
        return Result(mode=t.mode)

    client = await api_client(flock_with(doer))
    waiting = asyncio.create_task(client.post("/api/v1/artifacts/sync", json=task("z", timeout=30)))
    await entered.wait()
    (run,) = (await client.get("/api/v1/runs", params={"state": "running"})).json()["items"]

    await client.post(f"/api/v1/correlations/{run['correlation_id']}/cancel")

    answer = (await asyncio.wait_for(waiting, 10)).json()
    assert answer["completed"] is False and answer["correlation_id"] == run["correlation_id"]


async def test_health_answers_while_a_def_engine_blocks(api_client: Any) -> None:
    release = threading.Event()
    started = threading.Event()

    def doer(t: Task) -> Result:
        started.set()
        release.wait(timeout=30)
        return Result(mode=t.mode)

    client = await api_client(flock_with(doer))
    call = asyncio.create_task(client.post("/api/v1/artifacts/sync", json=task("blocking")))
    await asyncio.to_thread(started.wait, 10)

    health = await client.get("/health")  # would wait 30 s if the engine held the loop

    assert health.status_code == 200 and not call.done()
    release.set()
    answer = (await call).json()
    assert answer["completed"] is True and len(answer["artifacts"]) == 2


async def test_the_client_lists_gets_retries_runs_and_cancels(api_client: Any) -> None:
    from flock.client import AsyncFlockClient, FlockAPIError

    def doer(t: Task) -> Result:
        raise ValueError("never")

    client = await api_client(flock_with(doer))
    async with AsyncFlockClient("http://test", transport=client._transport) as flock_client:
        answer = await flock_client.publish_sync(TASK, {"mode": "c"})
        (failure,) = answer.errors
        assert failure.run_id is not None and failure.attempts == 2
        (run,) = await flock_client.list_runs(correlation_id=answer.correlation_id)
        assert run.state == "dead" and run.id == failure.run_id
        assert (await flock_client.get_run(run.id)).attempt == 2
        assert (await flock_client.retry_run(run.id)).state in {"queued", "running", "dead"}
        await client.service.flock.run_until_idle(answer.correlation_id, timeout=10)
        cancelled = await flock_client.cancel(answer.correlation_id)
        assert cancelled.state == "cancelled"
        try:
            await flock_client.retry_run("no-such-run")
        except FlockAPIError as exc:
            assert exc.code == "NOT_FOUND"
        else:
            raise AssertionError("retrying an unknown run did not fail")


NOTE = f"RunsApiNote_{_SUFFIX}"


@flock_type(name=NOTE)
class Note(BaseModel):
    text: str = ""


async def test_past_the_queue_bound_publishes_answer_503_and_store_nothing(
    api_client: Any,
) -> None:
    from flock.core.worker import WorkerSettings

    release = asyncio.Event()

    async def doer(t: Task) -> Result:
        await release.wait()
        return Result(mode=t.mode)

    flock = Flock(worker=WorkerSettings(concurrency=1, max_queued_runs=3))
    flock.agent("doer").consumes(Task).publishes(Result).with_engines(doer)
    client = await api_client(flock)
    for n in range(3):
        assert (await client.post("/api/v1/artifacts", json=task(f"m{n}"))).status_code == 200

    refused = await client.post("/api/v1/artifacts", json=task("one too many"))
    assert refused.status_code == 503 and refused.json()["code"] == "SERVICE_UNAVAILABLE"
    assert refused.json()["retryable"] is True and "Retry-After" in refused.headers
    assert "FLOCK_MAX_QUEUED_RUNS" in refused.json()["message"]
    batch = await client.post(
        "/api/v1/artifacts/batch",
        json={"items": [task("in batch"), {"type": NOTE, "payload": {}}]},
    )
    statuses = [item["status"] for item in batch.json()["items"]]
    assert statuses == ["failed", "accepted"]  # the item that queues no run goes on
    listed = await client.get("/api/v1/artifacts", params={"type": TASK})
    assert listed.json()["pagination"]["total"] == 3  # nothing of the refused ones stored
    release.set()
