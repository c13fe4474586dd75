"""AND gates, joins and batches over HTTP (in process): what a calling service sees of
artifacts waiting in open groups."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from flock import BatchSpec, Flock, JoinSpec, flock_type
from support.polling import poll_until

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]
DRAFT, CHECK, REVIEW = (f"GApi{n}_{_SUFFIX}" for n in ("Draft", "Check", "Review"))
ORDER, PAYMENT = f"GApiOrder_{_SUFFIX}", f"GApiPayment_{_SUFFIX}"
TOPIC = f"GApiTopic_{_SUFFIX}"


@flock_type(name=TOPIC)
class Topic(BaseModel):
    name: str


@flock_type(name=DRAFT)
class Draft(BaseModel):
    text: str


@flock_type(name=CHECK)
class Check(BaseModel):
    ok: bool


@flock_type(name=REVIEW)
class Review(BaseModel):
    text: str
    ok: bool


@flock_type(name=ORDER)
class Order(BaseModel):
    order_id: str


@flock_type(name=PAYMENT)
class Payment(BaseModel):
    order_id: str


def _review(draft: Draft, check: Check) -> Review:
    return Review(text=draft.text, ok=check.ok)


async def test_a_sync_call_returns_once_the_gate_ran(api_client: Any) -> None:
    """A Topic makes a Draft and (slowly) a Check side by side; the reviewer's AND gate
    holds the Draft until the Check is there, and the correlation reads running."""
    flock = Flock()
    release = threading.Event()

    def check(topic: Topic) -> Check:
        assert release.wait(30)
        return Check(ok=True)

    flock.agent("drafter").consumes(Topic).publishes(Draft).with_engines(
        lambda t: Draft(text=t.name)
    )
    flock.agent("checker").consumes(Topic).publishes(Check).with_engines(check)
    flock.agent("reviewer").consumes(Draft, Check).publishes(Review).with_engines(_review)
    client = await api_client(flock)

    accepted = await client.post(
        "/api/v1/artifacts", json={"type": TOPIC, "payload": {"name": "t"}}
    )
    assert accepted.status_code == 200, accepted.text
    cid = accepted.json()["correlation_id"]

    async def draft_waits() -> dict[str, Any] | None:
        status = dict((await client.get(f"/api/v1/correlations/{cid}")).json())
        return status if status["waiting_artifacts"] == 1 else None

    status = await poll_until(draft_waits, seconds=30, what="the Draft waits in the gate")
    assert status["state"] == "running" and status["pending_runs"] == 1  # the checker
    (reviewer,) = [
        a for a in (await client.get("/api/v1/agents")).json()["agents"] if a["name"] == "reviewer"
    ]
    assert reviewer["open_groups"] == 1
    assert reviewer["subscriptions"][0]["types"] == [DRAFT, CHECK]
    assert reviewer["subscriptions"][0]["mode"] == "and"

    release.set()
    answer = await client.post(
        "/api/v1/artifacts/sync", json={"type": TOPIC, "payload": {"name": "u"}, "timeout": 10}
    )
    body = answer.json()
    assert answer.status_code == 200 and body["completed"] is True, body
    reviews = [a for a in body["artifacts"] if a["type"] == REVIEW]
    assert [r["payload"] for r in reviews] == [{"text": "u", "ok": True}]

    async def idle() -> dict[str, Any] | None:
        status = dict((await client.get(f"/api/v1/correlations/{cid}")).json())
        return status if status["state"] == "idle" else None

    status = await poll_until(idle, seconds=30, what="the first cascade ends")
    assert status["waiting_artifacts"] == 0
    runs = await client.get("/api/v1/runs", params={"correlation_id": cid, "agent": "reviewer"})
    (run,) = runs.json()["items"]
    draft = (await client.get(f"/api/v1/artifacts/{run['input_ids'][0]}")).json()
    assert draft["type"] == DRAFT and len(run["input_ids"]) == 2  # declared order


async def test_an_expired_join_is_an_error_of_the_sync_answer(api_client: Any) -> None:
    flock = Flock()
    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=0.2)
    ).with_engines(lambda order, payment: None)
    client = await api_client(flock)
    answer = await client.post(
        "/api/v1/artifacts/sync",
        json={"type": ORDER, "payload": {"order_id": "x"}, "timeout": 10},
    )
    body = answer.json()
    assert body["completed"] is True, body
    (error,) = body["errors"]
    assert error["agent"] == "shipper" and "dropped" in error["message"]


async def test_a_batch_answers_each_sync_caller(api_client: Any) -> None:
    flock = Flock()
    seen: list[list[str]] = []

    def gather(orders: list[Order]) -> None:
        seen.append([o.order_id for o in orders])

    flock.agent("gather").consumes(Order, batch=BatchSpec(size=2, timeout=5)).with_engines(gather)
    client = await api_client(flock)
    first = await client.post(
        "/api/v1/artifacts/sync", json={"type": ORDER, "payload": {"order_id": "a"}, "timeout": 1}
    )
    assert first.json()["completed"] is False  # its batch is not full, nor timed out
    second = await client.post(
        "/api/v1/artifacts/sync", json={"type": ORDER, "payload": {"order_id": "b"}, "timeout": 10}
    )
    assert second.json()["completed"] is True
    assert seen == [["a", "b"]]
    agents = (await client.get("/api/v1/agents")).json()["agents"]
    assert agents[0]["subscriptions"][0]["batch"] == {"size": 2, "timeout": 5.0}


async def test_a_direct_run_of_a_gate_needs_all_its_inputs(api_client: Any) -> None:
    flock = Flock()
    flock.agent("reviewer").consumes(Draft, Check).publishes(Review).with_engines(_review)
    client = await api_client(flock)
    alone = await client.post(
        "/api/v1/agents/reviewer/run", json={"inputs": [{"type": DRAFT, "payload": {"text": "x"}}]}
    )
    assert alone.status_code == 422, alone.text
    assert alone.json()["code"] == "VALIDATION_ERROR"
    both = await client.post(
        "/api/v1/agents/reviewer/run",
        json={
            "inputs": [
                {"type": CHECK, "payload": {"ok": False}},  # not in declared order
                {"type": DRAFT, "payload": {"text": "x"}},
            ]
        },
    )
    assert both.status_code == 200, both.text
    (review,) = both.json()["artifacts"]
    assert review["payload"] == {"text": "x", "ok": False}
