"""The error model: every failure is a problem document with a code (SPEC section 4).

The `api_client` fixture checks each error response's shape (content type, ErrorResponse
body, status, X-Correlation-ID); these tests check which error each failure maps to.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flock import FilterConfig, Flock, flock_type
from flock.api.idempotency import RedisIdempotencyStore
from flock.api.settings import ServiceSettings
from flock.core.store.sql import PostgresBlackboardStore

pytestmark = pytest.mark.timeout(60)

SYNC = "/api/v1/artifacts/sync"
PUBLISH = "/api/v1/artifacts"
UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
_SUFFIX = uuid.uuid4().hex[:8]
ORDER = f"ErrOrder_{_SUFFIX}"


@flock_type(name=ORDER)
class Order(BaseModel):
    item: str = Field(min_length=1)
    qty: int = Field(gt=0)


def order_body(**fields: Any) -> dict[str, Any]:
    return {"type": ORDER, "payload": {"item": "tea", "qty": 1}, **fields}


async def stored_count(flock: Flock) -> int:
    _, total = await flock.store.query_artifacts(FilterConfig(), limit=1)
    return total


@pytest.fixture
async def flock() -> Flock:
    return Flock()


@pytest.fixture
async def client(api_client: Any, flock: Flock) -> Any:
    return await api_client(flock)


def details_of(response: Any) -> dict[str, dict[str, str]]:
    return {d["field"]: d for d in response.json()["details"]}


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SYNC, PUBLISH])
@pytest.mark.parametrize("content", [b'{"type": "x", ', b'{"type": "x"} trailing', b"\xff\xfe"])
async def test_unparseable_json_is_400(client: Any, path: str, content: bytes) -> None:
    response = await client.post(
        path, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "VALIDATION_ERROR" and problem["retryable"] is False
    assert problem["type"] == "https://flock.dev/errors/validation-error"
    assert problem["details"][0]["field"] == "body"


async def test_missing_type_is_422_on_field_type(client: Any) -> None:
    response = await client.post(SYNC, json={"payload": {"item": "tea", "qty": 1}})
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "VALIDATION_ERROR"
    assert problem["title"] == "Validation error"
    assert details_of(response)["type"]["code"] == "missing"


@pytest.mark.parametrize("timeout", [0, 0.5, 301, -5])
async def test_timeout_out_of_range_is_422_on_field_timeout(
    client: Any, flock: Flock, timeout: float
) -> None:
    response = await client.post(SYNC, json=order_body(timeout=timeout))
    assert response.status_code == 422
    assert set(details_of(response)) == {"timeout"}
    assert await stored_count(flock) == 0


async def test_payload_errors_name_each_field(client: Any, flock: Flock) -> None:
    response = await client.post(PUBLISH, json={"type": ORDER, "payload": {"qty": 0}})
    assert response.status_code == 422
    details = details_of(response)
    assert set(details) == {"payload.item", "payload.qty"}
    assert details["payload.item"]["code"] == "missing"
    assert details["payload.qty"]["code"] == "greater_than"
    assert all(d["message"] for d in details.values())
    assert await stored_count(flock) == 0


async def test_malformed_request_fields_are_422(client: Any) -> None:
    not_an_object = await client.post(SYNC, json=order_body(payload="tea"))
    unknown_field = await client.post(SYNC, json=order_body(timeuot=3))
    bad_filter = await client.post(SYNC, json=order_body(filters={"type_names": "x"}))
    bad_on_timeout = await client.post(SYNC, json=order_body(on_timeout="never"))
    not_a_dict = await client.post(SYNC, json=["type", ORDER])

    assert set(details_of(not_an_object)) == {"payload"}
    assert set(details_of(unknown_field)) == {"timeuot"}
    assert set(details_of(bad_filter)) == {"filters.type_names"}
    assert set(details_of(bad_on_timeout)) == {"on_timeout"}
    assert not_a_dict.status_code == 422
    for response in (not_an_object, unknown_field, bad_filter, bad_on_timeout):
        assert response.status_code == 422


@pytest.mark.parametrize("path", [SYNC, PUBLISH])
async def test_unknown_type_is_404_not_found(client: Any, path: str) -> None:
    response = await client.post(path, json={"type": f"Missing_{_SUFFIX}", "payload": {}})
    assert response.status_code == 404
    problem = response.json()
    assert problem["code"] == "NOT_FOUND" and problem["retryable"] is False
    assert problem["type"] == "https://flock.dev/errors/not-found"
    assert f"Missing_{_SUFFIX}" in problem["message"]


async def test_idempotency_key_reused_with_another_body_is_409(client: Any) -> None:
    key = {"X-Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = await client.post(PUBLISH, json=order_body(), headers=key)
    other = await client.post(
        PUBLISH, json=order_body(payload={"item": "tea", "qty": 2}), headers=key
    )
    assert first.status_code == 200
    assert other.status_code == 409
    problem = other.json()
    assert problem["code"] == "IDEMPOTENCY_CONFLICT" and problem["retryable"] is False


# -- routing and transport ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v2/artifacts"])
async def test_unknown_route_is_404(client: Any, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"
    assert path in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", PUBLISH), ("DELETE", SYNC), ("GET", SYNC + "/x"), ("POST", "/health")],
)
async def test_wrong_method_is_405(client: Any, method: str, path: str) -> None:
    response = await client.request(method, path)
    if path == SYNC + "/x":  # GET /artifacts/sync/x has no route at all
        assert response.status_code == 404
        return
    assert response.status_code == 405
    problem = response.json()
    assert problem["code"] == "METHOD_NOT_ALLOWED" and problem["retryable"] is False
    assert method in problem["message"]
    assert "allow" in response.headers


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", PUBLISH, "GET, HEAD, POST"),
        ("PUT", PUBLISH, "GET, HEAD, POST"),
        ("PATCH", "/health", "GET, HEAD"),
        # `/artifacts/sync` is POST only: `/artifacts/{artifact_id}` does not take it.
        ("DELETE", SYNC, "POST"),
        ("GET", SYNC, "POST"),
        ("OPTIONS", SYNC, "POST"),
        ("HEAD", SYNC, "POST"),
        ("GET", "/api/v1/artifacts/batch", "POST"),
    ],
)
async def test_405_allow_lists_every_method_of_the_path(
    client: Any, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    if method != "HEAD":  # a HEAD answer has no body
        assert response.json()["code"] == "METHOD_NOT_ALLOWED"
    for listed in allow.split(", "):
        assert (await client.request(listed, path)).status_code != 405, listed


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
async def test_non_json_body_is_415(client: Any, flock: Flock, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(SYNC, content=b'{"type": "x"}', headers=headers)
    assert response.status_code == 415
    assert response.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert await stored_count(flock) == 0


async def test_json_media_type_variants_are_accepted(client: Any) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge+json"):
        response = await client.post(
            PUBLISH,
            content=b'{"type": "%s", "payload": {"item": "x", "qty": 1}}' % ORDER.encode(),
            headers={"Content-Type": content_type},
        )
        assert response.status_code == 200, content_type


@pytest.fixture
async def small_client(api_client: Any, flock: Flock) -> Any:
    return await api_client(flock, settings=ServiceSettings(max_body_bytes=1024))


def _padded_body(size: int) -> bytes:
    head = b'{"type": "%s", "payload": {"item": "' % ORDER.encode()
    tail = b'", "qty": 1}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_body_over_the_limit_with_content_length_is_413(
    small_client: Any, flock: Flock
) -> None:
    under = await small_client.post(
        PUBLISH, content=_padded_body(1024), headers={"Content-Type": "application/json"}
    )
    over = await small_client.post(
        SYNC, content=_padded_body(1025), headers={"Content-Type": "application/json"}
    )
    assert under.status_code == 200
    assert over.request.headers["content-length"] == "1025"
    assert over.status_code == 413
    problem = over.json()
    assert problem["code"] == "PAYLOAD_TOO_LARGE" and problem["retryable"] is False
    assert "1024" in problem["message"]
    assert await stored_count(flock) == 1


async def test_streamed_body_over_the_limit_is_413(small_client: Any, flock: Flock) -> None:
    body = _padded_body(4096)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    response = await small_client.post(
        SYNC, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert await stored_count(flock) == 0


# -- crashes and outages ------------------------------------------------------------------


async def test_unhandled_exception_is_500_without_its_text(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode() -> None:
        raise RuntimeError("secret-detail")

    client.service.app.add_api_route("/boom", explode, methods=["GET"])
    caplog.set_level(logging.ERROR, logger="flock.api")

    response = await client.get("/boom", headers={"X-Correlation-ID": "trace-me-123"})
    anonymous = await client.get("/boom")

    assert response.status_code == 500
    problem = response.json()
    assert problem["code"] == "INTERNAL_ERROR" and problem["retryable"] is True
    assert problem["correlation_id"] == "trace-me-123"
    for answer in (response, anonymous):
        assert "secret-detail" not in answer.text
        assert "RuntimeError" not in answer.text and "Traceback" not in answer.text
    generated = anonymous.headers["X-Correlation-ID"]
    logged = [r.getMessage() for r in caplog.records if r.name == "flock.api"]
    assert any("trace-me-123" in line for line in logged)
    assert any(generated in line for line in logged)


async def test_store_unavailable_is_503_with_retry_after(api_client: Any) -> None:
    flock = Flock(store=PostgresBlackboardStore(UNREACHABLE_POSTGRES))
    client = await api_client(flock)

    sync = await client.post(SYNC, json=order_body())
    listed = await client.get("/api/v1/artifacts")
    ready = await client.get("/ready")
    health = await client.get("/health")

    for response in (sync, listed, ready):
        assert response.status_code == 503
        problem = response.json()
        assert problem["code"] == "SERVICE_UNAVAILABLE" and problem["retryable"] is True
        assert int(response.headers["retry-after"]) >= 1
        assert "127.0.0.1" not in problem["message"]
    assert health.status_code == 200 and health.json() == {"status": "ok"}


async def test_idempotency_store_unavailable_is_503_for_keyed_requests(api_client: Any) -> None:
    client = await api_client(Flock(), idempotency=RedisIdempotencyStore(UNREACHABLE_REDIS))

    keyed = await client.post(SYNC, json=order_body(), headers={"Idempotency-Key": "k1"})
    unkeyed = await client.post(SYNC, json=order_body())
    ready = await client.get("/ready")

    assert keyed.status_code == 503 and keyed.json()["code"] == "SERVICE_UNAVAILABLE"
    assert unkeyed.status_code == 200 and unkeyed.json()["completed"] is True
    assert ready.status_code == 503 and "idempotency" in ready.json()["message"]


async def test_shutting_down_answers_503_except_health(client: Any) -> None:
    client.service.begin_shutdown()

    for path in ("/api/v1/artifacts", "/ready", "/api/v1/agents"):
        response = await client.get(path)
        assert response.status_code == 503, path
        assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    refused = await client.post(SYNC, json=order_body())
    assert refused.status_code == 503
    assert (await client.get("/health")).status_code == 200


async def test_too_many_concurrent_sync_calls_are_429(api_client: Any) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(order: Order) -> None:
        started.set()
        await release.wait()

    flock = Flock()
    flock.agent("holder").consumes(Order).with_engines(hold)
    client = await api_client(flock, settings=ServiceSettings(max_inflight_sync=1))
    first = asyncio.create_task(client.post(SYNC, json=order_body()))
    try:
        async with asyncio.timeout(15):
            await started.wait()
        second = await client.post(SYNC, json=order_body())
        assert second.status_code == 429
        problem = second.json()
        assert problem["code"] == "RATE_LIMITED" and problem["retryable"] is True
    finally:
        release.set()
    assert (await first).json()["completed"] is True
    assert (await client.post(SYNC, json=order_body())).status_code == 200


async def test_ready_is_200_when_stores_answer(client: Any) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


# -- correlation ids ----------------------------------------------------------------------


async def test_a_valid_caller_correlation_id_is_echoed(client: Any) -> None:
    sent = "req-42.a_b:c"
    ok = await client.get("/health", headers={"X-Correlation-ID": sent})
    missing = await client.get("/api/v1/artifacts/none", headers={"X-Correlation-ID": sent})
    assert ok.headers["X-Correlation-ID"] == sent
    assert missing.status_code == 404
    assert missing.headers["X-Correlation-ID"] == sent
    assert missing.json()["correlation_id"] == sent


@pytest.mark.parametrize("sent", ["x" * 300, "has spaces", "semi;colon", ""])
async def test_an_invalid_caller_correlation_id_is_replaced(client: Any, sent: str) -> None:
    ok = await client.get("/health", headers={"X-Correlation-ID": sent})
    missing = await client.get("/nowhere", headers={"X-Correlation-ID": sent})
    for response in (ok, missing):
        replaced = response.headers["X-Correlation-ID"]
        assert replaced != sent
        assert uuid.UUID(replaced).version == 4
    assert missing.json()["correlation_id"] == missing.headers["X-Correlation-ID"]


async def test_each_request_gets_its_own_generated_correlation_id(client: Any) -> None:
    ids = {(await client.get("/health")).headers["X-Correlation-ID"] for _ in range(3)}
    assert len(ids) == 3
