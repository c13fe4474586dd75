"""`POST /api/v1/artifacts/sync`: publish, wait for that cascade only, answer its artifacts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from flock import FilterConfig, Flock, PrivateVisibility, RunContext, flock_type
from flock.api.settings import ServiceSettings

pytestmark = pytest.mark.timeout(60)

SYNC = "/api/v1/artifacts/sync"
_SUFFIX = uuid.uuid4().hex[:8]
ARTIFACT_KEYS = {
    "id",
    "type",
    "payload",
    "produced_by",
    "correlation_id",
    "partition_key",
    "tags",
    "visibility",
    "visibility_kind",
    "created_at",
    "version",
}


def _name(base: str) -> str:
    return f"Sync{base}_{_SUFFIX}"


@flock_type(name=_name("Idea"))
class Idea(BaseModel):
    topic: str = Field(min_length=1)
    words: int = 1


@flock_type(name=_name("Draft"))
class Draft(BaseModel):
    text: str


@flock_type(name=_name("Review"))
class Review(BaseModel):
    verdict: str


@flock_type(name=_name("Note"))
class Note(BaseModel):
    text: str


@flock_type(name=_name("Secret"))
class Secret(BaseModel):
    text: str


IDEA, DRAFT, REVIEW, NOTE, SECRET = (
    _name("Idea"),
    _name("Draft"),
    _name("Review"),
    _name("Note"),
    _name("Secret"),
)


def write(idea: Idea) -> Draft:
    return Draft(text=f"about {idea.topic}")


async def review(draft: Draft) -> Review:
    return Review(verdict=f"ok: {draft.text}")


def writer_flock() -> Flock:
    """Idea --writer--> Draft --reviewer--> Review."""
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    flock.agent("reviewer").consumes(Draft).publishes(Review).with_engines(review)
    return flock


class Gate:
    """An engine that reports it started, then blocks until the test releases it."""

    def __init__(self, output: BaseModel) -> None:
        self.output = output
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.correlation_ids: list[str] = []

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        self.correlation_ids.append(ctx.correlation_id)
        self.started.set()
        await self.release.wait()
        return self.output


def gated_flock(gate: Gate) -> Flock:
    """Idea --writer--> Draft --gated reviewer--> Review."""
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    flock.agent("reviewer").consumes(Draft).publishes(Review).with_engines(gate)
    return flock


async def wait_for(event: asyncio.Event, seconds: float = 15.0) -> None:
    async with asyncio.timeout(seconds):
        await event.wait()


async def poll_until(
    fetch: Callable[[], Awaitable[httpx.Response]],
    done: Callable[[httpx.Response], bool],
    seconds: float = 15.0,
) -> httpx.Response:
    """Fetch until `done(response)` holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        response = await fetch()
        if done(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {seconds} s: {response.text}")
        await asyncio.sleep(0.02)


def sync_body(**fields: Any) -> dict[str, Any]:
    return {"type": IDEA, "payload": {"topic": "tea"}, **fields}


def types_of(body: dict[str, Any]) -> list[str]:
    return [a["type"] for a in body["artifacts"]]


async def stored_count(flock: Flock) -> int:
    _, total = await flock.store.query_artifacts(FilterConfig(), limit=1)
    return total


async def test_happy_path_returns_every_cascade_artifact_input_first(api_client: Any) -> None:
    flock = writer_flock()
    client = await api_client(flock)

    response = await client.post(SYNC, json=sync_body(tags=["t1"], partition_key="pk"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "correlation_id",
        "artifacts",
        "completed",
        "duration_ms",
        "errors",
        "truncated",
    }
    assert body["completed"] is True
    assert body["errors"] == [] and body["truncated"] is False
    assert body["duration_ms"] > 0
    assert types_of(body) == [IDEA, DRAFT, REVIEW]
    first, draft, final = body["artifacts"]
    assert all(set(a) == ARTIFACT_KEYS for a in body["artifacts"])
    assert first["payload"] == {"topic": "tea", "words": 1}
    assert first["produced_by"] == "external"
    assert first["tags"] == ["t1"]
    assert first["visibility"] == {"kind": "Public"} and first["visibility_kind"] == "Public"
    assert first["created_at"].endswith("Z") and first["version"] == 1
    assert draft["produced_by"] == "writer" and draft["payload"] == {"text": "about tea"}
    assert final["produced_by"] == "reviewer" and final["payload"] == {"verdict": "ok: about tea"}
    assert all(a["partition_key"] == "pk" for a in body["artifacts"])
    assert len({a["id"] for a in body["artifacts"]}) == 3
    # the cascade really is over: the scheduler has nothing left for this correlation
    status = (await client.get(f"/api/v1/correlations/{body['correlation_id']}")).json()
    assert status["state"] == "idle" and status["pending_runs"] == 0
    assert status["artifact_count"] == 3


async def test_correlation_id_is_fresh_and_matches_artifacts_and_headers(
    api_client: Any,
) -> None:
    client = await api_client(writer_flock())

    caller_id = "caller-chosen-id"
    first = await client.post(SYNC, json=sync_body(), headers={"X-Correlation-ID": caller_id})
    second = await client.post(SYNC, json=sync_body())

    ids = []
    for response in (first, second):
        assert response.status_code == 200
        cid = response.json()["correlation_id"]
        assert uuid.UUID(cid).version == 4
        assert all(a["correlation_id"] == cid for a in response.json()["artifacts"])
        assert response.headers["X-Correlation-ID"] == cid
        assert response.headers["Content-Location"] == f"/api/v1/correlations/{cid}"
        ids.append(cid)
    assert ids[0] != ids[1]
    assert caller_id not in ids  # the server generates the workflow's id
    location = first.headers["Content-Location"]
    status = await client.get(location)
    assert status.status_code == 200 and status.json()["correlation_id"] == ids[0]


async def test_no_downstream_agents_returns_only_the_input(api_client: Any) -> None:
    client = await api_client(writer_flock())

    response = await client.post(SYNC, json={"type": NOTE, "payload": {"text": "alone"}})

    assert response.status_code == 200
    body = response.json()
    assert body["completed"] is True
    assert types_of(body) == [NOTE]
    assert body["artifacts"][0]["payload"] == {"text": "alone"}


async def test_type_filter_returns_only_matching_types(api_client: Any) -> None:
    client = await api_client(writer_flock())

    only_review = await client.post(SYNC, json=sync_body(filters={"type_names": [REVIEW]}))
    input_and_review = await client.post(
        SYNC, json=sync_body(filters={"type_names": [REVIEW, IDEA]})
    )

    assert types_of(only_review.json()) == [REVIEW]
    assert only_review.json()["completed"] is True
    assert types_of(input_and_review.json()) == [IDEA, REVIEW]


async def test_produced_by_filter(api_client: Any) -> None:
    client = await api_client(writer_flock())

    by_writer = await client.post(SYNC, json=sync_body(filters={"produced_by": ["writer"]}))
    external = await client.post(
        SYNC, json=sync_body(filters={"produced_by": ["external", "reviewer"]})
    )
    none_match = await client.post(
        SYNC, json=sync_body(filters={"produced_by": ["writer"], "type_names": [REVIEW]})
    )

    assert types_of(by_writer.json()) == [DRAFT]
    assert types_of(external.json()) == [IDEA, REVIEW]
    assert none_match.json()["artifacts"] == []
    assert none_match.json()["completed"] is True


async def test_unknown_type_is_404_and_publishes_nothing(api_client: Any) -> None:
    flock = writer_flock()
    client = await api_client(flock)

    response = await client.post(SYNC, json={"type": "NoSuchType", "payload": {}})

    assert response.status_code == 404
    problem = response.json()
    assert problem["code"] == "NOT_FOUND" and problem["retryable"] is False
    assert "NoSuchType" in problem["message"]
    assert await stored_count(flock) == 0


async def test_invalid_payload_is_422_with_field_details(api_client: Any) -> None:
    flock = writer_flock()
    client = await api_client(flock)

    response = await client.post(SYNC, json={"type": IDEA, "payload": {"topic": "", "words": "x"}})

    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "VALIDATION_ERROR" and problem["retryable"] is False
    fields = {d["field"]: d for d in problem["details"]}
    assert set(fields) == {"payload.topic", "payload.words"}
    assert fields["payload.topic"]["code"] == "string_too_short"
    assert fields["payload.words"]["code"] == "int_parsing"
    missing = await client.post(SYNC, json={"type": IDEA, "payload": {}})
    assert [d["field"] for d in missing.json()["details"]] == ["payload.topic"]
    assert missing.json()["details"][0]["code"] == "missing"
    assert await stored_count(flock) == 0


async def test_timeout_returns_partial_results_and_the_cascade_finishes_later(
    api_client: Any,
) -> None:
    gate = Gate(Review(verdict="late"))
    client = await api_client(gated_flock(gate))
    try:
        call = asyncio.create_task(client.post(SYNC, json=sync_body(timeout=1)))
        await wait_for(gate.started)  # the Draft is stored; the reviewer now blocks
        response = await call

        assert response.status_code == 200
        body = response.json()
        cid = body["correlation_id"]
        assert body["completed"] is False
        assert types_of(body) == [IDEA, DRAFT]
        assert gate.correlation_ids == [cid]
        status = (await client.get(f"/api/v1/correlations/{cid}")).json()
        assert status["state"] == "running" and status["pending_runs"] == 1
    finally:
        gate.release.set()

    status_url = response.headers["Content-Location"]
    done = await poll_until(lambda: client.get(status_url), lambda r: r.json()["state"] == "idle")
    assert done.json()["artifact_count"] == 3 and done.json()["errors"] == []
    listed = await client.get("/api/v1/artifacts", params={"correlation_id": cid})
    assert [a["type"] for a in listed.json()["items"]] == [IDEA, DRAFT, REVIEW]
    assert listed.json()["items"][2]["payload"] == {"verdict": "late"}


async def test_on_timeout_error_answers_504_and_the_cascade_goes_on(api_client: Any) -> None:
    gate = Gate(Review(verdict="late"))
    client = await api_client(gated_flock(gate))
    try:
        response = await client.post(SYNC, json=sync_body(timeout=1, on_timeout="error"))

        assert response.status_code == 504
        problem = response.json()
        assert problem["code"] == "TIMEOUT" and problem["retryable"] is True
        cid = problem["correlation_id"]
        assert uuid.UUID(cid).version == 4
        assert response.headers["X-Correlation-ID"] == cid
        assert response.headers["Content-Location"] == f"/api/v1/correlations/{cid}"
        assert gate.correlation_ids == [cid]
        status = (await client.get(f"/api/v1/correlations/{cid}")).json()
        assert status["state"] == "running"
    finally:
        gate.release.set()
    await poll_until(
        lambda: client.get(f"/api/v1/correlations/{cid}"), lambda r: r.json()["state"] == "idle"
    )
    metrics = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for sample in family.samples
        if sample.name == "flock_sync_requests_total"
    }
    assert metrics == {"timeout": 1.0}


async def test_a_client_that_goes_away_does_not_cancel_the_cascade(api_client: Any) -> None:
    gate = Gate(Review(verdict="finished anyway"))
    client = await api_client(gated_flock(gate))
    call = asyncio.create_task(client.post(SYNC, json=sync_body(timeout=60)))
    try:
        await wait_for(gate.started)
        call.cancel()  # in-process, this cancels the request handler itself
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        gate.release.set()
    (cid,) = gate.correlation_ids

    await poll_until(
        lambda: client.get(f"/api/v1/correlations/{cid}"), lambda r: r.json()["state"] == "idle"
    )
    listed = await client.get("/api/v1/artifacts", params={"correlation_id": cid})
    assert [a["type"] for a in listed.json()["items"]] == [IDEA, DRAFT, REVIEW]


async def test_a_slow_correlation_does_not_delay_another(api_client: Any) -> None:
    gate = Gate(Secret(text="slow done"))
    flock = Flock()
    flock.agent("slow").consumes(Note).publishes(Secret).with_engines(gate)
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    client = await api_client(flock)
    try:
        slow = asyncio.create_task(
            client.post(SYNC, json={"type": NOTE, "payload": {"text": "x"}, "timeout": 60})
        )
        await wait_for(gate.started)
        (slow_cid,) = gate.correlation_ids

        fast = await client.post(SYNC, json=sync_body(timeout=30))

        assert fast.status_code == 200
        assert fast.json()["completed"] is True
        assert types_of(fast.json()) == [IDEA, DRAFT]
        assert fast.json()["correlation_id"] != slow_cid
        status = (await client.get(f"/api/v1/correlations/{slow_cid}")).json()
        assert status["state"] == "running" and status["pending_runs"] == 1
        assert not slow.done()
    finally:
        gate.release.set()
    slow_body = (await slow).json()
    assert slow_body["completed"] is True
    assert slow_body["correlation_id"] == slow_cid
    assert types_of(slow_body) == [NOTE, SECRET]


async def test_agent_failure_is_reported_and_sibling_output_returned(api_client: Any) -> None:
    def explode(idea: Idea) -> Note:
        raise RuntimeError("kaboom")

    flock = Flock()
    flock.agent("broken").consumes(Idea).publishes(Note).with_engines(explode)
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    client = await api_client(flock)

    response = await client.post(SYNC, json=sync_body())

    assert response.status_code == 200
    body = response.json()
    assert body["completed"] is True
    assert types_of(body) == [IDEA, DRAFT]
    (error,) = body["errors"]
    assert error["agent"] == "broken"
    assert error["artifact_id"] == body["artifacts"][0]["id"]
    assert "kaboom" in error["message"]
    assert error["at"].endswith("Z")
    status = (await client.get(f"/api/v1/correlations/{body['correlation_id']}")).json()
    assert status["errors"] == body["errors"]


async def test_anonymous_caller_sees_only_public_artifacts(api_client: Any) -> None:
    def confide(idea: Idea) -> Secret:
        return Secret(text="hush")

    def note(idea: Idea) -> Note:
        return Note(text="hello")

    flock = Flock()
    flock.agent("confider").consumes(Idea).publishes(
        Secret, visibility=PrivateVisibility(agents={"someone"})
    ).with_engines(confide)
    flock.agent("noter").consumes(Idea).publishes(Note).with_engines(note)
    client = await api_client(flock)

    response = await client.post(SYNC, json=sync_body())

    body = response.json()
    cid = body["correlation_id"]
    assert body["completed"] is True
    assert sorted(types_of(body)) == sorted([IDEA, NOTE])
    assert types_of(body)[0] == IDEA
    stored, _ = await flock.store.query_artifacts(
        FilterConfig(correlation_id=cid, type_names=frozenset({SECRET})), limit=10
    )
    (secret,) = stored
    assert secret.visibility_kind == "Private"  # type: ignore[union-attr]
    secret_id = secret.id  # type: ignore[union-attr]

    listed = (await client.get("/api/v1/artifacts", params={"correlation_id": cid})).json()
    assert sorted(a["type"] for a in listed["items"]) == sorted([IDEA, NOTE])
    assert listed["pagination"]["total"] == 2
    assert (await client.get(f"/api/v1/artifacts/{secret_id}")).status_code == 404
    public_id = body["artifacts"][1]["id"]
    assert (await client.get(f"/api/v1/artifacts/{public_id}")).status_code == 200
    summary = (await client.get("/api/v1/artifacts/summary")).json()
    assert summary["total"] == 2 and SECRET not in summary["by_type"]


async def test_results_beyond_the_cap_are_truncated(api_client: Any) -> None:
    def many(idea: Idea) -> list[Note]:
        return [Note(text=str(i)) for i in range(3)]

    flock = Flock()
    flock.agent("many").consumes(Idea).publishes(Note).with_engines(many)
    client = await api_client(flock, settings=ServiceSettings(max_sync_artifacts=2))

    response = await client.post(SYNC, json=sync_body())
    narrowed = await client.post(SYNC, json=sync_body(filters={"type_names": [NOTE]}))
    exact = await client.post(SYNC, json=sync_body(filters={"type_names": [IDEA]}))

    body = response.json()
    assert body["completed"] is True and body["truncated"] is True
    assert len(body["artifacts"]) == 2 and body["artifacts"][0]["type"] == IDEA
    assert narrowed.json()["truncated"] is True and len(narrowed.json()["artifacts"]) == 2
    assert exact.json()["truncated"] is False and types_of(exact.json()) == [IDEA]
    _, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=body["correlation_id"]), limit=1
    )
    assert total == 4


@pytest.mark.parametrize("route", ["/api/v1/artifacts", SYNC])
async def test_a_raising_where_predicate_is_an_agent_failure_not_a_500(
    api_client: Any, route: str
) -> None:
    def judge(idea: Idea) -> bool:
        raise KeyError("no opinion")

    flock = Flock()
    flock.agent("judge").consumes(Idea, where=judge).publishes(Note).with_engines(
        lambda idea: Note(text=idea.topic)
    )
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    client = await api_client(flock)

    response = await client.post(route, json=sync_body())

    assert response.status_code == 200, response.text
    correlation_id = response.json()["correlation_id"]
    await flock.run_until_idle(correlation_id, timeout=10)
    status = (await client.get(f"/api/v1/correlations/{correlation_id}")).json()
    assert status["artifact_count"] == 2  # the input and the writer's draft
    (error,) = status["errors"]
    assert error["agent"] == "judge" and "KeyError" in error["message"]


async def test_a_sync_answer_reads_its_correlation_once_when_the_cascade_ended(
    api_client: Any,
) -> None:
    """The publish starts the first run here, so the wait skips its first look; a commit
    that leaves the next run pending wakes nobody, and the end of the cascade (a run that
    died: its error is in the answer) wakes the waiter, whose read of the record is the one
    the answer reports: no progress read, no second read of the record. (A linear cascade:
    the end of one of parallel branches would wake the waiter before the other's.)"""

    def explode(draft: Draft) -> Review:
        raise RuntimeError("kaboom")

    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    flock.agent("broken").consumes(Draft).publishes(Review).with_engines(explode).retry(
        max_attempts=1
    )
    client = await api_client(flock)
    await client.post(SYNC, json=sync_body())  # warm: the worker is running
    reads: list[str] = []
    store = flock.store
    progress, get_correlation = store.progress, store.get_correlation

    async def spy_progress(correlation_id: str | None = None) -> Any:
        reads.append("progress")
        return await progress(correlation_id)

    async def spy_record(correlation_id: str) -> Any:
        reads.append("record")
        return await get_correlation(correlation_id)

    store.progress = spy_progress  # type: ignore[method-assign]
    store.get_correlation = spy_record  # type: ignore[method-assign]

    response = await client.post(SYNC, json=sync_body())

    body = response.json()
    assert body["completed"] is True
    assert types_of(body) == [IDEA, DRAFT]
    assert [e["agent"] for e in body["errors"]] == ["broken"]
    assert reads == ["record"]
