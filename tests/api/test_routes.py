"""Query, agent, correlation, health, metrics and docs routes (SPEC section 2)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from flock import Flock, flock_type

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]
ALPHA, BETA, GAMMA = (f"Route{n}_{_SUFFIX}" for n in ("Alpha", "Beta", "Gamma"))


@flock_type(name=ALPHA)
class Alpha(BaseModel):
    n: int


@flock_type(name=BETA)
class Beta(BaseModel):
    n: int


@flock_type(name=GAMMA)
class Gamma(BaseModel):
    n: int


def echo(beta: Beta) -> Gamma:
    return Gamma(n=beta.n * 10)


def double(alpha: Alpha) -> Beta:
    return Beta(n=alpha.n * 2)


def echo_flock() -> Flock:
    """Beta --echo--> Gamma; Alpha has no consumer."""
    flock = Flock()
    flock.agent("echo").description("Beta to Gamma").consumes(Beta).publishes(Gamma).with_engines(
        echo
    )
    return flock


async def publish(client: Any, type_name: str, n: int, tags: list[str] | None = None) -> str:
    response = await client.post(
        "/api/v1/artifacts", json={"type": type_name, "payload": {"n": n}, "tags": tags or []}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    assert response.headers["X-Correlation-ID"] == response.json()["correlation_id"]
    return str(response.json()["artifact_id"])


@pytest.fixture
async def seeded(api_client: Any) -> tuple[Any, Flock, dict[str, str]]:
    """Alpha x3 (tag red), Beta x2 (tag blue, each echoed to a Gamma), Alpha (red, blue)."""
    flock = echo_flock()
    client = await api_client(flock)
    ids = {}
    for n in range(3):
        ids[f"alpha{n}"] = await publish(client, ALPHA, n, ["red"])
    for n in range(2):
        ids[f"beta{n}"] = await publish(client, BETA, n, ["blue"])
    ids["both"] = await publish(client, ALPHA, 9, ["red", "blue"])
    await flock.run_until_idle(timeout=15)
    return client, flock, ids


async def query(client: Any, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/v1/artifacts", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def types_of(body: dict[str, Any]) -> list[str]:
    return [a["type"] for a in body["items"]]


# -- GET /artifacts -----------------------------------------------------------------------


async def test_query_filters(seeded: tuple[Any, Flock, dict[str, str]]) -> None:
    client, _, ids = seeded

    everything = await query(client)
    alphas = await query(client, type=ALPHA)
    alphas_and_gammas = await query(client, type=[ALPHA, GAMMA])
    by_echo = await query(client, produced_by="echo")
    external = await query(client, produced_by="external")
    blue = await query(client, tag="blue")
    red_or_blue = await query(client, tag=["red", "blue"])
    public = await query(client, visibility="Public")
    private = await query(client, visibility="Private")
    nothing = await query(client, type=f"Unused_{_SUFFIX}")

    assert everything["pagination"] == {"limit": 50, "offset": 0, "total": 8}
    assert alphas["pagination"]["total"] == 4 and set(types_of(alphas)) == {ALPHA}
    assert sorted(types_of(alphas_and_gammas)) == sorted([ALPHA] * 4 + [GAMMA] * 2)
    assert types_of(by_echo) == [GAMMA, GAMMA]
    assert sorted(a["payload"]["n"] for a in by_echo["items"]) == [0, 10]
    assert external["pagination"]["total"] == 6
    assert {a["id"] for a in blue["items"]} == {ids["beta0"], ids["beta1"], ids["both"]}
    assert red_or_blue["pagination"]["total"] == 6
    assert public["pagination"]["total"] == 8 and private["pagination"]["total"] == 0
    assert nothing == {"items": [], "pagination": {"limit": 50, "offset": 0, "total": 0}}


async def test_query_by_correlation_and_time(seeded: tuple[Any, Flock, dict[str, str]]) -> None:
    client, _, ids = seeded
    beta = (await client.get(f"/api/v1/artifacts/{ids['beta1']}")).json()

    cascade = await query(client, correlation_id=beta["correlation_id"])
    assert [(a["type"], a["payload"]) for a in cascade["items"]] == [
        (BETA, {"n": 1}),
        (GAMMA, {"n": 10}),
    ]
    assert all(a["correlation_id"] == beta["correlation_id"] for a in cascade["items"])

    created = datetime.fromisoformat(beta["created_at"].replace("Z", "+00:00"))
    past = (created - timedelta(days=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await query(client, **{"from": past}))["pagination"]["total"] == 8
    assert (await query(client, to=past))["pagination"]["total"] == 0
    assert (await query(client, **{"from": future}))["pagination"]["total"] == 0
    naive_past = (created - timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert (await query(client, **{"from": naive_past}))["pagination"]["total"] == 8
    bad_time = await client.get("/api/v1/artifacts", params={"from": "yesterday"})
    assert bad_time.status_code == 422
    assert bad_time.json()["details"][0]["field"] == "query.from"


async def test_query_pagination(seeded: tuple[Any, Flock, dict[str, str]]) -> None:
    client, _, _ = seeded
    everything = [a["id"] for a in (await query(client))["items"]]

    pages = []
    for offset in range(0, 10, 3):
        page = await query(client, limit=3, offset=offset)
        assert page["pagination"] == {"limit": 3, "offset": offset, "total": 8}
        pages.append([a["id"] for a in page["items"]])

    assert [len(p) for p in pages] == [3, 3, 2, 0]
    assert [i for p in pages for i in p] == everything
    assert len(set(everything)) == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"offset": -1}, "query.offset"),
    ],
)
async def test_query_bounds(api_client: Any, params: dict[str, Any], field: str) -> None:
    client = await api_client(echo_flock())
    response = await client.get("/api/v1/artifacts", params=params)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["details"]] == [field]


async def test_query_limit_extremes_are_accepted(api_client: Any) -> None:
    client = await api_client(echo_flock())
    for limit in (1, 500):
        body = await query(client, limit=limit)
        assert body["pagination"]["limit"] == limit


async def test_embed_meta_adds_consumptions(seeded: tuple[Any, Flock, dict[str, str]]) -> None:
    client, _, ids = seeded

    plain = await query(client, type=BETA)
    embedded = await query(client, type=BETA, embed_meta="true")

    assert all("consumptions" not in a for a in plain["items"])
    for item in embedded["items"]:
        (record,) = item["consumptions"]
        assert record["consumer"] == "echo" and record["artifact_id"] == item["id"]
    assert {a["id"] for a in embedded["items"]} == {ids["beta0"], ids["beta1"]}


# -- summary and single artifacts ---------------------------------------------------------


async def test_summary(seeded: tuple[Any, Flock, dict[str, str]]) -> None:
    client, _, _ = seeded

    summary = (await client.get("/api/v1/artifacts/summary")).json()
    alphas = (await client.get("/api/v1/artifacts/summary", params={"type": ALPHA})).json()
    by_echo = (await client.get("/api/v1/artifacts/summary", params={"produced_by": "echo"})).json()

    assert summary == {
        "total": 8,
        "by_type": {ALPHA: 4, BETA: 2, GAMMA: 2},
        "by_producer": {"external": 6, "echo": 2},
        "by_visibility": {"Public": 8},
    }
    assert alphas["total"] == 4 and alphas["by_type"] == {ALPHA: 4}
    assert by_echo["total"] == 2 and by_echo["by_type"] == {GAMMA: 2}


async def test_get_one_artifact(seeded: tuple[Any, Flock, dict[str, str]]) -> None:
    client, _, ids = seeded

    found = await client.get(f"/api/v1/artifacts/{ids['both']}")
    missing = await client.get(f"/api/v1/artifacts/{uuid.uuid4()}")

    assert found.status_code == 200
    artifact = found.json()
    assert artifact["id"] == ids["both"] and artifact["type"] == ALPHA
    assert artifact["payload"] == {"n": 9} and artifact["tags"] == ["blue", "red"]
    assert artifact["produced_by"] == "external" and artifact["version"] == 1
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


# -- agents -------------------------------------------------------------------------------


def chain_flock() -> Flock:
    """Alpha --doubler--> Beta --echo--> Gamma."""
    flock = echo_flock()
    flock.agent("doubler").consumes(Alpha).publishes(Beta).with_engines(double).max_concurrency(3)
    return flock


async def test_list_agents(api_client: Any) -> None:
    client = await api_client(chain_flock())

    response = await client.get("/api/v1/agents")

    assert response.status_code == 200
    agents = {a["name"]: a for a in response.json()["agents"]}
    assert set(agents) == {"echo", "doubler"}
    assert agents["echo"]["description"] == "Beta to Gamma"
    assert [s["types"] for s in agents["echo"]["subscriptions"]] == [[BETA]]
    assert agents["echo"]["outputs"] == [{"type": GAMMA, "visibility": "Public"}]
    assert agents["doubler"]["max_concurrency"] == 3
    assert [o["type"] for o in agents["doubler"]["outputs"]] == [BETA]


async def test_run_agent_returns_outputs_and_triggers_no_cascade(api_client: Any) -> None:
    flock = chain_flock()
    client = await api_client(flock)

    response = await client.post(
        "/api/v1/agents/doubler/run",
        json={"inputs": [{"type": ALPHA, "payload": {"n": 21}}]},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["agent"] == "doubler"
    (output,) = body["artifacts"]
    assert output["type"] == BETA and output["payload"] == {"n": 42}
    assert output["produced_by"] == "doubler"
    await flock.run_until_idle(timeout=15)
    stored = await query(client)
    # the output is stored, but echo never ran on it
    assert types_of(stored) == [BETA]
    assert stored["items"][0]["id"] == output["id"]
    assert flock.stats.agent_runs == 1


async def test_run_agent_failure_is_reported_in_errors(api_client: Any) -> None:
    flock = chain_flock()

    def explode(alpha: Alpha) -> Beta:
        raise ValueError(f"cannot take {alpha.n}")

    flock.agent("exploder").consumes(Alpha).publishes(Beta).with_engines(explode)
    client = await api_client(flock)

    response = await client.post(
        "/api/v1/agents/exploder/run", json={"inputs": [{"type": ALPHA, "payload": {"n": 7}}]}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["artifacts"] == []
    (error,) = body["errors"]
    assert error["agent"] == "exploder"
    assert error["message"] == "ValueError: cannot take 7"
    assert flock.stats.agent_failures == 1


async def test_run_agent_errors(api_client: Any) -> None:
    client = await api_client(chain_flock())
    good_input = {"inputs": [{"type": ALPHA, "payload": {"n": 1}}]}

    unknown_agent = await client.post("/api/v1/agents/nobody/run", json=good_input)
    unknown_type = await client.post(
        "/api/v1/agents/doubler/run", json={"inputs": [{"type": f"No_{_SUFFIX}"}]}
    )
    bad_payload = await client.post(
        "/api/v1/agents/doubler/run",
        json={"inputs": [good_input["inputs"][0], {"type": ALPHA, "payload": {"n": "x"}}]},
    )
    no_inputs = await client.post("/api/v1/agents/doubler/run", json={"inputs": []})

    assert unknown_agent.status_code == 404 and "nobody" in unknown_agent.json()["message"]
    assert unknown_type.status_code == 404
    assert bad_payload.status_code == 422
    assert [d["field"] for d in bad_payload.json()["details"]] == ["inputs[1].payload.n"]
    assert no_inputs.status_code == 422
    assert [d["field"] for d in no_inputs.json()["details"]] == ["inputs"]


# -- correlations -------------------------------------------------------------------------


async def test_correlation_status(api_client: Any) -> None:
    client = await api_client(chain_flock())
    sync = await client.post(
        "/api/v1/artifacts/sync", json={"type": ALPHA, "payload": {"n": 1}, "timeout": 30}
    )
    cid = sync.json()["correlation_id"]

    response = await client.get(f"/api/v1/correlations/{cid}")
    missing = await client.get(f"/api/v1/correlations/{uuid.uuid4()}")

    assert response.status_code == 200
    assert response.headers["X-Correlation-ID"] == cid
    status = response.json()
    assert status["correlation_id"] == cid
    assert status["state"] == "idle" and status["pending_runs"] == 0
    assert status["artifact_count"] == 3 and status["errors"] == []
    assert status["started_at"] <= status["updated_at"]
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


# -- health and metrics -------------------------------------------------------------------


async def test_health(api_client: Any) -> None:
    client = await api_client(echo_flock())
    response = await client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics(api_client: Any) -> None:
    def broken(alpha: Alpha) -> Gamma:
        raise ValueError("no")

    flock = chain_flock()
    flock.agent("broken").consumes(Alpha).publishes(Gamma).with_engines(broken).retry(
        max_attempts=1
    )
    client = await api_client(flock)

    for _ in range(2):
        await client.get("/health")
    sync = await client.post("/api/v1/artifacts/sync", json={"type": ALPHA, "payload": {"n": 1}})
    assert sync.json()["completed"] is True
    await client.get("/api/v1/nowhere")
    await client.post("/api/v1/artifacts/sync", json={"type": ALPHA, "payload": {}})
    await client.get(f"/api/v1/artifacts/{uuid.uuid4()}")
    # refused before routing, yet counted under their route
    await client.post("/api/v1/artifacts", content=b"x", headers={"Content-Type": "text/plain"})
    await client.delete("/api/v1/artifacts")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)

    def requests(method: str, route: str, status: str) -> float:
        key = (("method", method), ("route", route), ("status", status))
        return samples.get(("flock_http_requests_total", key), 0.0)

    assert requests("GET", "/health", "200") == 2
    assert requests("POST", "/api/v1/artifacts/sync", "200") == 1
    assert requests("POST", "/api/v1/artifacts/sync", "422") == 1
    assert requests("GET", "/api/v1/artifacts/{artifact_id}", "404") == 1
    assert requests("GET", "unmatched", "404") == 1
    assert requests("POST", "/api/v1/artifacts", "415") == 1
    assert requests("DELETE", "/api/v1/artifacts", "405") == 1
    latency_key = (("method", "GET"), ("route", "/health"), ("status", "200"))
    assert samples[("flock_http_request_duration_seconds_count", latency_key)] == 2
    assert samples[("flock_sync_requests_total", (("outcome", "completed"),))] == 1
    # Alpha -> doubler (Beta) -> echo (Gamma); broken raised on the Alpha
    assert samples[("flock_agent_runs_total", ())] == 3
    assert samples[("flock_agent_failures_total", ())] == 1
    assert samples[("flock_artifacts_published_total", ())] == 3
    # per agent and outcome, and each run's duration
    assert samples[("flock_runs_total", (("agent", "doubler"), ("outcome", "succeeded")))] == 1
    assert samples[("flock_runs_total", (("agent", "broken"), ("outcome", "dead")))] == 1
    assert samples[("flock_run_duration_seconds_count", (("agent", "echo"),))] == 1
    assert samples[("flock_run_queue_seconds_count", (("agent", "doubler"),))] == 1
    assert samples[("flock_runs_fenced_total", ())] == 0


# -- docs and OpenAPI ---------------------------------------------------------------------


async def test_docs_work_offline(api_client: Any) -> None:
    client = await api_client(echo_flock())

    response = await client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assets = [u for u in urls if u.startswith("/docs-assets/")]
    assert sorted(assets) == sorted(set(urls)) and len(assets) == 3
    assert "swagger-ui-bundle.js" in " ".join(assets)
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    for url in assets:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        if url.endswith(".js"):
            assert "SwaggerUIBundle" in asset.text
            assert "javascript" in asset.headers["content-type"]
    missing = await client.get("/docs-assets/no-such-file.js")
    assert missing.status_code == 404


SPEC_OPERATIONS = {
    ("post", "/api/v1/artifacts"),
    ("get", "/api/v1/artifacts"),
    ("post", "/api/v1/artifacts/sync"),
    ("post", "/api/v1/artifacts/batch"),
    ("get", "/api/v1/artifacts/summary"),
    ("get", "/api/v1/artifacts/{artifact_id}"),
    ("get", "/api/v1/agents"),
    ("post", "/api/v1/agents/{name}/run"),
    ("get", "/api/v1/correlations/{correlation_id}"),
    ("post", "/api/v1/correlations/{correlation_id}/cancel"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/runs/{run_id}"),
    ("post", "/api/v1/runs/{run_id}/retry"),
    ("get", "/api/v1/types"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
}


async def test_openapi_lists_every_route(api_client: Any) -> None:
    client = await api_client(echo_flock())

    response = await client.get("/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    documented = {
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert documented == SPEC_OPERATIONS
    # every documented operation is served (no "no route" 404 or 405)
    for method, path in sorted(documented):
        url = re.sub(r"\{[^}]+\}", "x", path)
        answer = await client.request(method.upper(), url, json={} if method == "post" else None)
        assert answer.status_code != 405, (method, path)
        if answer.status_code == 404:
            assert "no route" not in answer.json()["message"], (method, path)
    sync = spec["paths"]["/api/v1/artifacts/sync"]["post"]
    assert sync["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SyncPublishResponse"
    )
    for status in ("404", "422", "504"):
        assert "application/problem+json" in sync["responses"][status]["content"]
    schemas = spec["components"]["schemas"]
    assert {"ErrorResponse", "ErrorDetail", "SyncPublishRequest"} <= set(schemas)
    timeout = schemas["SyncPublishRequest"]["properties"]["timeout"]
    assert (timeout["minimum"], timeout["maximum"], timeout["default"]) == (1, 300, 30)
