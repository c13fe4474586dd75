"""Tenant isolation over HTTP, on every store: a tenant's key writes and reads its tenant only.

Two tenants share one app of shared agents (no `tenant(...)`). Whatever tenant A publishes
(async, sync, batch, direct runs) runs its cascade and stays A's: B's key sees none of it on
any read route, cannot write into A's scope, and is never replayed A's answers.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Flock, PublicVisibility, flock_type
from flock.api.auth import APIKeyring
from flock.core.store import BlackboardStore
from support.stores import BACKENDS, open_store

pytestmark = pytest.mark.timeout(120)

_SUFFIX = uuid.uuid4().hex[:8]
ORDER, INVOICE = f"TenApiOrder_{_SUFFIX}", f"TenApiInvoice_{_SUFFIX}"
A = {"Authorization": "Bearer tenant-a-key-1"}
B = {"X-API-Key": "tenant-b-key-2"}
B_ALICE = {"X-API-Key": "tenant-b-alice-3"}  # the same principal name as A's key
ADMIN = {"X-API-Key": "no-tenant-key-4"}
KEYS = {
    "keys": [
        {"key": "tenant-a-key-1", "principal": "alice", "tenant": "a"},
        {"key": "tenant-b-key-2", "principal": "bob", "tenant": "b"},
        {"key": "tenant-b-alice-3", "principal": "alice", "tenant": "b"},
        {"key": "no-tenant-key-4", "principal": "ops"},
    ]
}


@flock_type(name=ORDER)
class Order(BaseModel):
    sku: str


@flock_type(name=INVOICE)
class Invoice(BaseModel):
    sku: str


def shop(store: BlackboardStore) -> Flock:
    flock = Flock(store=store)
    flock.agent("biller").consumes(Order).publishes(Invoice).with_engines(
        lambda order: Invoice(sku=order.sku)
    )
    return flock


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlackboardStore:
    return open_store(str(request.param), request, tmp_path)


def order(sku: str = "42", **extra: Any) -> dict[str, Any]:
    return {"type": ORDER, "payload": {"sku": sku}, **extra}


async def client_for(api_client: Any, store: BlackboardStore) -> Any:
    return await api_client(shop(store), api_keys=APIKeyring.from_dict(KEYS))


async def test_a_tenants_cascade_runs_and_only_it_sees_it(
    api_client: Any, store: BlackboardStore
) -> None:
    client = await client_for(api_client, store)

    sync = await client.post("/api/v1/artifacts/sync", json=order(), headers=A)
    body = sync.json()
    cid = body["correlation_id"]
    ids = [a["id"] for a in body["artifacts"]]

    assert body["completed"] and body["errors"] == []
    assert [a["type"] for a in body["artifacts"]] == [ORDER, INVOICE]
    assert {a["visibility"]["tenant_id"] for a in body["artifacts"]} == {"a"}
    for headers in (B, B_ALICE, ADMIN):
        listed = await client.get(
            "/api/v1/artifacts", params={"correlation_id": cid}, headers=headers
        )
        summary = await client.get("/api/v1/artifacts/summary", headers=headers)
        everything = await client.get("/api/v1/artifacts", headers=headers)
        status = await client.get(f"/api/v1/correlations/{cid}", headers=headers)
        assert listed.json()["pagination"]["total"] == 0, headers
        assert summary.json()["total"] == 0, headers
        assert everything.json()["items"] == [], headers
        assert status.status_code == 404, headers
        for artifact_id in ids:
            got = await client.get(f"/api/v1/artifacts/{artifact_id}", headers=headers)
            assert got.status_code == 404, headers
    mine = await client.get("/api/v1/artifacts", params={"correlation_id": cid}, headers=A)
    assert mine.json()["pagination"]["total"] == 2
    assert (await client.get(f"/api/v1/correlations/{cid}", headers=A)).status_code == 200


@pytest.mark.parametrize(
    "visibility",
    [
        {"kind": "Tenant", "tenant_id": "b"},
        {"kind": "Public"},
        {"kind": "Private", "agents": ["bob"]},
        {"kind": "Labelled", "required_labels": []},
    ],
)
async def test_a_tenant_cannot_write_outside_its_scope(
    api_client: Any, store: BlackboardStore, visibility: dict[str, Any]
) -> None:
    client = await client_for(api_client, store)
    body = order(visibility=visibility)

    for path in ("/api/v1/artifacts", "/api/v1/artifacts/sync"):
        refused = await client.post(path, json=body, headers=A)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["code"] == "FORBIDDEN"
        assert [d["field"] for d in refused.json()["details"]] == ["visibility"]
    batch = await client.post("/api/v1/artifacts/batch", json={"items": [body, order()]}, headers=A)
    bad, good = batch.json()["items"]
    assert bad["status"] == "failed" and bad["error"]["status"] == 403
    assert [d["field"] for d in bad["error"]["details"]] == ["items[0].visibility"]
    assert good["status"] == "accepted"

    await client.service.flock.run_until_idle(timeout=30)
    for headers in (B, ADMIN):
        assert (await client.get("/api/v1/artifacts", headers=headers)).json()["items"] == []
    own = await client.get("/api/v1/artifacts", headers=A)
    assert own.json()["pagination"]["total"] == 2  # the batch's good item and its invoice


async def test_naming_its_own_tenant_is_allowed(api_client: Any, store: BlackboardStore) -> None:
    client = await client_for(api_client, store)
    visibility = {"kind": "Tenant", "tenant_id": "a"}

    sync = await client.post("/api/v1/artifacts/sync", json=order(visibility=visibility), headers=A)

    assert sync.status_code == 200
    assert [a["type"] for a in sync.json()["artifacts"]] == [ORDER, INVOICE]


async def test_batch_with_wait_and_direct_runs_stay_in_the_tenant(
    api_client: Any, store: BlackboardStore
) -> None:
    client = await client_for(api_client, store)

    batch = await client.post(
        "/api/v1/artifacts/batch", json={"wait": True, "items": [order("1")]}, headers=A
    )
    run = await client.post("/api/v1/agents/biller/run", json={"inputs": [order("2")]}, headers=A)

    (item,) = batch.json()["items"]
    assert [a["type"] for a in item["artifacts"]] == [ORDER, INVOICE]
    (invoice,) = run.json()["artifacts"]
    assert invoice["visibility"] == {"kind": "Tenant", "tenant_id": "a"}
    for artifact_id in (invoice["id"], item["artifacts"][1]["id"]):
        assert (await client.get(f"/api/v1/artifacts/{artifact_id}", headers=B)).status_code == 404
        assert (await client.get(f"/api/v1/artifacts/{artifact_id}", headers=A)).status_code == 200


async def test_a_tenant_bound_agent_serves_its_tenant_only(
    api_client: Any, store: BlackboardStore
) -> None:
    flock = shop(store)
    flock.agent("b_only").tenant("b").consumes(Order).publishes(Invoice).with_engines(
        lambda order: Invoice(sku=order.sku)
    )
    client = await api_client(flock, api_keys=APIKeyring.from_dict(KEYS))

    refused = await client.post("/api/v1/agents/b_only/run", json={"inputs": [order()]}, headers=A)
    served = await client.post("/api/v1/agents/b_only/run", json={"inputs": [order()]}, headers=B)
    listed_a = (await client.get("/api/v1/agents", headers=A)).json()["agents"]
    listed_b = (await client.get("/api/v1/agents", headers=B)).json()["agents"]

    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    assert served.status_code == 200 and len(served.json()["artifacts"]) == 1
    assert [a["name"] for a in listed_a] == ["biller"]
    assert sorted(a["name"] for a in listed_b) == ["b_only", "biller"]


async def test_the_same_idempotency_key_is_never_replayed_across_tenants(
    api_client: Any, store: BlackboardStore
) -> None:
    client = await client_for(api_client, store)
    key = {"Idempotency-Key": "same-key"}

    first = await client.post("/api/v1/artifacts/sync", json=order(), headers={**A, **key})
    other = await client.post("/api/v1/artifacts/sync", json=order(), headers={**B_ALICE, **key})
    again = await client.post("/api/v1/artifacts/sync", json=order(), headers={**A, **key})

    assert "idempotent-replayed" not in other.headers
    assert other.json()["correlation_id"] != first.json()["correlation_id"]
    assert {a["visibility"]["tenant_id"] for a in other.json()["artifacts"]} == {"b"}
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content


async def test_runs_and_status_follow_the_visibility_of_the_cascades_input(
    api_client: Any, store: BlackboardStore
) -> None:
    """A caller who may not see a correlation's input sees neither its status, its runs,
    nor (through them) its errors, even when one of its outputs is public."""
    flock = Flock(store=store)
    flock.agent("announcer").consumes(Order).publishes(
        Invoice, visibility=PublicVisibility()
    ).with_engines(lambda order: Invoice(sku=order.sku))
    keys = {
        "keys": [{"key": "ops-key-5", "principal": "ops"}, {"key": "eve-key-6", "principal": "eve"}]
    }
    client = await api_client(flock, api_keys=APIKeyring.from_dict(keys))
    ops, eve = {"X-API-Key": "ops-key-5"}, {"X-API-Key": "eve-key-6"}
    private = {"kind": "Private", "agents": ["ops", "announcer"]}
    answer = (
        await client.post("/api/v1/artifacts/sync", json=order(visibility=private), headers=ops)
    ).json()
    cid = answer["correlation_id"]
    assert answer["completed"] is True and len(answer["artifacts"]) == 2

    assert (await client.get(f"/api/v1/correlations/{cid}", headers=ops)).status_code == 200
    assert (await client.get(f"/api/v1/correlations/{cid}", headers=eve)).status_code == 404
    assert (await client.post(f"/api/v1/correlations/{cid}/cancel", headers=eve)).status_code == 404
    runs = await client.get("/api/v1/runs", params={"correlation_id": cid}, headers=eve)
    assert runs.json()["items"] == []
    (run,) = (await client.get("/api/v1/runs", params={"correlation_id": cid}, headers=ops)).json()[
        "items"
    ]
    assert (await client.get(f"/api/v1/runs/{run['id']}", headers=eve)).status_code == 404
