"""`JSONBodyRoute`: the short path for one-JSON-body endpoints, and its fall-backs."""

from __future__ import annotations

import uuid
from typing import Any

import fastapi.routing
import pytest
from fastapi import Request
from pydantic import BaseModel

from flock import Flock, flock_type
from flock.api.auth import Principal
from flock.api.deps import get_principal

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"RoutedNote_{_SUFFIX}")
class Note(BaseModel):
    text: str


def _flock() -> Flock:
    return Flock()


def _body(**payload: Any) -> dict[str, Any]:
    return {"type": f"RoutedNote_{_SUFFIX}", "payload": payload}


@pytest.fixture
def no_solving(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every time FastAPI's generic dependency solving runs."""
    calls: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", spy)
    return calls


async def test_valid_publish_bodies_skip_generic_handling(api_client: Any, no_solving: list[str]):
    client = await api_client(_flock())
    sync = await client.post("/api/v1/artifacts/sync", json=_body(text="hi"))
    accepted = await client.post("/api/v1/artifacts", json=_body(text="hi"))
    batch = await client.post("/api/v1/artifacts/batch", json={"items": [_body(text="hi")]})
    assert [sync.status_code, accepted.status_code, batch.status_code] == [200, 200, 200]
    assert sync.json()["artifacts"][0]["payload"] == {"text": "hi"}
    assert no_solving == []
    assert (await client.get("/api/v1/artifacts")).status_code == 200
    assert no_solving == ["/api/v1/artifacts"]  # query endpoints keep FastAPI's handler


@pytest.mark.parametrize(
    ("content", "status", "field"),
    [
        (b'{"type": ', 400, "body"),  # unparseable
        (b'{"payload": {}}', 422, "type"),  # missing field
        (b'{"type": "X", "surprise": 1}', 422, "surprise"),  # extra field
        (b"[1, 2]", 422, "body"),  # not an object
    ],
)
async def test_bad_bodies_get_fastapis_errors(
    api_client: Any, no_solving: list[str], content: bytes, status: int, field: str
):
    client = await api_client(_flock())
    response = await client.post(
        "/api/v1/artifacts/sync", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in response.json()["details"]] == [field]


async def test_dependency_overrides_are_honoured(api_client: Any, no_solving: list[str]):
    client = await api_client(_flock())

    async def someone(request: Request) -> Principal:
        return Principal(name="someone", tenant="acme")

    client.service.app.dependency_overrides[get_principal] = someone
    key = {"Idempotency-Key": "k1"}
    first = await client.post("/api/v1/artifacts", json=_body(text="a"), headers=key)
    assert first.status_code == 200
    assert no_solving == ["/api/v1/artifacts"]
    client.service.app.dependency_overrides.clear()
    # The key was scoped to the overriding principal: the anonymous caller runs anew.
    second = await client.post("/api/v1/artifacts", json=_body(text="a"), headers=key)
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers
    assert second.json()["artifact_id"] != first.json()["artifact_id"]


async def test_openapi_documents_the_request_bodies(api_client: Any):
    client = await api_client(_flock())
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, model in (
        ("/api/v1/artifacts", "PublishRequest"),
        ("/api/v1/artifacts/sync", "SyncPublishRequest"),
        ("/api/v1/artifacts/batch", "BatchPublishRequest"),
    ):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        # with types registered, a publish body is a oneOf of one variant per type
        refs = [v["$ref"] for v in schema["oneOf"]] if "oneOf" in schema else [schema["$ref"]]
        assert refs and all(ref.endswith(model) for ref in refs), refs
