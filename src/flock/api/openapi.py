"""The OpenAPI document's Flock-specific parts, added to what FastAPI builds from the routes.

- every registered artifact type's payload schema in `components.schemas`, and the publish
  request bodies as a `oneOf` of one variant per type, discriminated by `type`;
- examples built from the registered models (a model's own `examples` first);
- the headers the publish routes read (`Idempotency-Key`, `X-Idempotency-Key`,
  `X-Correlation-ID`) and send back (`X-Correlation-ID`, `Idempotent-Replayed`);
- the API-key security schemes, when the service has API keys.

The types are read from the registry when the document is first built (at the first
`GET /openapi.json`), so every type the app registered by then is in it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, PydanticUserError, ValidationError
from pydantic.json_schema import models_json_schema

from flock.registry import TypeRegistry

_COMPONENTS = "#/components/schemas/"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_DEPTH = 8

PUBLISH_OPERATIONS = ("publishArtifact", "publishArtifactSync", "publishArtifactBatch")
BEARER_SCHEME, HEADER_SCHEME = "bearerAuth", "apiKeyHeader"

_IDEMPOTENCY_KEY_DOC = (
    "makes the call safe to retry: a repeat with the same key and body is answered with the "
    "first call's response (1-255 printable ASCII characters; the standard header's value "
    "may be an RFC 8941 string)"
)
REQUEST_HEADERS: list[dict[str, Any]] = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": f"{_IDEMPOTENCY_KEY_DOC}; the same as X-Idempotency-Key",
        "schema": {"type": "string", "minLength": 1, "maxLength": 257},
    },
    {
        "name": "X-Idempotency-Key",
        "in": "header",
        "required": False,
        "description": f"{_IDEMPOTENCY_KEY_DOC}; both headers present and different: 400",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    {
        "name": "X-Correlation-ID",
        "in": "header",
        "required": False,
        "description": "identifies this request in logs and in an error answered before the "
        "artifact is published (1-128 of A-Z a-z 0-9 . _ : -); the workflow gets a fresh "
        "correlation id, sent back in the response's X-Correlation-ID",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
    },
]
RESPONSE_HEADERS: dict[str, Any] = {
    "X-Correlation-ID": {
        "description": "the correlation id of the published workflow",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when the response is the stored answer to an earlier call "
        "with the same idempotency key",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def enrich_openapi(
    schema: dict[str, Any], registry: TypeRegistry, *, api_keys: bool
) -> dict[str, Any]:
    """Add the registered types, publish variants, examples, headers and security."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    operations = dict(_operations(schema))
    types = _add_payload_schemas(components, registry)
    if types:
        _add_publish_variants(components, operations, types)
    for operation_id in PUBLISH_OPERATIONS:
        operation = operations.get(operation_id)
        if operation is None:
            continue
        _add_headers(operation)
    if api_keys:
        _add_security(schema)
    return schema


class RegisteredType:
    """One registered type as the document shows it."""

    def __init__(self, name: str, model: type[BaseModel], ref: str) -> None:
        self.name, self.model, self.ref = name, model, ref
        self.example = example_for(model)
        self.component = _SAFE_NAME.sub("_", name)
        self.has_required = any(f.is_required() for f in model.model_fields.values())


def has_json_schema(model: type[BaseModel]) -> bool:
    """Whether pydantic can describe the model in JSON Schema (a field of an arbitrary
    Python type cannot be): the document leaves out the types it cannot describe."""
    try:
        model.model_json_schema()
    except PydanticUserError:  # PydanticInvalidForJsonSchema and kin
        return False
    return True


def type_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's self-contained JSON Schema (its nested models under `$defs`), as
    `GET /api/v1/types` lists it, with an example when one can be built; `{}` (anything)
    for a model pydantic cannot describe."""
    if not has_json_schema(model):
        return {}
    schema = model.model_json_schema()
    example = example_for(model)
    if example is not None and "examples" not in schema:
        schema["examples"] = [example]
    return schema


def example_for(model: type[BaseModel]) -> dict[str, Any] | None:
    """An example payload of `model` that validates: the model's own first example, else
    one built from its JSON Schema (defaults, enums, formats); None when neither validates."""
    if not has_json_schema(model):
        return None
    schema = model.model_json_schema()
    candidates = [e for e in schema.get("examples", ()) if isinstance(e, dict)]
    built = _example(schema, schema.get("$defs", {}), 0)
    if isinstance(built, dict):
        candidates.append(built)
    for candidate in candidates:
        try:
            model.model_validate(candidate)
        except ValidationError:
            continue
        return candidate
    return None


def _example(schema: Any, defs: dict[str, Any], depth: int) -> Any:
    """A value for a JSON Schema, or None (which an optional field takes)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _example(defs.get(ref.rsplit("/", 1)[-1]), defs, depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return copy.deepcopy(schema[key])
    if schema.get("examples"):
        return copy.deepcopy(schema["examples"][0])
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, ()) if o.get("type") != "null"]
        if options:
            return _example(options[0], defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", ()))
        return {
            name: _example(prop, defs, depth + 1)
            for name, prop in schema.get("properties", {}).items()
            if name in required or depth == 0
        }
    if kind == "array":
        item = _example(schema.get("items"), defs, depth + 1)
        count = max(int(schema.get("minItems", 1)), 1)
        return [] if item is None else [item] * count
    if kind == "string":
        return _string_example(schema)
    if kind in ("integer", "number"):
        value: float = schema.get("minimum", schema.get("exclusiveMinimum")) or 0
        if "exclusiveMinimum" in schema:
            value += 1
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


def _string_example(schema: dict[str, Any]) -> str:
    formats = {
        "date-time": "2026-01-01T00:00:00Z",
        "date": "2026-01-01",
        "time": "12:00:00",
        "email": "user@example.com",
        "uri": "https://example.com/",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    value = formats.get(schema.get("format", ""), "string")
    length = int(schema.get("minLength", 0))
    return value + "x" * max(length - len(value), 0)


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict) and "operationId" in operation:
                yield operation["operationId"], operation


def _add_payload_schemas(
    components: dict[str, Any], registry: TypeRegistry
) -> list[RegisteredType]:
    """Put every registered model's schema in the components; the types, by name."""
    names = [name for name in registry.names() if has_json_schema(registry.resolve(name))]
    models = [registry.resolve(name) for name in names]
    unique = list(dict.fromkeys(models))
    if not unique:
        return []
    mapping, top = models_json_schema(
        [(model, "validation") for model in unique], ref_template=_COMPONENTS + "{model}"
    )
    generated: dict[str, Any] = top.get("$defs", {})
    renames = {
        name: _free_name(name, components, generated)
        for name, value in generated.items()
        if name in components and components[name] != value
    }
    for name, value in generated.items():
        components[renames.get(name, name)] = _renamed(value, renames)
    types = []
    for name, model in zip(names, models, strict=True):
        ref = _renamed(mapping[(model, "validation")], renames)["$ref"]
        registered = RegisteredType(name, model, ref)
        target = components[ref.removeprefix(_COMPONENTS)]
        if registered.example is not None and "examples" not in target:
            target["examples"] = [registered.example]
        types.append(registered)
    return types


def _free_name(name: str, *taken: dict[str, Any]) -> str:
    candidate, n = f"{name}Payload", 2
    while any(candidate in names for names in taken):
        candidate, n = f"{name}Payload{n}", n + 1
    return candidate


def _unique(name: str, components: dict[str, Any]) -> str:
    candidate, n = name, 2
    while candidate in components:
        candidate, n = f"{name}{n}", n + 1
    return candidate


def _renamed(value: Any, renames: dict[str, str]) -> Any:
    """`value` with its component refs renamed."""
    if not renames:
        return value
    if isinstance(value, dict):
        out = {k: _renamed(v, renames) for k, v in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENTS):
            name = ref.removeprefix(_COMPONENTS)
            out["$ref"] = _COMPONENTS + renames.get(name, name)
        return out
    if isinstance(value, list):
        return [_renamed(v, renames) for v in value]
    return value


def _add_publish_variants(
    components: dict[str, Any], operations: dict[str, dict[str, Any]], types: list[RegisteredType]
) -> None:
    """One request variant per type for each publish route; the bodies become a `oneOf`."""
    bases: list[tuple[str, str, dict[str, Any] | None]] = [
        ("publishArtifact", "PublishRequest", None),
        ("publishArtifactSync", "SyncPublishRequest", {"timeout": 30}),
    ]
    for operation_id, base_name, extra in bases:
        operation = operations.get(operation_id)
        base = components.get(base_name)
        if operation is None or base is None:
            continue
        union = _variants(components, base, base_name, types)
        content = operation["requestBody"]["content"]["application/json"]
        content["schema"] = union
        content["examples"] = {
            t.component: {
                "summary": f"an artifact of type {t.name}",
                "value": {"type": t.name, "payload": t.example, **(extra or {})},
            }
            for t in types
            if t.example is not None
        }
    batch = components.get("BatchPublishRequest")
    operation = operations.get("publishArtifactBatch")
    if batch is None or operation is None:
        return
    item = batch["properties"]["items"]
    base = item["items"]
    item["items"] = _variants(components, base, "BatchPublishItem", types)
    examples = [{"type": t.name, "payload": t.example} for t in types if t.example is not None]
    if examples:
        content = operation["requestBody"]["content"]["application/json"]
        content["example"] = {"items": examples[:3]}


def _variants(
    components: dict[str, Any], base: dict[str, Any], base_name: str, types: list[RegisteredType]
) -> dict[str, Any]:
    mapping = {}
    for t in types:
        variant = copy.deepcopy(base)
        variant["title"] = f"{t.component}{base_name}"
        variant["description"] = f"{base.get('description', base_name)} (type {t.name})"
        properties = variant["properties"]
        properties["type"] = {"type": "string", "const": t.name, "title": "Type"}
        properties["payload"] = {"$ref": t.ref}
        required = [r for r in variant.get("required", []) if r != "payload"]
        if t.has_required:
            required.append("payload")
        variant["required"] = required
        name = _unique(f"{t.component}{base_name}", components)
        components[name] = variant
        mapping[t.name] = _COMPONENTS + name
    return {
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }


def _add_headers(operation: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    present = {(p.get("name", "").lower(), p.get("in")) for p in parameters}
    for header in REQUEST_HEADERS:
        if (header["name"].lower(), "header") not in present:
            parameters.append(copy.deepcopy(header))
    ok = operation.get("responses", {}).get("200")
    if ok is not None:
        ok.setdefault("headers", {}).update(copy.deepcopy(RESPONSE_HEADERS))


def _add_security(schema: dict[str, Any]) -> None:
    """API keys guard every /api/v1 route: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    schema["components"].setdefault("securitySchemes", {}).update(
        {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "Authorization: Bearer KEY, a key of the FLOCK_API_KEYS file",
            },
            HEADER_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "X-API-Key: KEY, the same keys as the bearer scheme",
            },
        }
    )
    for path, path_item in schema.get("paths", {}).items():
        if path == "/api/v1" or path.startswith("/api/v1/"):
            for operation in path_item.values():
                if isinstance(operation, dict):
                    operation["security"] = [{BEARER_SCHEME: []}, {HEADER_SCHEME: []}]


__all__ = [
    "PUBLISH_OPERATIONS",
    "REQUEST_HEADERS",
    "RegisteredType",
    "enrich_openapi",
    "example_for",
    "has_json_schema",
    "type_schema",
]
