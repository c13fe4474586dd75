"""Hostile input, on every store: refused with 422 before anything is stored, never a 5xx,
and every later read still works (SPEC section 2).

Each case is what a client can send on the wire (lone surrogates as `\\ud800` escapes,
`NaN` literals, NUL bytes, oversized keys, huge offsets); the same cases run against the
in-memory, SQLite and PostgreSQL stores. After every case, the reads every caller relies
on (list, get, summary, correlation status) must still answer 200 with strict JSON.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Flock, flock_type
from flock.core.artifacts import Artifact
from flock.core.store import BlackboardStore, InMemoryBlackboardStore
from support.contract import assert_response_contract
from support.stores import BACKENDS, open_store

pytestmark = pytest.mark.timeout(120)

_SUFFIX = uuid.uuid4().hex[:8]
ITEM = f"HostileItem_{_SUFFIX}"
ECHO = f"HostileEcho_{_SUFFIX}"


@flock_type(name=ITEM)
class Item(BaseModel):
    text: str = ""
    amount: float = 0.0
    data: dict[str, Any] = {}


@flock_type(name=ECHO)
class Echo(BaseModel):
    text: str


def hostile_flock(store: BlackboardStore) -> Flock:
    flock = Flock(store=store)
    flock.agent("echo").consumes(Item).publishes(Echo).with_engines(
        lambda item: Echo(text=item.text)
    )
    return flock


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlackboardStore:
    return open_store(str(request.param), request, tmp_path)


def wire(value: Any) -> bytes:
    """JSON as a careless client sends it: NaN literals, `\\ud800` escapes."""
    return json.dumps(value, allow_nan=True).encode()


def item(**changes: Any) -> dict[str, Any]:
    return {"type": ITEM, "payload": {"text": "ok"}, **changes}


def payload(**fields: Any) -> dict[str, Any]:
    return item(payload={"text": "ok", **fields})


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"n": value}
    return value


# (name, publish body, the detail field the 422 must name)
BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("lone high surrogate", payload(text="a\ud800"), "payload.text"),
    ("lone low surrogate", payload(text="\udc00b"), "payload.text"),
    ("surrogate in a nested key", payload(data={"k\ud800": 1}), "payload.data.k\ufffd"),
    ("surrogate deep in a list", payload(data={"l": [1, ["\udbff"]]}), "payload.data.l[1][0]"),
    ("NUL in a payload string", payload(text="a\x00b"), "payload.text"),
    ("NUL in a payload key", payload(data={"\x00": 1}), "payload.data.\x00"),
    ("NaN", payload(amount=math.nan), "payload.amount"),
    ("Infinity", payload(amount=math.inf), "payload.amount"),
    ("-Infinity", payload(amount=-math.inf), "payload.amount"),
    ("NaN nested", payload(data={"x": [math.nan]}), "payload.data.x[0]"),
    ("integer past 64 bits", payload(data={"n": 2**64}), "payload.data.n"),
    ("nested 100 levels", payload(data=nested(100)), "payload.data"),
    ("NUL in a tag", item(tags=["a\x00"]), "tags[0]"),
    ("surrogate in a tag", item(tags=["\ud800"]), "tags[0]"),
    ("control character in a tag", item(tags=["a\x01"]), "tags[0]"),
    ("empty tag", item(tags=[""]), "tags[0]"),
    ("tag of 3000 characters", item(tags=["t" * 3000]), "tags[0]"),
    ("65 tags", item(tags=[f"t{i}" for i in range(65)]), "tags"),
    ("NUL in a partition key", item(partition_key="p\x00"), "partition_key"),
    ("partition key of 3000", item(partition_key="p" * 3000), "partition_key"),
    ("NUL in a tenant id", item(visibility={"kind": "Tenant", "tenant_id": "\x00"}), "visibility"),
    (
        "tenant id of 3000",
        item(visibility={"kind": "Tenant", "tenant_id": "t" * 3000}),
        "visibility.tenant_id",
    ),
    (
        "NUL in a private agent",
        item(visibility={"kind": "Private", "agents": ["a\x00"]}),
        "visibility.agents[0]",
    ),
    (
        "NUL in a label",
        item(visibility={"kind": "Labelled", "required_labels": ["\x00"]}),
        "visibility.required_labels[0]",
    ),
    ("visibility without kind", item(visibility={"tenant_id": "t"}), "visibility"),
    ("visibility of unknown kind", item(visibility={"kind": "Everyone"}), "visibility"),
    ("NUL in the type", item(type="Hostile\x00"), "type"),
    ("type of 300 characters", item(type="T" * 300), "type"),
    ("payload not an object", item(payload=[1, 2]), "payload"),
]


async def assert_reads_work(client: Any, correlation_ids: list[str]) -> int:
    """Every read a caller relies on answers 200 in strict JSON; returns the artifact total."""

    def strict(response: Any) -> Any:
        assert response.status_code == 200, (response.request.url, response.text[:300])
        return json.loads(response.content, parse_constant=_refuse_constant)

    listed = strict(await client.get("/api/v1/artifacts", params={"limit": 500}))
    strict(await client.get("/api/v1/artifacts", params={"embed_meta": "true"}))
    strict(await client.get("/api/v1/artifacts/summary"))
    for artifact in listed["items"]:
        strict(await client.get(f"/api/v1/artifacts/{artifact['id']}"))
    for cid in correlation_ids:
        strict(await client.get(f"/api/v1/correlations/{cid}"))
        strict(await client.get("/api/v1/artifacts", params={"correlation_id": cid}))
    return int(listed["pagination"]["total"])


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} in a response: not strict JSON")


async def post(client: Any, path: str, body: bytes) -> Any:
    return await client.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path", ["/api/v1/artifacts", "/api/v1/artifacts/sync"])
async def test_bad_publish_bodies_are_422_and_store_nothing(
    api_client: Any, store: BlackboardStore, path: str
) -> None:
    client = await api_client(hostile_flock(store))
    wrong = []
    for name, body, field in BAD_BODIES:
        response = await post(client, path, wire(body))
        problem = assert_response_contract(response)
        fields = [d.field for d in (problem.details or [])] if problem else []
        if response.status_code != 422 or not any(f.startswith(field) for f in fields):
            wrong.append((name, response.status_code, fields))
    assert wrong == []
    good = await client.post(path, json=item())
    assert good.status_code == 200
    await client.service.flock.run_until_idle(timeout=30)
    assert await assert_reads_work(client, [good.json()["correlation_id"]]) == 2


async def test_a_bad_batch_item_fails_alone(api_client: Any, store: BlackboardStore) -> None:
    client = await api_client(hostile_flock(store))
    wrong = []
    for name, body, field in BAD_BODIES:
        response = await post(client, "/api/v1/artifacts/batch", wire({"items": [body, item()]}))
        assert response.status_code == 200, (name, response.text[:300])
        bad, good = response.json()["items"]
        fields = [d["field"] for d in bad["error"]["details"]] if bad["status"] == "failed" else []
        if bad["status"] != "failed" or bad["error"]["status"] != 422:
            wrong.append((name, bad))
        elif not any(f.startswith(f"items[0].{field}") for f in fields):
            wrong.append((name, fields))
        if good["status"] != "accepted":
            wrong.append((name, good))
    assert wrong == []
    await client.service.flock.run_until_idle(timeout=30)
    assert await assert_reads_work(client, []) == 2 * len(BAD_BODIES)


async def test_bad_direct_run_inputs_are_422(api_client: Any, store: BlackboardStore) -> None:
    client = await api_client(hostile_flock(store))
    payload_cases = [(n, b) for n, b, f in BAD_BODIES if f.startswith(("payload", "type"))]
    wrong = []
    for name, body in payload_cases:
        run = {"inputs": [{"type": body["type"], "payload": body["payload"]}]}
        response = await post(client, "/api/v1/agents/echo/run", wire(run))
        assert_response_contract(response)
        if response.status_code != 422:
            wrong.append((name, response.status_code))
    assert wrong == []
    assert await assert_reads_work(client, []) == 0


BAD_QUERIES: list[tuple[str, str]] = [
    ("offset 2^63", "/api/v1/artifacts?offset=9223372036854775808"),
    ("offset 2^64", "/api/v1/artifacts?offset=18446744073709551616"),
    ("offset 2^31", "/api/v1/artifacts?offset=2147483648"),
    ("offset -1", "/api/v1/artifacts?offset=-1"),
    ("limit 0", "/api/v1/artifacts?limit=0"),
    ("limit 501", "/api/v1/artifacts?limit=501"),
    ("limit 2^63", "/api/v1/artifacts?limit=9223372036854775808"),
    ("limit not a number", "/api/v1/artifacts?limit=ten"),
    ("limit NaN", "/api/v1/artifacts?limit=NaN"),
    ("to as a number", "/api/v1/artifacts?to=0.5"),
    ("from as a word", "/api/v1/artifacts?from=yesterday"),
    ("from out of range", "/api/v1/artifacts?from=99999-01-01T00:00:00Z"),
    ("unknown visibility kind", "/api/v1/artifacts?visibility=Everyone"),
    ("NUL in correlation_id", "/api/v1/artifacts?correlation_id=a%00b"),
    ("NUL in type", "/api/v1/artifacts?type=%00"),
    ("NUL in tag", "/api/v1/artifacts?tag=x%00"),
    ("NUL in produced_by", "/api/v1/artifacts/summary?produced_by=%00"),
    ("invalid UTF-8 in the query", "/api/v1/artifacts?tag=%ff%fe"),
    ("surrogate as UTF-8 bytes", "/api/v1/artifacts?tag=%ed%a0%80"),
    ("tag of 3000", "/api/v1/artifacts?tag=" + "t" * 3000),
    ("correlation id of 200", "/api/v1/artifacts?correlation_id=" + "c" * 200),
    ("NUL in an artifact id", "/api/v1/artifacts/a%00b"),
    ("invalid UTF-8 in an artifact id", "/api/v1/artifacts/%ff"),
    ("artifact id of 200", "/api/v1/artifacts/" + "a" * 200),
    ("NUL in a correlation id", "/api/v1/correlations/a%00b"),
    ("NUL in an agent name", "/api/v1/agents/e%00cho/run"),
]


async def test_bad_query_and_path_parameters_are_422(
    api_client: Any, store: BlackboardStore
) -> None:
    client = await api_client(hostile_flock(store))
    seeded = await client.post("/api/v1/artifacts/sync", json=item())
    wrong = []
    for name, url in BAD_QUERIES:
        method = "POST" if url.endswith("/run") else "GET"
        body = {"inputs": [item()]} if method == "POST" else None
        response = await client.request(method, url, json=body)
        assert_response_contract(response)
        if response.status_code != 422:
            wrong.append((name, response.status_code, response.text[:200]))
    assert wrong == []
    assert await assert_reads_work(client, [seeded.json()["correlation_id"]]) == 2


async def test_bounds_that_hold_are_answered(api_client: Any, store: BlackboardStore) -> None:
    client = await api_client(hostile_flock(store))
    await client.post("/api/v1/artifacts/sync", json=item())

    last = await client.get("/api/v1/artifacts", params={"offset": 2**31 - 1, "limit": 500})
    assert last.status_code == 200
    pagination = {"limit": 500, "offset": 2**31 - 1, "total": 2}
    assert last.json() == {"items": [], "pagination": pagination}
    dated = await client.get("/api/v1/artifacts", params={"from": "2000-01-01T00:00:00Z"})
    assert dated.json()["pagination"]["total"] == 2
    naive = await client.get("/api/v1/artifacts", params={"to": "2000-01-01T00:00:00"})
    assert naive.json()["pagination"]["total"] == 0
    # the longest values the limits allow are stored and read back
    longest = item(
        tags=["t" * 255, "\u2615" * 255],
        partition_key="p" * 255,
        payload={"text": "\U0001f375" * 10_000, "amount": 1e308},
    )
    private = item(visibility={"kind": "Private", "agents": ["a" * 255, "\u2615" * 255]})
    for body in (longest, private):
        stored = await client.post("/api/v1/artifacts", json=body)
        assert stored.status_code == 200, stored.text
    await client.service.flock.run_until_idle(timeout=30)
    assert await assert_reads_work(client, []) == 4  # the Private one is not the caller's
    kept = await client.service.flock.store.get(stored.json()["artifact_id"])
    assert kept is not None and kept.visibility.kind == "Private"


async def test_agent_exception_text_is_kept_but_storable(
    api_client: Any, store: BlackboardStore
) -> None:
    flock = Flock(store=store)

    def explode(item: Item) -> None:
        raise ValueError("bad \x00 input \ud800 " + "x" * 5000)

    flock.agent("exploder").consumes(Item).with_engines(explode)
    client = await api_client(flock)

    sync = await client.post("/api/v1/artifacts/sync", json=item())
    status = await client.get(f"/api/v1/correlations/{sync.json()['correlation_id']}")

    (error,) = sync.json()["errors"]
    assert error["message"].startswith("ValueError: bad \ufffd input \ufffd x")
    assert len(error["message"]) < 2100
    assert status.status_code == 200 and status.json()["errors"][0]["message"] == error["message"]


async def test_a_bad_artifact_stored_before_these_checks_stays_readable(api_client: Any) -> None:
    store = InMemoryBlackboardStore()
    poisoned = Artifact(type=ITEM, payload={"text": "a\ud800", "amount": math.nan})
    await store.publish(poisoned)  # as an older release stored it, unchecked
    client = await api_client(hostile_flock(store))

    one = await client.get(f"/api/v1/artifacts/{poisoned.id}")
    listed = await client.get("/api/v1/artifacts")

    assert one.status_code == listed.status_code == 200
    assert one.json()["payload"] == {"text": "a\ufffd", "amount": None}
    assert listed.json()["items"][0]["payload"]["text"] == "a\ufffd"


async def test_both_key_headers_naming_different_keys_is_400(api_client: Any) -> None:
    from flock.api.auth import APIKeyring

    entries = [{"key": "key-one-1234", "principal": "a"}, {"key": "key-two-5678", "principal": "b"}]
    keys = APIKeyring.from_dict({"keys": entries})
    client = await api_client(Flock(), api_keys=keys)

    both = await client.get(
        "/api/v1/agents",
        headers={"Authorization": "Bearer key-one-1234", "X-API-Key": "key-two-5678"},
    )
    same = await client.get(
        "/api/v1/agents",
        headers={"Authorization": "Bearer key-one-1234", "X-API-Key": "key-one-1234"},
    )

    problem = assert_response_contract(both)
    assert both.status_code == 400 and problem is not None and problem.code == "VALIDATION_ERROR"
    assert same.status_code == 200
