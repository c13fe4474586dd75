"""Open groups with real `flock serve` processes sharing one store (SQLite file or
PostgreSQL): last parts racing on two replicas make one run each, and a batch whose
first part reached a process that was then killed still runs from the other one."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.apps import write_app
from support.polling import poll_until
from support.serve import ServerFactory

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

_SUFFIX = uuid.uuid4().hex[:6]
ORDER, PAYMENT, SHIPMENT = (f"Proc{n}_{_SUFFIX}" for n in ("Order", "Payment", "Shipment"))
EVENT, DIGEST = f"ProcEvent_{_SUFFIX}", f"ProcDigest_{_SUFFIX}"

APP = f"""
from pydantic import BaseModel

from flock import BatchSpec, Flock, JoinSpec, flock_type


@flock_type(name="{ORDER}")
class Order(BaseModel):
    order_id: str


@flock_type(name="{PAYMENT}")
class Payment(BaseModel):
    order_id: str
    amount: int


@flock_type(name="{SHIPMENT}")
class Shipment(BaseModel):
    order_id: str
    amount: int


@flock_type(name="{EVENT}")
class Event(BaseModel):
    n: int


@flock_type(name="{DIGEST}")
class Digest(BaseModel):
    ns: list[int]


def ship(order: Order, payment: Payment) -> Shipment:
    return Shipment(order_id=order.order_id, amount=payment.amount)


def digest(events: list[Event]) -> Digest:
    return Digest(ns=sorted(e.n for e in events))


flock = Flock()
flock.agent("shipper").consumes(
    Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=120)
).publishes(Shipment).with_engines(ship)
flock.agent("digest").consumes(Event, batch=BatchSpec(size=100, timeout=3)).publishes(
    Digest
).with_engines(digest)
"""


async def _total(client: httpx.AsyncClient, path: str, **params: Any) -> int:
    response = await client.get(path, params={**params, "limit": 1})
    assert response.status_code == 200, response.text
    return int(response.json()["pagination"]["total"])


async def test_last_parts_racing_on_two_replicas_make_one_run_each(
    serve: ServerFactory, tmp_path: Path, durable_store: str
) -> None:
    app = write_app(tmp_path, "groups_app.py", APP)
    replicas = [serve(app, store=durable_store, idempotency="memory://") for _ in range(2)]
    for replica in replicas:
        await replica.wait_healthy()
    ids = [f"o-{n}" for n in range(20)]
    async with (
        httpx.AsyncClient(base_url=replicas[0].url, timeout=30) as first,
        httpx.AsyncClient(base_url=replicas[1].url, timeout=30) as second,
    ):
        sent = await asyncio.gather(
            *(
                call
                for order_id in ids
                for call in (
                    first.post(
                        "/api/v1/artifacts",
                        json={"type": ORDER, "payload": {"order_id": order_id}},
                    ),
                    second.post(
                        "/api/v1/artifacts",
                        json={"type": PAYMENT, "payload": {"order_id": order_id, "amount": 1}},
                    ),
                )
            )
        )
        assert all(r.status_code == 200 for r in sent), [r.text for r in sent]

        async def shipped() -> bool:
            return await _total(second, "/api/v1/artifacts", type=SHIPMENT) >= len(ids)

        await poll_until(shipped, seconds=90, what="a Shipment per order")
        listing = await first.get("/api/v1/artifacts", params={"type": SHIPMENT, "limit": 100})
        shipments = [a["payload"]["order_id"] for a in listing.json()["items"]]
        assert sorted(shipments) == sorted(ids)  # each once
        runs = await first.get("/api/v1/runs", params={"agent": "shipper", "limit": 100})
        items = runs.json()["items"]
        assert len(items) == len(ids) and {r["state"] for r in items} == {"succeeded"}
        agents = {a["name"]: a for a in (await second.get("/api/v1/agents")).json()["agents"]}
        assert agents["shipper"]["open_groups"] == 0


async def test_a_batch_timeout_fires_in_the_replica_that_is_still_alive(
    serve: ServerFactory, tmp_path: Path, durable_store: str
) -> None:
    app = write_app(tmp_path, "groups_app.py", APP)
    doomed = serve(app, store=durable_store, idempotency="memory://")
    survivor = serve(app, store=durable_store, idempotency="memory://")
    await doomed.wait_healthy()
    await survivor.wait_healthy()
    async with httpx.AsyncClient(base_url=doomed.url, timeout=30) as client:
        accepted = await client.post("/api/v1/artifacts", json={"type": EVENT, "payload": {"n": 7}})
        assert accepted.status_code == 200, accepted.text
    doomed.kill()  # long before the batch's 3 s timeout
    cid = accepted.json()["correlation_id"]
    async with httpx.AsyncClient(base_url=survivor.url, timeout=30) as client:
        status = (await client.get(f"/api/v1/correlations/{cid}")).json()
        assert status["waiting_artifacts"] == 1

        async def digested() -> bool:
            return await _total(client, "/api/v1/artifacts", type=DIGEST) >= 1

        await poll_until(digested, seconds=60, what="the batch to run on the survivor")
        answer = await client.get("/api/v1/artifacts", params={"type": DIGEST})
        (digest,) = answer.json()["items"]
        assert digest["payload"]["ns"] == [7] and digest["correlation_id"] == cid
        status = (await client.get(f"/api/v1/correlations/{cid}")).json()
        assert (status["state"], status["waiting_artifacts"]) == ("idle", 0)
