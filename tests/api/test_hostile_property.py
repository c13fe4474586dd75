"""Property: whatever JSON payload or query string a caller sends, on any store, the service
never answers 5xx, every answer is strict JSON, and every later read still works.

Hypothesis generates payloads from the whole JSON value space a careless client can put on
the wire (lone surrogates, NUL, NaN/Infinity, huge integers, deep nesting) and query
strings over every parameter of the read routes (any text, numbers, out-of-range values).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.testclient import TestClient

from flock import Flock, flock_type
from flock.api.service import BlackboardHTTPService
from flock.api.settings import ServiceSettings
from flock.core.store import BlackboardStore
from support.stores import BACKENDS, open_store

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 150
_SUFFIX = uuid.uuid4().hex[:8]
LOOSE = f"PropLoose_{_SUFFIX}"
TYPED = f"PropTyped_{_SUFFIX}"


@flock_type(name=LOOSE)
class Loose(BaseModel):
    """Takes any JSON object (extra fields kept), so every payload reaches the store."""

    model_config = {"extra": "allow"}


@flock_type(name=TYPED)
class Typed(BaseModel):
    text: str = ""
    amount: float = 0.0


def property_flock(store: BlackboardStore) -> Flock:
    flock = Flock(store=store)
    flock.agent("copier").consumes(Loose).publishes(Typed).with_engines(
        lambda loose: Typed(text=str(sorted(loose.model_dump()))[:100])
    )
    return flock


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlackboardStore:
    return open_store(str(request.param), request, tmp_path)


any_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=25,
)
publish_bodies = st.fixed_dictionaries(
    {"type": st.sampled_from([LOOSE, TYPED]), "payload": st.dictionaries(any_text, json_values)},
    optional={
        "tags": st.lists(any_text, max_size=3),
        "partition_key": any_text,
        "visibility": st.fixed_dictionaries(
            {"kind": st.sampled_from(["Public", "Tenant", "Private", "Bogus"])},
            optional={"tenant_id": any_text, "agents": st.lists(any_text, max_size=2)},
        ),
    },
)
QUERY_NAMES = (
    "type",
    "produced_by",
    "correlation_id",
    "tag",
    "from",
    "to",
    "visibility",
    "limit",
    "offset",
    "embed_meta",
)


def _escaped(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")  # a lone surrogate as its bytes


query_values = (
    any_text.map(_escaped)
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats().map(str)
    | st.binary(max_size=6).map(lambda b: quote(b, safe=""))
)
query_strings = st.lists(
    st.tuples(st.sampled_from(QUERY_NAMES) | any_text.map(_escaped), query_values), max_size=5
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


def _strict(response: Any) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a response")

    return json.loads(response.content, parse_constant=refuse)


def check_reads(client: TestClient) -> None:
    listed = client.get("/api/v1/artifacts", params={"limit": 500, "embed_meta": "true"})
    assert listed.status_code == 200, listed.text[:300]
    items = _strict(listed)["items"]
    assert client.get("/api/v1/artifacts/summary").status_code == 200
    for artifact in items[-20:]:
        one = client.get(f"/api/v1/artifacts/{quote(artifact['id'], safe='')}")
        assert one.status_code == 200, one.text[:300]
        cid = quote(artifact["correlation_id"], safe="")
        assert client.get(f"/api/v1/correlations/{cid}").status_code == 200


@pytest.mark.parametrize("route", ["/api/v1/artifacts", "/api/v1/artifacts/sync"])
def test_any_publish_body_never_breaks_the_service(store: BlackboardStore, route: str) -> None:
    service = BlackboardHTTPService(property_flock(store), settings=ServiceSettings())
    with TestClient(service.app, raise_server_exceptions=False) as client:

        @given(body=publish_bodies)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def publish(body: dict[str, Any]) -> None:
            if route.endswith("sync"):
                body = {**body, "timeout": 5}
            raw = json.dumps(body, allow_nan=True).encode()
            response = client.post(route, content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code < 500, response.text[:300]
            _strict(response)
            if response.status_code == 200:
                check_reads(client)

        publish()
        check_reads(client)


def test_any_query_string_never_breaks_the_service(store: BlackboardStore) -> None:
    service = BlackboardHTTPService(property_flock(store), settings=ServiceSettings())
    with TestClient(service.app, raise_server_exceptions=False) as client:
        seeded = client.post("/api/v1/artifacts/sync", json={"type": LOOSE, "payload": {"a": 1}})
        assert seeded.status_code == 200

        @given(query=query_strings, path=st.sampled_from(["artifacts", "artifacts/summary"]))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def query(query: str, path: str) -> None:
            response = client.get(f"/api/v1/{path}?{query}")
            assert response.status_code < 500, (query, response.text[:300])
            _strict(response)

        query()
        check_reads(client)
