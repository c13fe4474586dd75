"""API keys: 401 without one, 403 outside `allowed_types`, visibility and key scoping."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from flock import (
    FilterConfig,
    Flock,
    LabelledVisibility,
    PrivateVisibility,
    TenantVisibility,
    flock_type,
)
from flock.api.auth import APIKeyring
from flock.api.deps import get_principal
from flock.api.routes import agents, artifacts, batch, correlations
from flock.client import FlockAPIError, FlockClient
from support.serve import ServeProcess, free_port, server_env

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]


def _name(base: str) -> str:
    return f"Auth{base}_{_SUFFIX}"


@flock_type(name=_name("Note"))
class Note(BaseModel):
    text: str


@flock_type(name=_name("Secret"))
class Secret(BaseModel):
    text: str


@flock_type(name=_name("TenantMemo"))
class TenantMemo(BaseModel):
    text: str


@flock_type(name=_name("OpsLog"))
class OpsLog(BaseModel):
    text: str


@flock_type(name=_name("Restricted"))
class Restricted(BaseModel):
    text: str


NOTE, SECRET, MEMO, OPS, RESTRICTED = (
    _name("Note"),
    _name("Secret"),
    _name("TenantMemo"),
    _name("OpsLog"),
    _name("Restricted"),
)

KEYS = {
    "keys": [
        # alice, of tenant t1, with the "ops" label
        {"key": "alice-key-0123", "principal": "alice", "tenant": "t1", "labels": ["ops"]},
        # bob, of tenant t2
        {"key": "bob-key-4567", "principal": "bob", "tenant": "t2", "labels": []},
        # another "alice", of tenant t2: the same principal name in another tenant
        {"key": "alice-t2-key-89", "principal": "alice", "tenant": "t2"},
        # carol may publish notes only
        {"key": "carol-key-abcd", "principal": "carol", "tenant": "t1", "allowed_types": [NOTE]},
        # keys of no tenant: another "alice" with the "ops" label, and erin
        {"key": "alice-shared-key-5", "principal": "alice", "labels": ["ops"]},
        {"key": "erin-key-6789", "principal": "erin"},
    ]
}
ALICE, BOB, ALICE_T2, CAROL, ALICE_SHARED, ERIN = (
    {"Authorization": "Bearer alice-key-0123"},
    {"Authorization": "Bearer bob-key-4567"},
    {"Authorization": "Bearer alice-t2-key-89"},
    {"X-API-Key": "carol-key-abcd"},
    {"Authorization": "Bearer alice-shared-key-5"},
    {"X-API-Key": "erin-key-6789"},
)
ALL_KEYS = [k["key"] for k in KEYS["keys"]]
SYNC = "/api/v1/artifacts/sync"


def secretive() -> Flock:
    """A Note makes a Secret only alice sees, a memo for tenant t1, and a log for "ops"."""
    flock = Flock()
    flock.agent("keeper").consumes(Note).publishes(
        Secret, visibility=PrivateVisibility(agents=frozenset({"alice"}))
    ).with_engines(lambda note: Secret(text=note.text))
    flock.agent("memo").consumes(Note).publishes(
        TenantMemo, visibility=TenantVisibility(tenant_id="t1")
    ).with_engines(lambda note: TenantMemo(text=note.text))
    flock.agent("ops").consumes(Note).publishes(
        OpsLog, visibility=LabelledVisibility(required_labels=frozenset({"ops"}))
    ).with_engines(lambda note: OpsLog(text=note.text))
    flock.agent("echo").consumes(Restricted).publishes(Note).with_engines(
        lambda r: Note(text=r.text)
    )
    return flock


def note(text: str = "hi") -> dict[str, Any]:
    return {"type": NOTE, "payload": {"text": text}}


async def make_client(api_client: Any, flock: Flock | None = None) -> Any:
    return await api_client(flock or secretive(), api_keys=APIKeyring.from_dict(KEYS))


def _depends_on(dependant: Dependant, call: Any) -> bool:
    return dependant.call is call or any(_depends_on(d, call) for d in dependant.dependencies)


# -- 401 -------------------------------------------------------------------------------------


async def test_every_api_route_needs_a_valid_key(api_client: Any) -> None:
    client = await make_client(api_client)
    paths = (await client.get("/openapi.json")).json()["paths"]
    operations = [
        (method.upper(), path)
        for path, item in paths.items()
        if path.startswith("/api/v1")
        for method in item
    ]
    assert {
        ("POST", "/api/v1/artifacts"),
        ("POST", "/api/v1/artifacts/sync"),
        ("POST", "/api/v1/artifacts/batch"),
        ("GET", "/api/v1/artifacts"),
        ("GET", "/api/v1/artifacts/summary"),
        ("GET", "/api/v1/artifacts/{artifact_id}"),
        ("GET", "/api/v1/agents"),
        ("POST", "/api/v1/agents/{name}/run"),
        ("GET", "/api/v1/correlations/{correlation_id}"),
    } <= set(operations)

    for method, template in operations:
        path = template.replace("{", "").replace("}", "")  # {name} -> name
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key"},
            {"X-API-Key": "wrong-key"},
            {"Authorization": "Basic alice-key-0123"},
        ):
            response = await client.request(method, path, json={}, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["code"] == "UNAUTHORIZED"
            assert response.headers["www-authenticate"] == "Bearer"
        # a body that is not even JSON gets the same answer: nothing is read before the key
        garbled = await client.request(
            method, path, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert garbled.status_code == 401, (method, path)


def test_every_api_route_resolves_its_caller() -> None:
    """The principal decides visibility and scopes idempotency keys: no route may skip it."""
    routes = [
        route
        for module in (artifacts, batch, agents, correlations)
        for route in module.router.routes
        if isinstance(route, APIRoute)
    ]
    assert len(routes) >= 9
    for route in routes:
        assert route.path.startswith("/api/v1"), route.path
        assert _depends_on(route.dependant, get_principal), route.path


async def test_health_metrics_and_docs_stay_open(api_client: Any) -> None:
    client = await make_client(api_client)

    for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path


async def test_both_header_forms_are_accepted(api_client: Any) -> None:
    client = await make_client(api_client)

    for headers in (
        ALICE,
        {"Authorization": "bearer alice-key-0123"},
        {"X-API-Key": "alice-key-0123"},
        CAROL,
    ):
        response = await client.get("/api/v1/agents", headers=headers)
        assert response.status_code == 200, headers


# -- 403 -------------------------------------------------------------------------------------


async def test_a_type_outside_allowed_types_is_forbidden_everywhere(api_client: Any) -> None:
    flock = secretive()
    client = await make_client(api_client, flock)
    restricted = {"type": RESTRICTED, "payload": {"text": "no"}}

    for path in ("/api/v1/artifacts", "/api/v1/artifacts/sync"):
        response = await client.post(path, json=restricted, headers=CAROL)
        assert response.status_code == 403, path
        assert response.json()["code"] == "FORBIDDEN" and not response.json()["retryable"]

    run = await client.post(
        "/api/v1/agents/echo/run",
        json={"inputs": [{"type": RESTRICTED, "payload": {"text": "no"}}]},
        headers=CAROL,
    )
    assert run.status_code == 403 and run.json()["code"] == "FORBIDDEN"

    batch = await client.post(
        "/api/v1/artifacts/batch", json={"items": [restricted, note()]}, headers=CAROL
    )
    forbidden, allowed = batch.json()["items"]
    assert forbidden["status"] == "failed" and forbidden["error"]["code"] == "FORBIDDEN"
    assert forbidden["error"]["status"] == 403
    assert [d["field"] for d in forbidden["error"]["details"]] == ["items[0].type"]
    assert allowed["status"] == "accepted"

    _, total = await flock.store.query_artifacts(
        FilterConfig(type_names=frozenset({RESTRICTED})), limit=1
    )
    assert total == 0
    # a key without allowed_types may publish it
    ok = await client.post("/api/v1/artifacts", json=restricted, headers=ALICE)
    assert ok.status_code == 200


# -- visibility ----------------------------------------------------------------------------------


async def test_the_keys_identity_decides_what_it_sees(api_client: Any) -> None:
    """Without tenants, a key's principal and labels decide (Private and Labelled rules)."""
    client = await make_client(api_client)

    shared_sync = (await client.post(SYNC, json=note(), headers=ALICE_SHARED)).json()
    erin_sync = (await client.post(SYNC, json=note(), headers=ERIN)).json()

    assert sorted(a["type"] for a in shared_sync["artifacts"]) == sorted([NOTE, SECRET, OPS])
    assert [a["type"] for a in erin_sync["artifacts"]] == [NOTE]
    # the memo is Tenant t1 as its agent declares (the input had no tenant): t1 sees it
    cid = shared_sync["correlation_id"]
    t1 = await client.get("/api/v1/artifacts", params={"correlation_id": cid}, headers=CAROL)
    assert sorted(a["type"] for a in t1.json()["items"]) == sorted([NOTE, MEMO])

    # batch results with wait follow the same rules
    batch = await client.post(
        "/api/v1/artifacts/batch", json={"wait": True, "items": [note()]}, headers=ERIN
    )
    assert [a["type"] for a in batch.json()["items"][0]["artifacts"]] == [NOTE]

    # lists, summaries and gets too
    listed = {
        who: await client.get("/api/v1/artifacts", params={"correlation_id": cid}, headers=h)
        for who, h in (("alice", ALICE_SHARED), ("erin", ERIN))
    }
    assert listed["alice"].json()["pagination"]["total"] == 3
    assert [a["type"] for a in listed["erin"].json()["items"]] == [NOTE]
    summary = await client.get(
        "/api/v1/artifacts/summary", params={"correlation_id": cid}, headers=ERIN
    )
    assert summary.json()["total"] == 1
    (secret,) = [a for a in shared_sync["artifacts"] if a["type"] == SECRET]
    path = f"/api/v1/artifacts/{secret['id']}"
    assert (await client.get(path, headers=ALICE_SHARED)).status_code == 200
    hidden = await client.get(path, headers=ERIN)
    assert hidden.status_code == 404 and hidden.json()["code"] == "NOT_FOUND"


async def test_a_tenants_cascade_stays_the_tenants(api_client: Any) -> None:
    """With a tenant, everything of the cascade is that tenant's; rules that would let an
    output leave it (Private, Labelled, another tenant) fail their run, with an error."""
    client = await make_client(api_client)

    alice = (await client.post(SYNC, json=note(), headers=ALICE)).json()
    bob = (await client.post(SYNC, json=note(), headers=BOB)).json()

    assert sorted(a["type"] for a in alice["artifacts"]) == sorted([NOTE, MEMO])
    assert {a["visibility"]["tenant_id"] for a in alice["artifacts"]} == {"t1"}
    assert sorted(e["agent"] for e in alice["errors"]) == ["keeper", "ops"]
    assert [a["type"] for a in bob["artifacts"]] == [NOTE]
    assert bob["artifacts"][0]["visibility"] == {"kind": "Tenant", "tenant_id": "t2"}
    assert sorted(e["agent"] for e in bob["errors"]) == ["keeper", "memo", "ops"]
    # the same principal name in another tenant sees nothing of alice's
    for headers in (BOB, ALICE_T2, ERIN):
        other = await client.get(
            "/api/v1/artifacts", params={"correlation_id": alice["correlation_id"]}, headers=headers
        )
        assert other.json()["pagination"]["total"] == 0, headers


async def test_a_caller_can_publish_for_its_own_eyes_only(api_client: Any) -> None:
    client = await make_client(api_client)
    private = {**note("mine"), "visibility": {"kind": "Private", "agents": ["erin"]}}

    published = (await client.post("/api/v1/artifacts", json=private, headers=ERIN)).json()

    path = f"/api/v1/artifacts/{published['artifact_id']}"
    assert (await client.get(path, headers=ERIN)).status_code == 200
    assert (await client.get(path, headers=ALICE_SHARED)).status_code == 404


# -- idempotency keys are the caller's own -----------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/artifacts", "/api/v1/artifacts/sync"])
async def test_another_tenants_idempotency_key_gets_its_own_execution(
    api_client: Any, path: str
) -> None:
    flock = secretive()
    client = await make_client(api_client, flock)
    body = note("same body")
    key = {"Idempotency-Key": "shared-key"}

    mine = await client.post(path, json=body, headers={**BOB, **key})
    theirs = await client.post(path, json=body, headers={**ALICE, **key})
    same_name = await client.post(path, json=body, headers={**ALICE_T2, **key})
    mine_again = await client.post(path, json=body, headers={**BOB, **key})

    for other in (theirs, same_name):
        assert other.status_code == 200
        assert "idempotent-replayed" not in other.headers
        assert other.json()["correlation_id"] != mine.json()["correlation_id"]
        # never the other tenant's response: the answer is this caller's own view
        if path.endswith("sync"):
            assert other.json()["artifacts"][0]["correlation_id"] == other.json()["correlation_id"]
    assert theirs.json()["correlation_id"] != same_name.json()["correlation_id"]
    assert mine_again.headers["idempotent-replayed"] == "true"
    assert mine_again.content == mine.content

    await flock.run_until_idle(timeout=15)
    inputs, total = await flock.store.query_artifacts(
        FilterConfig(type_names=frozenset({NOTE})), limit=10
    )
    assert total == 3  # bob, alice (t1), alice (t2): one input each
    assert len({a.correlation_id for a in inputs}) == 3  # type: ignore[union-attr]


async def test_the_sync_call_limit_is_per_caller(
    api_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOCK_MAX_INFLIGHT_SYNC", "1")  # the service reads its settings here
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(memo: Note) -> None:
        if memo.text == "hold":
            started.set()
            await release.wait()

    flock = Flock()
    flock.agent("holder").consumes(Note).with_engines(hold).max_concurrency(2)
    client = await make_client(api_client, flock)
    held = asyncio.create_task(client.post(SYNC, json=note("hold"), headers=ALICE))
    try:
        async with asyncio.timeout(15):
            await started.wait()
        alice_again = await client.post(SYNC, json=note(), headers=ALICE)
        bob = await client.post(SYNC, json=note(), headers=BOB)
    finally:
        release.set()

    assert alice_again.status_code == 429 and alice_again.json()["code"] == "RATE_LIMITED"
    assert bob.status_code == 200 and bob.json()["completed"] is True
    assert (await held).status_code == 200


async def test_batch_item_keys_are_the_callers_own(api_client: Any) -> None:
    client = await make_client(api_client)
    body = {"items": [{**note("same"), "idempotency_key": "item-key"}]}

    bobs = (await client.post("/api/v1/artifacts/batch", json=body, headers=BOB)).json()
    alices = (await client.post("/api/v1/artifacts/batch", json=body, headers=ALICE)).json()

    assert bobs["items"][0]["status"] == alices["items"][0]["status"] == "accepted"
    assert bobs["items"][0]["artifact_id"] != alices["items"][0]["artifact_id"]


# -- keys stay secret ------------------------------------------------------------------------


async def test_keys_are_never_logged_or_echoed(
    api_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(api_client)

    bodies = []
    for headers in (ALICE, CAROL, {"Authorization": "Bearer not-a-key-5678"}):
        for method, path, body in (
            ("POST", "/api/v1/artifacts/sync", note()),
            ("POST", "/api/v1/artifacts", {"type": RESTRICTED, "payload": {"text": "x"}}),
            ("GET", "/api/v1/artifacts/missing", None),
        ):
            response = await client.request(method, path, json=body, headers=headers)
            bodies.append(response.text)

    for secret in [*ALL_KEYS, "not-a-key-5678"]:
        assert secret not in caplog.text
        assert not any(secret in body for body in bodies)


# -- a real server with an API keys file ----------------------------------------------------------


MEMORY = ("--store", "memory://", "--idempotency", "memory://")


def serve_with_keys(keys_file: Path, cwd: Path) -> ServeProcess:
    """`flock serve --demo --api-keys FILE`, logging at debug level into `cwd/serve.log`."""
    return ServeProcess(
        "--demo",
        *MEMORY,
        "--api-keys",
        str(keys_file),
        cwd=cwd,
        log=cwd / "serve.log",
        env={"FLOCK_LOG_LEVEL": "debug"},
    )


def test_flock_serve_with_an_api_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(
        json.dumps(
            {
                "keys": [
                    {"key": "serve-full-key-1", "principal": "svc", "tenant": "acme"},
                    {
                        "key": "serve-docs-only-2",
                        "principal": "docs",
                        "allowed_types": ["Summary"],
                    },
                ]
            }
        )
    )
    document = {"title": "Tea", "text": "Tea is a drink. Tea grows on bushes."}

    with serve_with_keys(keys_file, tmp_path) as server:
        url = server.url
        anonymous = httpx.post(f"{url}/api/v1/artifacts", json={"type": "Document"})
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "UNAUTHORIZED"
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        header = httpx.get(f"{url}/api/v1/agents", headers={"X-API-Key": "serve-full-key-1"})
        assert header.status_code == 200

        with FlockClient(url, api_key="serve-full-key-1") as client:
            result = client.publish_sync("Document", document)
        assert result.completed and {a.type for a in result.artifacts} == {
            "Document",
            "Summary",
            "Keywords",
            "Report",
        }

        with (
            FlockClient(url, api_key="serve-docs-only-2") as client,
            pytest.raises(FlockAPIError) as forbidden,
        ):
            client.publish("Document", document)
        with (
            FlockClient(url, api_key="not-valid") as client,
            pytest.raises(FlockAPIError) as unknown_key,
        ):
            client.get_artifact(result.artifacts[0].id)
        assert (forbidden.value.code, forbidden.value.status) == ("FORBIDDEN", 403)
        assert (unknown_key.value.code, unknown_key.value.status) == ("UNAUTHORIZED", 401)

    log = server.log.read_text()
    for secret in ("serve-full-key-1", "serve-docs-only-2", "not-valid"):
        assert secret not in log


def test_flock_serve_refuses_an_unreadable_keys_file(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text('{"keys": [{"key": "leaky-secret-key"}]}')  # no principal

    args = ["--api-keys", str(bad), *MEMORY, "--port", str(free_port())]
    result = subprocess.run(
        [sys.executable, "-m", "flock.cli", "serve", "--demo", *args],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "principal" in result.stderr
    assert "leaky-secret-key" not in result.stderr + result.stdout
