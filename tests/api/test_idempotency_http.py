"""Idempotency keys over HTTP (SPEC section 3), in process through `httpx.ASGITransport`.

Every service here is real: the orchestrator, the in-memory stores and the guard. The only
instrument is `ClaimWatchingStore`, the real in-memory store counting the claims that found
their key held, so a test can release a blocked agent once its duplicates are waiting.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from flock import FilterConfig, Flock, RunContext, flock_type
from flock.api.auth import ANONYMOUS_PRINCIPAL, APIKeyring
from flock.api.idempotency import (
    ClaimResult,
    InMemoryIdempotencyStore,
    PostgresIdempotencyStore,
    idempotent,
)
from flock.api.idempotency.guard import scoped_key
from flock.api.service import BlackboardHTTPService
from flock.api.settings import ServiceSettings
from flock.core.store import InMemoryBlackboardStore
from flock.core.store.sql import PostgresBlackboardStore

pytestmark = pytest.mark.timeout(60)

PUBLISH = "/api/v1/artifacts"
SYNC = "/api/v1/artifacts/sync"
REPLAYED = "idempotent-replayed"
UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "idempotent_route.py"
_SUFFIX = uuid.uuid4().hex[:8]
ASK = f"IdemHttpAsk_{_SUFFIX}"
ANSWER = f"IdemHttpAnswer_{_SUFFIX}"


@flock_type(name=ASK)
class Ask(BaseModel):
    topic: str = Field(min_length=1)


@flock_type(name=ANSWER)
class Answer(BaseModel):
    text: str


class Gate:
    """The answering agent: counts its runs, reports it started, waits for `release`."""

    def __init__(self, *, blocked: bool = False) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not blocked:
            self.release.set()

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        (ask,) = inputs
        assert isinstance(ask, Ask)
        return Answer(text=f"about {ask.topic}")


def gated_flock(gate: Gate, concurrency: int = 1) -> Flock:
    flock = Flock()
    flock.agent("answerer").consumes(Ask).publishes(Answer).with_engines(gate).max_concurrency(
        concurrency
    )
    return flock


class ClaimWatchingStore(InMemoryIdempotencyStore):
    """The real in-memory store; it only counts claims that found their key already held."""

    def __init__(self) -> None:
        super().__init__()
        self.held_claims = 0

    async def claim(
        self,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> ClaimResult:
        result = await super().claim(
            key, fingerprint, owner=owner, lease_seconds=lease_seconds, ttl_seconds=ttl_seconds
        )
        if not result.acquired:
            self.held_claims += 1
        return result


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 15.0) -> None:
    """Poll `condition` until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {seconds} s")
        await asyncio.sleep(0.01)


async def wait_for(event: asyncio.Event, seconds: float = 15.0) -> None:
    async with asyncio.timeout(seconds):
        await event.wait()


def ask(topic: str = "tea", **fields: Any) -> dict[str, Any]:
    return {"type": ASK, "payload": {"topic": topic}, **fields}


def keyed(key: str, header: str = "X-Idempotency-Key") -> dict[str, str]:
    return {header: key}


async def count(flock: Flock, type_name: str = ASK) -> int:
    _, total = await flock.store.query_artifacts(
        FilterConfig(type_names=frozenset({type_name})), limit=1
    )
    return total


def assert_replay(original: httpx.Response, replay: httpx.Response) -> None:
    assert REPLAYED not in original.headers
    assert replay.headers.get(REPLAYED) == "true"
    assert replay.status_code == original.status_code
    assert replay.content == original.content
    assert replay.headers["content-type"] == original.headers["content-type"]


# -- replay -------------------------------------------------------------------------------


async def test_async_publish_replays_byte_for_byte(api_client: Any) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)

    first = await client.post(PUBLISH, json=ask(), headers=keyed("async-1"))
    second = await client.post(PUBLISH, json=ask(), headers=keyed("async-1"))

    assert first.status_code == 200 and first.json()["status"] == "accepted"
    assert_replay(first, second)
    await flock.run_until_idle(timeout=15)
    assert await count(flock) == 1


async def test_sync_publish_replays_byte_for_byte(api_client: Any) -> None:
    gate = Gate()
    flock = gated_flock(gate)
    client = await api_client(flock)

    first = await client.post(SYNC, json=ask(), headers=keyed("sync-1"))
    second = await client.post(SYNC, json=ask(), headers=keyed("sync-1"))

    assert first.status_code == 200
    body = first.json()
    assert body["completed"] is True
    assert [a["type"] for a in body["artifacts"]] == [ASK, ANSWER]
    assert_replay(first, second)
    assert second.headers["content-location"] == first.headers["content-location"]
    assert second.headers["x-correlation-id"] == body["correlation_id"]
    assert gate.runs == 1 and await count(flock) == 1


async def test_key_order_and_whitespace_do_not_change_the_fingerprint(api_client: Any) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)
    headers = {**keyed("canonical"), "content-type": "application/json"}

    compact = '{"type":"ASK","payload":{"topic":"x"}}'.replace("ASK", ASK)
    spaced = '{ "payload" : { "topic" : "x" } ,\n "type" : "ASK" }'.replace("ASK", ASK)

    first = await client.post(PUBLISH, content=compact.encode(), headers=headers)
    second = await client.post(PUBLISH, content=spaced.encode(), headers=headers)

    assert_replay(first, second)


@pytest.mark.parametrize(
    ("first_headers", "retry_headers"),
    [
        pytest.param(keyed("order-7"), keyed("order-7", "Idempotency-Key"), id="plain"),
        pytest.param(keyed("order-7"), keyed('"order-7"', "Idempotency-Key"), id="rfc8941"),
        pytest.param(
            keyed("order-7", "Idempotency-Key"),
            {"X-Idempotency-Key": "order-7", "Idempotency-Key": '"order-7"'},
            id="both-agreeing",
        ),
        pytest.param(keyed('a"b\\c'), keyed('"a\\"b\\\\c"', "Idempotency-Key"), id="escapes"),
    ],
)
async def test_both_key_headers_name_the_same_key(
    api_client: Any, first_headers: dict[str, str], retry_headers: dict[str, str]
) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)

    first = await client.post(PUBLISH, json=ask(), headers=first_headers)
    retry = await client.post(PUBLISH, json=ask(), headers=retry_headers)

    assert first.status_code == 200
    assert_replay(first, retry)
    assert await count(flock) == 1


async def test_a_different_body_with_the_same_key_is_a_conflict(api_client: Any) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)

    first = await client.post(SYNC, json=ask("tea"), headers=keyed("conflict"))
    other = await client.post(SYNC, json=ask("coffee"), headers=keyed("conflict"))

    assert first.status_code == 200
    assert other.status_code == 409
    problem = other.json()
    assert problem["code"] == "IDEMPOTENCY_CONFLICT" and problem["retryable"] is False
    assert "retry-after" not in other.headers
    assert REPLAYED not in other.headers
    assert await count(flock) == 1
    # the original outcome is untouched
    assert_replay(first, await client.post(SYNC, json=ask("tea"), headers=keyed("conflict")))


async def test_without_a_key_every_request_runs(api_client: Any) -> None:
    gate = Gate()
    flock = gated_flock(gate)
    client = await api_client(flock)

    responses = [await client.post(path, json=ask()) for path in (PUBLISH, PUBLISH, SYNC, SYNC)]

    assert [r.status_code for r in responses] == [200] * 4
    assert not any(REPLAYED in r.headers for r in responses)
    assert len({r.json()["correlation_id"] for r in responses}) == 4
    await flock.run_until_idle(timeout=15)
    assert gate.runs == 4 and await count(flock) == 4


# -- concurrency --------------------------------------------------------------------------


async def test_fifty_concurrent_duplicates_execute_once(api_client: Any) -> None:
    gate = Gate(blocked=True)
    flock = gated_flock(gate)
    store = ClaimWatchingStore()
    client = await api_client(flock, idempotency=store)

    calls = [client.post(SYNC, json=ask(), headers=keyed("storm")) for _ in range(50)]
    pending = asyncio.gather(*calls)
    await wait_for(gate.started)
    await until(lambda: store.held_claims >= 49)  # every duplicate found the key held
    gate.release.set()
    responses = await pending

    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert sum(REPLAYED not in r.headers for r in responses) == 1
    body = responses[0].json()
    assert body["completed"] is True
    assert [a["type"] for a in body["artifacts"]] == [ASK, ANSWER]
    assert gate.runs == 1 and flock.stats.agent_runs == 1
    assert await count(flock) == 1 and await count(flock, ANSWER) == 1


async def test_concurrent_requests_with_different_keys_each_run_once(api_client: Any) -> None:
    gate = Gate(blocked=True)
    flock = gated_flock(gate, concurrency=10)
    store = ClaimWatchingStore()
    client = await api_client(flock, idempotency=store)

    calls = [
        client.post(SYNC, json=ask(f"t{i}"), headers=keyed(f"key-{i}"))
        for i in range(10)
        for _ in range(2)
    ]
    pending = asyncio.gather(*calls)
    await until(lambda: gate.runs == 10 and store.held_claims >= 10)
    gate.release.set()
    responses = await pending

    assert {r.status_code for r in responses} == {200}
    pairs = [responses[i : i + 2] for i in range(0, 20, 2)]
    assert all(a.content == b.content for a, b in pairs)
    topics = [a.json()["artifacts"][0]["payload"]["topic"] for a, _ in pairs]
    assert topics == [f"t{i}" for i in range(10)]
    assert len({a.json()["correlation_id"] for a, _ in pairs}) == 10
    assert gate.runs == 10 and await count(flock) == 10


async def test_a_duplicate_of_a_running_request_waits_for_its_outcome(api_client: Any) -> None:
    gate = Gate(blocked=True)
    flock = gated_flock(gate)
    store = ClaimWatchingStore()
    client = await api_client(flock, idempotency=store)

    first = asyncio.ensure_future(client.post(SYNC, json=ask(), headers=keyed("wait")))
    await wait_for(gate.started)
    duplicate = asyncio.ensure_future(client.post(SYNC, json=ask(), headers=keyed("wait")))
    await until(lambda: store.held_claims >= 1)
    assert not first.done() and not duplicate.done()
    gate.release.set()
    original, replay = await asyncio.gather(first, duplicate)

    assert original.status_code == 200 and original.json()["completed"] is True
    assert_replay(original, replay)
    assert gate.runs == 1 and await count(flock) == 1


async def test_a_duplicate_past_its_own_deadline_is_told_to_retry(api_client: Any) -> None:
    gate = Gate(blocked=True)
    flock = gated_flock(gate)
    client = await api_client(flock)

    first = asyncio.ensure_future(client.post(SYNC, json=ask(timeout=30), headers=keyed("slow")))
    await wait_for(gate.started)
    duplicate = await client.post(SYNC, json=ask(timeout=1), headers=keyed("slow"))

    assert duplicate.status_code == 409
    problem = duplicate.json()
    assert problem["code"] == "IDEMPOTENCY_IN_PROGRESS" and problem["retryable"] is True
    assert int(duplicate.headers["retry-after"]) >= 1
    assert not first.done() and gate.runs == 1
    gate.release.set()
    original = await first
    assert original.status_code == 200
    assert problem["correlation_id"] == original.json()["correlation_id"]
    # the sync `timeout` says how long to wait, not what to do: a retry replays
    retry = await client.post(SYNC, json=ask(timeout=5), headers=keyed("slow"))
    assert_replay(original, retry)
    assert gate.runs == 1 and await count(flock) == 1


async def test_an_incomplete_sync_outcome_is_answered_again_from_its_correlation(
    api_client: Any,
) -> None:
    gate = Gate(blocked=True)
    flock = gated_flock(gate)
    client = await api_client(flock)

    first = await client.post(SYNC, json=ask(timeout=1), headers=keyed("partial"))
    body = first.json()
    assert first.status_code == 200 and body["completed"] is False
    assert [a["type"] for a in body["artifacts"]] == [ASK]
    correlation = body["correlation_id"]

    gate.release.set()

    async def idle() -> bool:
        status = await client.get(f"/api/v1/correlations/{correlation}")
        return bool(status.json()["state"] == "idle")

    await until(idle)
    retry = await client.post(SYNC, json=ask(timeout=1), headers=keyed("partial"))

    assert retry.status_code == 200 and retry.headers.get(REPLAYED) == "true"
    again = retry.json()
    assert again["completed"] is True and again["correlation_id"] == correlation
    assert [a["type"] for a in again["artifacts"]] == [ASK, ANSWER]
    assert again["artifacts"][0]["id"] == body["artifacts"][0]["id"]
    assert gate.runs == 1 and await count(flock) == 1


# -- scope --------------------------------------------------------------------------------


async def test_a_key_is_scoped_per_route(api_client: Any) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)

    accepted = await client.post(PUBLISH, json=ask(), headers=keyed("shared"))
    synced = await client.post(SYNC, json=ask(), headers=keyed("shared"))

    assert accepted.status_code == 200 and synced.status_code == 200
    assert REPLAYED not in accepted.headers and REPLAYED not in synced.headers
    assert accepted.json()["correlation_id"] != synced.json()["correlation_id"]
    await flock.run_until_idle(timeout=15)
    assert await count(flock) == 2


async def test_a_key_is_scoped_per_principal(api_client: Any) -> None:
    flock = gated_flock(Gate())
    keyring = APIKeyring.from_dict(
        {
            "keys": [
                {"key": "alice-key", "principal": "alice"},
                {"key": "bob-key", "principal": "bob"},
            ]
        }
    )
    client = await api_client(flock, api_keys=keyring)
    alice = {**keyed("mine"), "X-API-Key": "alice-key"}
    bob = {**keyed("mine"), "X-API-Key": "bob-key"}

    first = await client.post(PUBLISH, json=ask(), headers=alice)
    other = await client.post(PUBLISH, json=ask(), headers=bob)
    again = await client.post(PUBLISH, json=ask(), headers=alice)

    assert first.status_code == other.status_code == 200
    assert REPLAYED not in other.headers
    assert other.json()["artifact_id"] != first.json()["artifact_id"]
    assert_replay(first, again)
    await flock.run_until_idle(timeout=15)
    assert await count(flock) == 2


async def test_a_key_is_scoped_by_the_callers_labels_and_allowed_types(api_client: Any) -> None:
    flock = gated_flock(Gate())
    keyring = APIKeyring.from_dict(
        {
            "keys": [
                {"key": "ops-key", "principal": "svc", "tenant": "t", "labels": ["ops"]},
                {"key": "rotated-ops-key", "principal": "svc", "tenant": "t", "labels": ["ops"]},
                {"key": "plain-key", "principal": "svc", "tenant": "t"},
                {
                    "key": "narrow-key",
                    "principal": "svc",
                    "tenant": "t",
                    "labels": ["ops"],
                    "allowed_types": ["SomethingElse"],
                },
            ]
        }
    )
    client = await api_client(flock, api_keys=keyring)

    def as_(api_key: str) -> dict[str, str]:
        return {**keyed("shared"), "X-API-Key": api_key}

    first = await client.post(PUBLISH, json=ask(), headers=as_("ops-key"))
    rotated = await client.post(PUBLISH, json=ask(), headers=as_("rotated-ops-key"))
    fewer_labels = await client.post(PUBLISH, json=ask(), headers=as_("plain-key"))
    narrower = await client.post(PUBLISH, json=ask(), headers=as_("narrow-key"))

    assert first.status_code == 200
    assert_replay(first, rotated)  # another key with the same permissions: the same caller
    assert fewer_labels.status_code == 200 and REPLAYED not in fewer_labels.headers
    assert fewer_labels.json()["artifact_id"] != first.json()["artifact_id"]
    # A key that may not publish this type is never replayed what another key published.
    assert narrower.status_code == 403 and REPLAYED not in narrower.headers
    await flock.run_until_idle(timeout=15)
    assert await count(flock) == 2


@pytest.mark.parametrize("name", ["X-Idempotency-Key", "Idempotency-Key"])
async def test_a_key_header_repeated_with_different_keys_is_rejected(
    api_client: Any, name: str
) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)

    twice = await client.post(PUBLISH, json=ask(), headers=[(name, "aa1"), (name, "bb1")])
    same_twice = await client.post(PUBLISH, json=ask(), headers=[(name, "cc1"), (name, "cc1")])

    assert twice.status_code == 400
    assert [d["field"] for d in twice.json()["details"]] == ["header.Idempotency-Key"]
    assert same_twice.status_code == 200
    await flock.run_until_idle(timeout=15)
    assert await count(flock) == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(keyed("k" * 256), id="256-chars"),
        pytest.param(keyed(""), id="empty"),
        pytest.param(keyed("bad\x7fkey"), id="non-printable-DEL"),
        pytest.param(keyed("tab\tkey"), id="non-printable-tab"),
        pytest.param({"X-Idempotency-Key": "caf\u00e9".encode()}, id="non-ascii"),
        pytest.param(keyed('""', "Idempotency-Key"), id="empty-quoted"),
        pytest.param(keyed('"a\\b"', "Idempotency-Key"), id="bad-escape"),
        pytest.param({"X-Idempotency-Key": "a", "Idempotency-Key": "b"}, id="headers-differ"),
    ],
)
@pytest.mark.parametrize("path", [PUBLISH, SYNC])
async def test_a_bad_key_is_rejected_and_nothing_runs(
    api_client: Any, headers: dict[str, Any], path: str
) -> None:
    gate = Gate()
    flock = gated_flock(gate)
    client = await api_client(flock)

    response = await client.post(path, json=ask(), headers=headers)

    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "VALIDATION_ERROR" and problem["retryable"] is False
    assert [d["field"] for d in problem["details"]] == ["header.Idempotency-Key"]
    assert await count(flock) == 0 and gate.runs == 0


async def test_a_key_of_255_printable_characters_is_accepted(api_client: Any) -> None:
    client = await api_client(gated_flock(Gate()))
    key = "".join(chr(32 + i % 95) for i in range(255))

    first = await client.post(PUBLISH, json=ask(), headers=keyed(key))
    second = await client.post(PUBLISH, json=ask(), headers=keyed(key))

    assert first.status_code == 200
    assert_replay(first, second)


# -- which outcomes are stored ------------------------------------------------------------


async def test_a_not_found_outcome_is_stored_and_replayed(api_client: Any) -> None:
    flock = gated_flock(Gate())
    client = await api_client(flock)
    late = f"IdemHttpLate_{_SUFFIX}"
    body = {"type": late, "payload": {}}

    first = await client.post(PUBLISH, json=body, headers=keyed("unknown-type"))
    assert first.status_code == 404 and first.json()["code"] == "NOT_FOUND"

    @flock_type(name=late)
    class Late(BaseModel):
        pass

    replay = await client.post(PUBLISH, json=body, headers=keyed("unknown-type"))
    fresh = await client.post(PUBLISH, json=body)

    assert_replay(first, replay)  # the stored 404, though the type exists by now
    assert fresh.status_code == 200
    assert await count(flock, late) == 1


async def test_an_invalid_payload_outcome_is_stored_and_replayed(api_client: Any) -> None:
    gate = Gate()
    flock = gated_flock(gate)
    client = await api_client(flock)

    first = await client.post(SYNC, json=ask(""), headers=keyed("invalid"))
    replay = await client.post(SYNC, json=ask(""), headers=keyed("invalid"))

    assert first.status_code == 422
    assert [d["field"] for d in first.json()["details"]] == ["payload.topic"]
    assert_replay(first, replay)
    assert await count(flock) == 0 and gate.runs == 0


async def test_a_store_failure_while_publishing_lets_a_retry_publish_once(
    api_client: Any,
) -> None:
    gate = Gate()
    down = PostgresBlackboardStore(UNREACHABLE_POSTGRES)
    flock = Flock(store=down)
    flock.agent("answerer").consumes(Ask).publishes(Answer).with_engines(gate)
    client = await api_client(flock)

    failed = await client.post(SYNC, json=ask(), headers=keyed("outage"))
    assert failed.status_code == 503
    assert failed.json()["code"] == "SERVICE_UNAVAILABLE" and failed.json()["retryable"] is True

    # Whether the failed publish went through is unknown: only the same body may go on.
    other = await client.post(SYNC, json=ask("coffee"), headers=keyed("outage"))
    assert other.status_code == 409 and other.json()["code"] == "IDEMPOTENCY_CONFLICT"

    await down.close()
    flock.store = InMemoryBlackboardStore()  # the database is back
    retry = await client.post(SYNC, json=ask(), headers=keyed("outage"))

    assert retry.status_code == 200 and REPLAYED not in retry.headers
    body = retry.json()
    assert body["completed"] is True and [a["type"] for a in body["artifacts"]] == [ASK, ANSWER]
    # the retry published under the ids the failed attempt had recorded
    assert body["correlation_id"] == failed.json()["correlation_id"]
    assert gate.runs == 1 and await count(flock) == 1
    assert_replay(retry, await client.post(SYNC, json=ask(), headers=keyed("outage")))


# -- expiry -------------------------------------------------------------------------------


async def test_records_live_for_a_day_by_default(api_client: Any) -> None:
    store = InMemoryIdempotencyStore()
    client = await api_client(gated_flock(Gate()), idempotency=store, settings=ServiceSettings())

    response = await client.post(PUBLISH, json=ask(), headers=keyed("daily"))
    record = await store.get(scoped_key(ANONYMOUS_PRINCIPAL.scope, "POST", PUBLISH, "daily"))

    assert response.status_code == 200
    assert record is not None and record.state == "completed"
    assert 86_000 < record.expires_at - time.time() <= 86_400


async def test_after_the_ttl_the_same_key_executes_anew(api_client: Any) -> None:
    flock = gated_flock(Gate())
    store = InMemoryIdempotencyStore()
    client = await api_client(
        flock, idempotency=store, settings=ServiceSettings(idempotency_ttl=0.5)
    )
    scoped = scoped_key(ANONYMOUS_PRINCIPAL.scope, "POST", PUBLISH, "short-lived")

    first = await client.post(PUBLISH, json=ask(), headers=keyed("short-lived"))
    assert len(store) == 1  # stored (the background purge runs once a minute here)

    async def expired() -> bool:
        return await store.get(scoped) is None

    await until(expired)
    again = await client.post(PUBLISH, json=ask(), headers=keyed("short-lived"))

    assert first.status_code == again.status_code == 200
    assert REPLAYED not in again.headers
    assert again.json()["artifact_id"] != first.json()["artifact_id"]
    await flock.run_until_idle(timeout=15)
    assert await count(flock) == 2


async def test_purge_removes_expired_records(api_client: Any) -> None:
    store = InMemoryIdempotencyStore()
    settings = ServiceSettings(idempotency_ttl=0.5, purge_interval=3600)
    client = await api_client(gated_flock(Gate()), idempotency=store, settings=settings)

    for i in range(10):
        response = await client.post(PUBLISH, json=ask(), headers=keyed(f"purge-{i}"))
        assert response.status_code == 200
    assert len(store) == 10
    scoped = [
        scoped_key(ANONYMOUS_PRINCIPAL.scope, "POST", PUBLISH, f"purge-{i}") for i in range(10)
    ]

    async def all_expired() -> bool:
        return all([await store.get(k) is None for k in scoped])

    await until(all_expired)
    assert len(store) == 10  # expired, but still held until purged
    assert await store.purge_expired() == 10
    assert len(store) == 0


async def test_the_service_purges_in_the_background(api_client: Any) -> None:
    store = InMemoryIdempotencyStore()
    settings = ServiceSettings(idempotency_ttl=0.3, purge_interval=0.1)
    client = await api_client(gated_flock(Gate()), idempotency=store, settings=settings)

    for i in range(10):
        response = await client.post(PUBLISH, json=ask(), headers=keyed(f"bg-{i}"))
        assert response.status_code == 200

    await until(lambda: len(store) == 0)
    # ten outcomes went into the store, and nothing but the purge takes them out
    assert client.service.guard.outcomes == {"executed": 10}


@pytest.mark.services
async def test_a_shutdown_during_the_purgers_table_creation_ends_the_purger(
    postgres_url: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The shutdown cancels the purger while the SQL store creates its table: the
    cancellation ends the purger, it does not turn into a failed purge the task outlives."""
    blocker = await asyncpg.connect(postgres_url)
    watcher = await asyncpg.connect(postgres_url)  # outside the blocker's transaction
    try:
        # An uncommitted table of the same name: the store's CREATE TABLE waits on it.
        await blocker.execute("BEGIN")
        await blocker.execute(f'CREATE TABLE "{pg_schema}".flock_idempotency (key text)')
        store = PostgresIdempotencyStore(postgres_url, schema=pg_schema)
        service = BlackboardHTTPService(
            gated_flock(Gate()), idempotency=store, settings=ServiceSettings()
        )

        async def creating_the_table() -> bool:
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE $1",
                f"%CREATE TABLE%{pg_schema}%",
            )
            return bool(waiting)

        async with service.app.router.lifespan_context(service.app):
            await until(creating_the_table)
            (purger,) = [
                task
                for task in asyncio.all_tasks()
                if getattr(task.get_coro(), "__qualname__", "") == "purge_periodically"
            ]
        await until(purger.done, seconds=5)
        assert purger.cancelled()
        assert "idempotency purge failed" not in caplog.text
    finally:
        await watcher.close()
        await blocker.close()  # rolls the blocking table back


async def test_the_in_memory_store_stays_within_its_bound(api_client: Any) -> None:
    store = InMemoryIdempotencyStore(max_records=5)
    client = await api_client(gated_flock(Gate()), idempotency=store)

    for i in range(12):
        response = await client.post(PUBLISH, json=ask(), headers=keyed(f"bound-{i}"))
        assert response.status_code == 200
        assert len(store) <= 5
    # the newest outcome is still replayed; the oldest was evicted and runs anew
    newest = await client.post(PUBLISH, json=ask(), headers=keyed("bound-11"))
    oldest = await client.post(PUBLISH, json=ask(), headers=keyed("bound-0"))
    assert newest.headers.get(REPLAYED) == "true"
    assert REPLAYED not in oldest.headers


# -- the decorator on user routes ---------------------------------------------------------


class Tally(BaseModel):
    name: str
    amount: int = Field(gt=0)


class Receipt(BaseModel):
    name: str
    amount: int
    number: int


async def test_the_decorator_replays_a_user_route(api_client: Any) -> None:
    client = await api_client(Flock())
    executions: list[int] = []

    @client.service.app.post("/tallies", status_code=201)
    @idempotent()
    async def add_tally(tally: Tally) -> Receipt:
        executions.append(tally.amount)
        return Receipt(name=tally.name, amount=tally.amount, number=len(executions))

    first = await client.post("/tallies", json={"name": "a", "amount": 2}, headers=keyed("t1"))
    replay = await client.post(
        "/tallies", json={"amount": 2, "name": "a"}, headers=keyed('"t1"', "Idempotency-Key")
    )
    conflict = await client.post("/tallies", json={"name": "a", "amount": 3}, headers=keyed("t1"))
    plain = await client.post("/tallies", json={"name": "a", "amount": 2})

    assert first.status_code == 201 and first.json() == {"name": "a", "amount": 2, "number": 1}
    assert_replay(first, replay)
    assert conflict.status_code == 409 and conflict.json()["code"] == "IDEMPOTENCY_CONFLICT"
    assert plain.status_code == 201 and plain.json()["number"] == 2
    assert executions == [2, 2]


async def test_the_decorator_keeps_parsing_and_openapi(api_client: Any) -> None:
    client = await api_client(Flock())

    @client.service.app.post("/tallies/{book}", response_model=Receipt)
    @idempotent()
    def add_to_book(book: str, tally: Tally, request: Request, note: str = "") -> dict[str, Any]:
        # a plain def, with its own Request and a response model that drops `secret`
        assert request.url.path == f"/tallies/{book}"
        name = f"{book}:{tally.name}{note}"
        return {"name": name, "amount": tally.amount, "number": 1, "secret": "x"}

    invalid = await client.post("/tallies/b", json={"name": "a", "amount": 0}, headers=keyed("v"))
    ok = await client.post("/tallies/b?note=!", json={"name": "a", "amount": 1}, headers=keyed("o"))
    replay = await client.post(
        "/tallies/b?note=!", json={"name": "a", "amount": 1}, headers=keyed("o")
    )
    other_path = await client.post(
        "/tallies/c?note=!", json={"name": "a", "amount": 1}, headers=keyed("o")
    )

    assert invalid.status_code == 422
    assert [d["field"] for d in invalid.json()["details"]] == ["amount"]
    assert ok.status_code == 200 and ok.json() == {"name": "b:a!", "amount": 1, "number": 1}
    assert_replay(ok, replay)
    assert other_path.status_code == 409  # same route, same key, another resource

    operation = (await client.get("/openapi.json")).json()["paths"]["/tallies/{book}"]["post"]
    params = {p["name"]: p["in"] for p in operation["parameters"]}
    assert params == {
        "book": "path",
        "note": "query",
        "X-Idempotency-Key": "header",
        "Idempotency-Key": "header",
    }
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/Tally"}
    ok_schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok_schema == {"$ref": "#/components/schemas/Receipt"}


async def test_the_decorator_stores_a_4xx_and_releases_on_a_crash(api_client: Any) -> None:
    client = await api_client(Flock())
    attempts: list[str] = []

    @client.service.app.post("/flaky")
    @idempotent()
    async def flaky(tally: Tally) -> PlainTextResponse:
        attempts.append(tally.name)
        if tally.name == "missing":
            raise HTTPException(404, "no such tally")
        if attempts.count(tally.name) == 1:
            raise RuntimeError("the first attempt crashes")
        return PlainTextResponse(f"done {tally.name}", status_code=202)

    missing = await client.post("/flaky", json={"name": "missing", "amount": 1}, headers=keyed("m"))
    missing_again = await client.post(
        "/flaky", json={"name": "missing", "amount": 1}, headers=keyed("m")
    )
    crashed = await client.post("/flaky", json={"name": "c", "amount": 1}, headers=keyed("c"))
    retried = await client.post("/flaky", json={"name": "c", "amount": 1}, headers=keyed("c"))
    replayed = await client.post("/flaky", json={"name": "c", "amount": 1}, headers=keyed("c"))

    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    assert_replay(missing, missing_again)
    assert crashed.status_code == 500 and crashed.json()["code"] == "INTERNAL_ERROR"
    assert "first attempt" not in crashed.text
    assert retried.status_code == 202 and retried.text == "done c"
    assert REPLAYED not in retried.headers
    assert_replay(retried, replayed)
    assert attempts == ["missing", "c", "c"]


async def test_the_decorator_makes_concurrent_duplicates_wait(api_client: Any) -> None:
    store = ClaimWatchingStore()
    client = await api_client(Flock(), idempotency=store)
    release = asyncio.Event()
    executions = 0

    @client.service.app.put("/slow")
    @idempotent()
    async def slow() -> dict[str, int]:
        nonlocal executions
        executions += 1
        await release.wait()
        return {"execution": executions}

    calls = asyncio.gather(*(client.put("/slow", headers=keyed("slow")) for _ in range(10)))
    await until(lambda: executions == 1 and store.held_claims >= 9)
    release.set()
    responses = await calls

    assert {r.status_code for r in responses} == {200}
    assert {r.content for r in responses} == {b'{"execution":1}'}
    assert sum(REPLAYED not in r.headers for r in responses) == 1
    assert executions == 1


async def test_the_decorator_scopes_keys_per_principal(api_client: Any) -> None:
    keyring = APIKeyring.from_dict(
        {
            "keys": [
                {"key": "alice-key", "principal": "alice"},
                {"key": "bob-key", "principal": "bob"},
            ]
        }
    )
    client = await api_client(Flock(), api_keys=keyring)
    callers: list[str] = []

    @client.service.app.post("/notes")
    @idempotent()
    async def note(request: Request) -> dict[str, int]:
        callers.append(request.headers.get("x-api-key", "-"))
        return {"note": len(callers)}

    alice = {**keyed("n1"), "X-API-Key": "alice-key"}
    bob = {**keyed("n1"), "X-API-Key": "bob-key"}
    first = await client.post("/notes", headers=alice)
    other = await client.post("/notes", headers=bob)
    again = await client.post("/notes", headers=alice)
    anonymous = await client.post("/notes", headers=keyed("n1"))

    assert first.json() == {"note": 1} and other.json() == {"note": 2}
    assert_replay(first, again)
    assert anonymous.status_code == 401  # a key is scoped by its caller: who is calling?
    assert callers == ["alice-key", "bob-key"]


async def test_the_decorator_requires_a_flock_service_app() -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/bare")
    @idempotent()
    async def bare() -> dict[str, str]:
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/bare")).json() == {"ok": "yes"}  # no key: a plain route
        assert (await client.post("/bare", headers=keyed("k"))).status_code == 500


def _load_example() -> Any:
    name = "flock_example_idempotent_route"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


async def test_the_example_route_runs() -> None:
    example = _load_example()
    service = example.build()
    app = service.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            order = {"item": "tea", "quantity": 2}
            first = await client.post("/orders", json=order, headers=keyed("order-1"))
            replay = await client.post(
                "/orders", json=order, headers=keyed("order-1", "Idempotency-Key")
            )
            await service.flock.run_until_idle(timeout=15)
            invoices, total = await service.flock.store.query_artifacts(
                FilterConfig(type_names=frozenset({"ShopInvoice"})), limit=10
            )

    assert first.status_code == 201
    placed = first.json()
    assert set(placed) == {"order_id", "correlation_id"}
    assert_replay(first, replay)
    assert total == 1
    assert invoices[0].payload == {"item": "tea", "total_cents": 2 * example.PRICE_CENTS}
    assert invoices[0].correlation_id == placed["correlation_id"]
