"""The OpenAPI document: registered types and their payload schemas, publish bodies as a
`oneOf` by `type`, examples, headers, security, operationIds; it validates, and a client
that openapi-python-client generates from it publishes and reads back against `flock serve`.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from openapi_spec_validator import validate
from pydantic import BaseModel, ConfigDict, Field

from flock import Flock, flock_type
from flock.api.auth import APIKeyring
from flock.client import AsyncFlockClient
from support.apps import write_app
from support.serve import ServeProcess


class Grade(StrEnum):
    fine = "fine"
    coarse = "coarse"


class Line(BaseModel):
    sku: str = Field(min_length=5)
    qty: int = Field(ge=2, le=9)


@flock_type(name="OpenAPIOrder")
class Order(BaseModel):
    customer: str
    lines: list[Line] = Field(min_length=1)
    grade: Grade = Grade.coarse
    due: datetime | None = None


@flock_type(name="OpenAPINote")
class Note(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "hello", "stars": 3}]})

    text: str
    stars: int = 0


@flock_type(name="OpenAPIPagination")
class Pagination(BaseModel):  # the name of one of the API's own components
    page_size: int


KEYS = {"keys": [{"key": "secret-key", "principal": "alice"}]}
BUILT_IN_OPERATIONS = {
    ("post", "/api/v1/artifacts"): "publishArtifact",
    ("get", "/api/v1/artifacts"): "listArtifacts",
    ("post", "/api/v1/artifacts/sync"): "publishArtifactSync",
    ("post", "/api/v1/artifacts/batch"): "publishArtifactBatch",
    ("get", "/api/v1/artifacts/summary"): "summarizeArtifacts",
    ("get", "/api/v1/artifacts/{artifact_id}"): "getArtifact",
    ("get", "/api/v1/agents"): "listAgents",
    ("post", "/api/v1/agents/{name}/run"): "runAgent",
    ("get", "/api/v1/correlations/{correlation_id}"): "getCorrelation",
    ("post", "/api/v1/correlations/{correlation_id}/cancel"): "cancelCorrelation",
    ("get", "/api/v1/runs"): "listRuns",
    ("get", "/api/v1/runs/{run_id}"): "getRun",
    ("post", "/api/v1/runs/{run_id}/retry"): "retryRun",
    ("get", "/api/v1/types"): "listTypes",
    ("get", "/health"): "health",
    ("get", "/ready"): "ready",
    ("get", "/metrics"): "metrics",
}
PUBLISH = ("publishArtifact", "publishArtifactSync", "publishArtifactBatch")


async def _document(api_client: Any, **service_kwargs: Any) -> dict[str, Any]:
    client = await api_client(Flock(), **service_kwargs)
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for item in document["paths"].values() for op in item.values()}


def _component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


async def test_the_document_validates(api_client: Any) -> None:
    validate(await _document(api_client))
    validate(await _document(api_client, api_keys=APIKeyring.from_dict(KEYS)))


async def test_publish_bodies_are_a_oneof_of_the_registered_types(api_client: Any) -> None:
    document = await _document(api_client)
    operations = _operations(document)

    for operation_id, base in (
        ("publishArtifact", "PublishRequest"),
        ("publishArtifactSync", "SyncPublishRequest"),
    ):
        content = operations[operation_id]["requestBody"]["content"]["application/json"]
        union = content["schema"]
        mapping = union["discriminator"]["mapping"]
        assert union["discriminator"]["propertyName"] == "type"
        assert [v["$ref"] for v in union["oneOf"]] == list(mapping.values())
        for name, model in (("OpenAPIOrder", Order), ("OpenAPINote", Note)):
            variant = _component(document, mapping[name])
            assert variant["properties"]["type"]["const"] == name
            payload = _component(document, variant["properties"]["payload"]["$ref"])
            assert set(payload["properties"]) == set(model.model_fields)
            assert set(payload["required"]) == {
                n for n, f in model.model_fields.items() if f.is_required()
            }
            # every option of the base request is kept (timeout, filters for sync)
            base_props = set(document["components"]["schemas"][base]["properties"])
            assert set(variant["properties"]) == base_props
            # an example per type, built from the model, that the model accepts
            example = content["examples"][name]["value"]
            assert example["type"] == name
            model.model_validate(example["payload"])
        assert "payload" in _component(document, mapping["OpenAPIOrder"])["required"]

    batch = _operations(document)["publishArtifactBatch"]
    request = _component(
        document, batch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    )
    items = request["properties"]["items"]["items"]
    variant = _component(document, items["discriminator"]["mapping"]["OpenAPINote"])
    assert "idempotency_key" in variant["properties"]


async def test_payload_schemas_and_examples_come_from_the_models(api_client: Any) -> None:
    document = await _document(api_client)
    schemas = document["components"]["schemas"]
    mapping = _operations(document)["publishArtifact"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["discriminator"]["mapping"]

    def payload_of(type_name: str) -> dict[str, Any]:
        return _component(
            document, _component(document, mapping[type_name])["properties"]["payload"]["$ref"]
        )

    # a model's own example is used as it is
    assert payload_of("OpenAPINote")["examples"] == [{"text": "hello", "stars": 3}]
    # one built from the schema honours nested models, lengths, bounds and enums
    order_example = payload_of("OpenAPIOrder")["examples"][0]
    order = Order.model_validate(order_example)
    assert len(order.lines[0].sku) >= 5 and order.lines[0].qty >= 2
    # nested models and enums are components too, referenced from the payload
    assert {"Line", "Grade"} <= set(schemas)
    # a model named like one of the API's components gets a name of its own: the
    # API's Pagination stays what it was
    assert set(schemas["Pagination"]["properties"]) == {"limit", "offset", "total"}
    assert set(payload_of("OpenAPIPagination")["properties"]) == {"page_size"}


async def test_publish_routes_declare_their_headers(api_client: Any) -> None:
    operations = _operations(await _document(api_client))

    for operation_id in PUBLISH:
        operation = operations[operation_id]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"Idempotency-Key", "X-Idempotency-Key", "X-Correlation-ID"}
        answered = operation["responses"]["200"]["headers"]
        assert {"X-Correlation-ID", "Idempotent-Replayed"} <= set(answered)
    assert "parameters" not in operations["listAgents"]


async def test_operation_ids_are_explicit_and_stable(api_client: Any) -> None:
    document = await _document(api_client)

    found = {
        (method, path): op["operationId"]
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert found == BUILT_IN_OPERATIONS


async def test_security_schemes_only_with_api_keys(api_client: Any) -> None:
    open_doc = await _document(api_client)
    assert "securitySchemes" not in open_doc["components"]
    assert all("security" not in op for op in _operations(open_doc).values())

    guarded = await _document(api_client, api_keys=APIKeyring.from_dict(KEYS))
    schemes = guarded["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKeyHeader"]["in"], schemes["apiKeyHeader"]["name"]) == (
        "header",
        "X-API-Key",
    )
    for path, item in guarded["paths"].items():
        for op in item.values():
            if path.startswith("/api/v1/"):
                assert op["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}], path
            else:  # /health, /ready, /metrics stay open
                assert "security" not in op, path


async def test_types_endpoint_lists_each_type_and_its_schema(api_client: Any) -> None:
    client = await api_client(Flock())

    response = await client.get("/api/v1/types")

    assert response.status_code == 200
    listed = {t["name"]: t["schema"] for t in response.json()["types"]}
    for name, model in (("OpenAPIOrder", Order), ("OpenAPINote", Note)):
        schema = listed[name]
        expected = model.model_json_schema()
        assert schema["properties"] == expected["properties"]
        assert schema.get("$defs") == expected.get("$defs")
        model.model_validate(schema["examples"][0])
    assert listed["OpenAPINote"]["examples"] == [{"text": "hello", "stars": 3}]


async def test_types_endpoint_needs_a_key_when_keys_are_on(api_client: Any) -> None:
    client = await api_client(Flock(), api_keys=APIKeyring.from_dict(KEYS))

    assert (await client.get("/api/v1/types")).status_code == 401
    answer = await client.get("/api/v1/types", headers={"X-API-Key": "secret-key"})
    assert answer.status_code == 200 and answer.json()["types"]


async def test_the_python_client_lists_types(api_client: Any) -> None:
    service_client = await api_client(Flock())
    transport = httpx.ASGITransport(app=service_client.service.app)
    async with AsyncFlockClient("http://test", transport=transport) as client:
        types = {t.name: t for t in await client.list_types()}

    assert types["OpenAPINote"].schema["properties"] == Note.model_json_schema()["properties"]


async def test_a_model_without_a_json_schema_is_left_out(api_client: Any) -> None:
    class Opaque:
        pass

    @flock_type(name="OpenAPIOpaque")
    class Blob(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        value: Opaque

    client = await api_client(Flock())
    document = (await client.get("/openapi.json")).json()
    validate(document)
    mapping = _operations(document)["publishArtifact"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["discriminator"]["mapping"]
    assert "OpenAPIOpaque" not in mapping and "OpenAPIOrder" in mapping
    types = {t["name"]: t for t in (await client.get("/api/v1/types")).json()["types"]}
    assert types["OpenAPIOpaque"]["schema"] == {}


# -- a generated client, against a real server ----------------------------------------------

GENERATED_APP = """
from pydantic import BaseModel, Field

from flock import Flock, flock_type


class Item(BaseModel):
    sku: str = Field(min_length=3)
    qty: int = Field(ge=1)


@flock_type
class Basket(BaseModel):
    owner: str
    items: list[Item]


@flock_type
class Total(BaseModel):
    owner: str
    count: int


def count(basket: Basket) -> Total:
    return Total(owner=basket.owner, count=sum(i.qty for i in basket.items))


flock = Flock()
flock.agent("counter").consumes(Basket).publishes(Total).with_engines(count)
"""


def _generate_client(document: dict[str, Any], directory: Path, package: str) -> None:
    spec = directory / "openapi.json"
    spec.write_text(json.dumps(document))
    config = directory / "config.json"
    config.write_text(json.dumps({"post_hooks": []}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(directory / package),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_generated_client_publishes_and_reads_back(tmp_path: Path) -> None:
    app = write_app(tmp_path, "shop_app.py", GENERATED_APP)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    package = "flock_generated_client"
    stores = ("--store", "memory://", "--idempotency", "memory://")
    with ServeProcess(str(app), *stores, "--api-keys", str(keys), cwd=tmp_path) as server:
        document = httpx.get(f"{server.url}/openapi.json").json()
        validate(document)
        _generate_client(document, tmp_path, package)
        sys.path.insert(0, str(tmp_path))
        try:
            generated = importlib.import_module(package)
            models = importlib.import_module(f"{package}.models")
            publish = importlib.import_module(f"{package}.api.artifacts.publish_artifact")
            publish_sync = importlib.import_module(f"{package}.api.artifacts.publish_artifact_sync")
            get_artifact = importlib.import_module(f"{package}.api.artifacts.get_artifact")
            list_types = importlib.import_module(f"{package}.api.types.list_types")
            client = generated.AuthenticatedClient(base_url=server.url, token="secret-key")

            body = models.BasketPublishRequest(
                type_="Basket",
                payload=models.Basket(owner="ann", items=[models.Item(sku="abc", qty=2)]),
            )
            accepted = publish.sync_detailed(client=client, body=body, idempotency_key="basket-1")
            assert accepted.status_code == 200, accepted.content
            assert isinstance(accepted.parsed, models.PublishResponse)
            again = publish.sync_detailed(client=client, body=body, idempotency_key="basket-1")
            assert again.headers["idempotent-replayed"] == "true"
            assert again.parsed.artifact_id == accepted.parsed.artifact_id

            stored = get_artifact.sync(accepted.parsed.artifact_id, client=client)
            assert isinstance(stored, models.ArtifactModel)
            assert stored.type_ == "Basket"
            assert stored.payload.to_dict() == {"owner": "ann", "items": [{"sku": "abc", "qty": 2}]}

            waited = publish_sync.sync(
                client=client,
                body=models.BasketSyncPublishRequest(
                    type_="Basket",
                    payload=models.Basket(owner="bo", items=[models.Item(sku="xyz", qty=5)]),
                    timeout=30,
                ),
            )
            assert isinstance(waited, models.SyncPublishResponse), waited
            assert waited.completed
            totals = [a.payload.to_dict() for a in waited.artifacts if a.type_ == "Total"]
            assert totals == [{"owner": "bo", "count": 5}]

            types = list_types.sync(client=client)
            assert {t.name for t in types.types} == {"Basket", "Total"}

            unauthenticated = generated.Client(base_url=server.url)
            refused = get_artifact.sync_detailed(
                accepted.parsed.artifact_id, client=unauthenticated
            )
            assert refused.status_code == 401
        finally:
            sys.path.remove(str(tmp_path))
            for name in [m for m in sys.modules if m.split(".")[0] == package]:
                del sys.modules[name]
