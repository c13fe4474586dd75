"""`POST /api/v1/artifacts/batch`: per-item outcomes, keys, waiting, limits."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, Field, model_validator

from flock import FilterConfig, Flock, RunContext, flock_type
from flock.api.models import ErrorResponse
from flock.api.settings import ServiceSettings
from support.polling import poll_until

pytestmark = pytest.mark.timeout(60)

BATCH = "/api/v1/artifacts/batch"
_SUFFIX = uuid.uuid4().hex[:8]


def _name(base: str) -> str:
    return f"Batch{base}_{_SUFFIX}"


@flock_type(name=_name("Order"))
class Order(BaseModel):
    sku: str = Field(min_length=1)
    qty: int = Field(ge=1)


@flock_type(name=_name("Invoice"))
class Invoice(BaseModel):
    sku: str
    total: int


@flock_type(name=_name("Held"))
class Held(BaseModel):
    note: str


@flock_type(name=_name("Released"))
class Released(BaseModel):
    note: str


@flock_type(name=_name("Exploding"))
class Exploding(BaseModel):
    """Its validator raises something that is not a validation error (an internal failure)."""

    value: int

    @model_validator(mode="after")
    def _explode(self) -> Exploding:
        if self.value < 0:
            raise RuntimeError("secret internal detail")
        return self


ORDER, INVOICE, HELD, RELEASED, EXPLODING = (
    _name("Order"),
    _name("Invoice"),
    _name("Held"),
    _name("Released"),
    _name("Exploding"),
)


def invoice(order: Order) -> Invoice:
    return Invoice(sku=order.sku, total=order.qty * 10)


class Gate:
    """An engine that reports it started, then blocks until the test releases it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        self.started.set()
        await self.release.wait()
        return Released(note="done")


def shop(gate: Gate | None = None) -> Flock:
    """Order --invoicer--> Invoice; Held --gate--> Released (blocks until released)."""
    flock = Flock()
    flock.agent("invoicer").consumes(Order).publishes(Invoice).with_engines(invoice)
    flock.agent("gate").consumes(Held).publishes(Released).with_engines(gate or Gate())
    return flock


def order(sku: str = "tea", qty: int = 2, **extra: Any) -> dict[str, Any]:
    return {"type": ORDER, "payload": {"sku": sku, "qty": qty}, **extra}


async def wait_for(event: asyncio.Event, seconds: float = 15.0) -> None:
    async with asyncio.timeout(seconds):
        await event.wait()


async def count(flock: Flock, type_name: str) -> int:
    _, total = await flock.store.query_artifacts(
        FilterConfig(type_names=frozenset({type_name})), limit=1
    )
    return total


def error_of(item: dict[str, Any]) -> ErrorResponse:
    """The item's error, checked against the problem-document model."""
    assert item["status"] == "failed", item
    assert item["artifact_id"] is None and item["correlation_id"] is None
    return ErrorResponse.model_validate(item["error"])


async def test_each_item_gets_its_own_outcome(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)

    response = await client.post(
        BATCH,
        json={
            "items": [
                order("tea"),
                {"payload": {"sku": "x", "qty": 1}},  # no type
                {"type": _name("Nope"), "payload": {}},  # unknown type
                order("tea", qty=0),  # invalid payload
                order("tea", bogus=1),  # unknown field
                "not an object",
                order("coffee", tags=["t"], partition_key="pk"),
            ]
        },
    )

    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["index"] for i in items] == list(range(7))
    assert [i["status"] for i in items] == ["accepted"] + ["failed"] * 5 + ["accepted"]

    missing = error_of(items[1])
    assert (missing.code, missing.status) == ("VALIDATION_ERROR", 422)
    assert [d.field for d in missing.details or []] == ["items[1].type"]

    unknown = error_of(items[2])
    assert (unknown.code, unknown.status, unknown.retryable) == ("NOT_FOUND", 404, False)
    assert [d.field for d in unknown.details or []] == ["items[2].type"]

    invalid = error_of(items[3])
    assert (invalid.code, invalid.status) == ("VALIDATION_ERROR", 422)
    assert [d.field for d in invalid.details or []] == ["items[3].payload.qty"]

    extra = error_of(items[4])
    assert [d.field for d in extra.details or []] == ["items[4].bogus"]
    assert [d.field for d in error_of(items[5]).details or []] == ["items[5]"]

    # the good items really were published, each as its own workflow
    assert await count(flock, ORDER) == 2
    for i in (0, 6):
        stored = await flock.store.get(items[i]["artifact_id"])
        assert stored is not None and stored.correlation_id == items[i]["correlation_id"]
    assert items[0]["correlation_id"] != items[6]["correlation_id"]
    stored = await flock.store.get(items[6]["artifact_id"])
    assert stored is not None and stored.tags == {"t"} and stored.partition_key == "pk"
    # no wait: no cascade fields
    assert "artifacts" not in items[0] and "completed" not in items[0]


async def test_an_internal_failure_fails_its_item_alone_without_leaking(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)

    response = await client.post(
        BATCH,
        json={"items": [{"type": EXPLODING, "payload": {"value": -1}}, order()]},
    )

    assert response.status_code == 200
    first, second = response.json()["items"]
    problem = error_of(first)
    assert (problem.code, problem.status, problem.retryable) == ("INTERNAL_ERROR", 500, True)
    assert "secret" not in response.text
    assert second["status"] == "accepted"


async def test_the_request_itself_is_validated(api_client: Any) -> None:
    client = await api_client(shop())

    for body, field in (
        ({"items": []}, "items"),
        ({"items": [order()] * 101}, "items"),
        ({"items": [order()], "timeout": 0}, "timeout"),
        ({"items": [order()], "timeout": 301}, "timeout"),
        ({"items": [order()], "surprise": True}, "surprise"),
        ({}, "items"),
    ):
        response = await client.post(BATCH, json=body)
        assert response.status_code == 422, body
        assert [d["field"] for d in response.json()["details"]] == [field]


async def test_item_keys_deduplicate_and_report_duplicates(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)
    body = {"items": [order("tea", idempotency_key="k-tea"), order("jam")]}

    first = (await client.post(BATCH, json=body)).json()["items"]
    second = (await client.post(BATCH, json=body)).json()["items"]

    assert first[0]["status"] == "accepted" and second[0]["status"] == "duplicate"
    assert second[0]["artifact_id"] == first[0]["artifact_id"]
    assert second[0]["correlation_id"] == first[0]["correlation_id"]
    # the unkeyed item runs again
    assert second[1]["status"] == "accepted"
    assert second[1]["artifact_id"] != first[1]["artifact_id"]
    assert await count(flock, ORDER) == 3

    # the same key with another body is a conflict, reported on that item only
    other = await client.post(
        BATCH, json={"items": [order("jam"), order("x", idempotency_key="k-tea")]}
    )
    conflict = error_of(other.json()["items"][1])
    assert (conflict.code, conflict.status, conflict.retryable) == (
        "IDEMPOTENCY_CONFLICT",
        409,
        False,
    )
    assert [d.field for d in conflict.details or []] == ["items[1].idempotency_key"]
    assert other.json()["items"][0]["status"] == "accepted"


async def test_item_keys_are_checked_and_scoped_apart_from_publish_keys(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)

    response = await client.post(
        BATCH,
        json={"items": [order(idempotency_key="bad\u00e9key"), order(idempotency_key="")]},
    )
    for i, item in enumerate(response.json()["items"]):
        problem = error_of(item)
        assert (problem.code, problem.status) == ("VALIDATION_ERROR", 400)
        assert [d.field for d in problem.details or []] == [f"items[{i}].idempotency_key"]

    # a batch item key and a /artifacts key with the same text are different keys
    single = await client.post("/api/v1/artifacts", json=order(), headers={"Idempotency-Key": "k"})
    item = (await client.post(BATCH, json={"items": [order(idempotency_key="k")]})).json()
    assert item["items"][0]["status"] == "accepted"
    assert item["items"][0]["correlation_id"] != single.json()["correlation_id"]


async def test_one_key_twice_in_a_batch_publishes_once(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)

    response = await client.post(
        BATCH, json={"items": [order(idempotency_key="twice"), order(idempotency_key="twice")]}
    )

    items = response.json()["items"]
    assert sorted(i["status"] for i in items) == ["accepted", "duplicate"]
    assert items[0]["artifact_id"] == items[1]["artifact_id"]
    assert await count(flock, ORDER) == 1


async def test_stored_item_failures_replay_at_their_new_index(api_client: Any) -> None:
    client = await api_client(shop())
    bad = order(qty=0, idempotency_key="bad-qty")

    first = (await client.post(BATCH, json={"items": [bad]})).json()["items"][0]
    again = (await client.post(BATCH, json={"items": [order(), bad]})).json()["items"][1]

    assert [d.field for d in error_of(first).details or []] == ["items[0].payload.qty"]
    assert [d.field for d in error_of(again).details or []] == ["items[1].payload.qty"]


async def test_wait_returns_each_items_cascade(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)
    await client.post(BATCH, json={"items": [order("tea", idempotency_key="seen")]})

    response = await client.post(
        BATCH,
        json={
            "wait": True,
            "items": [order("tea", qty=3), {"type": ORDER}, order("tea", idempotency_key="seen")],
        },
    )

    assert response.status_code == 200
    fresh, failed, duplicate = response.json()["items"]
    assert fresh["status"] == "accepted" and fresh["completed"] is True
    assert [a["type"] for a in fresh["artifacts"]] == [ORDER, INVOICE]
    assert fresh["artifacts"][0]["id"] == fresh["artifact_id"]
    assert fresh["artifacts"][1]["payload"] == {"sku": "tea", "total": 30}
    assert all(a["correlation_id"] == fresh["correlation_id"] for a in fresh["artifacts"])
    assert fresh["errors"] == [] and fresh["truncated"] is False
    assert failed["status"] == "failed" and "artifacts" not in failed
    # a replayed item reports the current artifacts of its original correlation
    assert duplicate["status"] == "duplicate" and duplicate["completed"] is True
    assert [a["type"] for a in duplicate["artifacts"]] == [ORDER, INVOICE]
    assert duplicate["artifacts"][0]["id"] == duplicate["artifact_id"]


async def test_wait_applies_filters(api_client: Any) -> None:
    client = await api_client(shop())

    response = await client.post(
        BATCH,
        json={"wait": True, "filters": {"produced_by": ["invoicer"]}, "items": [order()]},
    )

    (item,) = response.json()["items"]
    assert [a["type"] for a in item["artifacts"]] == [INVOICE]


async def test_wait_follows_every_cascade_up_to_the_timeout(api_client: Any) -> None:
    gate = Gate()
    flock = shop(gate)
    client = await api_client(flock)
    body = {
        "wait": True,
        "timeout": 1,
        "items": [{"type": HELD, "payload": {"note": "x"}}, order()],
    }

    try:
        response = await client.post(BATCH, json=body, headers={"Idempotency-Key": "held"})
        held, quick = response.json()["items"]
        assert held["status"] == "accepted" and held["completed"] is False
        assert [a["type"] for a in held["artifacts"]] == [HELD]
        assert quick["completed"] is True and len(quick["artifacts"]) == 2

        # a replay re-attaches to the cascade that had not finished
        gate.release.set()
        await flock.run_until_idle(held["correlation_id"], timeout=15)
        # (waiting longer is the same request: `timeout` is not part of its fingerprint)
        longer = {**body, "timeout": 5}
        replay = await client.post(BATCH, json=longer, headers={"Idempotency-Key": "held"})
        assert replay.headers["idempotent-replayed"] == "true"
        again = replay.json()["items"][0]
        assert again["correlation_id"] == held["correlation_id"]
        assert again["completed"] is True
        assert [a["type"] for a in again["artifacts"]] == [HELD, RELEASED]
        assert await count(flock, HELD) == 1
    finally:
        gate.release.set()


async def test_a_whole_request_key_replays_the_whole_response(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock)
    body = {"items": [order("a"), order("b")]}

    first = await client.post(BATCH, json=body, headers={"Idempotency-Key": "whole"})
    second = await client.post(BATCH, json=body, headers={"Idempotency-Key": "whole"})

    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.content == first.content
    assert await count(flock, ORDER) == 2

    conflict = await client.post(
        BATCH, json={"items": [order("c")]}, headers={"Idempotency-Key": "whole"}
    )
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "IDEMPOTENCY_CONFLICT"


async def test_an_interrupted_keyed_batch_never_publishes_an_item_twice(api_client: Any) -> None:
    """A batch cut off after publishing releases its key; the retry runs again, and each item
    is answered from the key derived for it (duplicate), not published anew."""
    gate = Gate()
    flock = shop(gate)
    client = await api_client(flock)
    body = {"wait": True, "items": [{"type": HELD, "payload": {"note": "x"}}, order()]}
    headers = {"Idempotency-Key": "cut-off"}

    try:
        task = asyncio.create_task(client.post(BATCH, json=body, headers=headers))
        await wait_for(gate.started)

        # Both items are published and their answers recorded once the order's invoice is
        # there: its run starts only when the batch, done with the items, waits for them.
        async def invoiced() -> bool:
            return await count(flock, INVOICE) > 0

        await poll_until(invoiced, seconds=15, what="the order's invoice")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.release.set()

        retry = await client.post(BATCH, json=body, headers=headers)

        assert "idempotent-replayed" not in retry.headers  # the batch ran again...
        items = retry.json()["items"]
        assert [i["status"] for i in items] == ["duplicate", "duplicate"]  # ...its items did not
        assert await count(flock, HELD) == 1 and await count(flock, ORDER) == 1
        assert all(i["completed"] for i in items)
    finally:
        gate.release.set()


async def test_batch_with_wait_counts_against_the_sync_limit(api_client: Any) -> None:
    gate = Gate()
    client = await api_client(shop(gate), settings=ServiceSettings(max_inflight_sync=1))
    held = {"type": HELD, "payload": {"note": "x"}}

    try:
        first = asyncio.create_task(
            client.post("/api/v1/artifacts/sync", json={**held, "timeout": 30})
        )
        await wait_for(gate.started)

        sync = await client.post("/api/v1/artifacts/sync", json=order())
        batch = await client.post(BATCH, json={"wait": True, "items": [order()]})
        for limited in (sync, batch):
            assert limited.status_code == 429
            assert limited.json()["code"] == "RATE_LIMITED"
            assert limited.json()["retryable"] is True
            assert int(limited.headers["retry-after"]) >= 1
        # publishing without waiting is not limited
        assert (await client.post(BATCH, json={"items": [order()]})).status_code == 200
        assert (await client.post("/api/v1/artifacts", json=order())).status_code == 200

        gate.release.set()
        assert (await first).status_code == 200
        # the slot is free again
        again = await client.post(BATCH, json={"wait": True, "items": [order()]})
        assert again.status_code == 200
    finally:
        gate.release.set()


async def test_the_body_size_limit_applies(api_client: Any) -> None:
    flock = shop()
    client = await api_client(flock, settings=ServiceSettings(max_body_bytes=2048))
    big = {"items": [order(sku="x" * 100) for _ in range(30)]}

    response = await client.post(BATCH, json=big)
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> Any:
        for _ in range(10):
            yield b'{"items": [' + b" " * 500

    streamed = await client.post(
        BATCH, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await count(flock, ORDER) == 0
    assert (await client.post(BATCH, json={"items": [order()]})).status_code == 200


async def test_openapi_documents_the_item_model(api_client: Any) -> None:
    client = await api_client(shop())

    schema = (await client.get("/openapi.json")).json()

    operation = schema["paths"]["/api/v1/artifacts/batch"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    items = request["properties"]["items"]["items"]  # one variant per registered type
    assert items["discriminator"]["propertyName"] == "type"
    components = schema["components"]["schemas"]
    variants = [components[v["$ref"].rsplit("/", 1)[1]] for v in items["oneOf"]]
    assert variants
    for item in variants:
        assert "type" in item["required"]
        assert {"type", "payload", "tags", "idempotency_key"} <= set(item["properties"])
    assert request["properties"]["items"]["maxItems"] == 100
    assert "BatchPublishResponse" in schema["components"]["schemas"]
