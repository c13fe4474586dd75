"""Artifacts are checked before they are stored: from `Flock.publish` and from agents."""

from __future__ import annotations

import math
import uuid

import pytest
from pydantic import BaseModel

from flock import FilterConfig, Flock, TenantVisibility, flock_type
from flock.core.artifacts import Artifact
from flock.core.failures import MAX_MESSAGE_LENGTH, describe_failure, is_internal
from flock.core.store import StoreUnavailableError
from flock.core.validation import (
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_TAGS,
    ArtifactValidationError,
    artifact_problems,
    json_problems,
    scrub_json,
)

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"ValNote_{_SUFFIX}")
class Note(BaseModel):
    text: str = ""
    x: float = 0.0
    extra: dict[str, object] = {}


@flock_type(name=f"ValOut_{_SUFFIX}")
class Out(BaseModel):
    x: float


def deep(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        ({"text": "a\ud800"}, "payload.text", "lone_surrogate"),
        ({"text": "\udfff"}, "payload.text", "lone_surrogate"),
        ({"text": "a\x00b"}, "payload.text", "nul_character"),
        ({"x": math.nan}, "payload.x", "finite_number"),
        ({"x": math.inf}, "payload.x", "finite_number"),
        ({"x": -math.inf}, "payload.x", "finite_number"),
        ({"n": 2**63}, "payload.n", "int_range"),
        ({"n": -(2**63) - 1}, "payload.n", "int_range"),
        ({"k\x00": 1}, "payload.k\x00", "nul_character"),
        ({"list": [1, {"s": "\ud83d"}]}, "payload.list[1].s", "lone_surrogate"),
        ({"d": deep(MAX_JSON_DEPTH)}, None, "too_deep"),
    ],
)
def test_json_problems_name_the_field(payload: dict[str, object], field: str, code: str) -> None:
    (problem,) = json_problems(payload)
    assert problem.code == code
    if field is not None:
        assert problem.field == field


def test_fine_json_has_no_problems() -> None:
    payload = {
        "text": "tea \u2615 \U0001f375 caf\u00e9",
        "n": 2**63 - 1,
        "m": -(2**63),
        "f": 1e308,
        "b": True,
        "none": None,
        "nested": deep(MAX_JSON_DEPTH - 2),
    }
    assert json_problems(payload) == []


def test_deep_json_is_walked_without_recursion() -> None:
    assert [p.code for p in json_problems({"d": deep(100_000)})] == ["too_deep"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "x" * (MAX_ID_LENGTH + 1)}, "id"),
        ({"id": ""}, "id"),
        ({"correlation_id": "a\x00"}, "correlation_id"),
        ({"type": "T\x01"}, "type"),
        ({"produced_by": "\ud800"}, "produced_by"),
        ({"partition_key": "p" * 256}, "partition_key"),
        ({"partition_key": "p\x00"}, "partition_key"),
        ({"tags": frozenset({"t" * 3000})}, "tags[0]"),
        ({"tags": frozenset({"ok", "\x00"})}, "tags[0]"),
        ({"tags": frozenset(f"t{i}" for i in range(MAX_TAGS + 1))}, "tags"),
        ({"visibility": TenantVisibility(tenant_id="a\x00")}, "visibility.tenant_id"),
        ({"visibility": TenantVisibility(tenant_id="t" * 256)}, "visibility.tenant_id"),
    ],
)
def test_artifact_problems_cover_every_stored_field(changes: dict[str, object], field: str) -> None:
    artifact = Artifact(type="T", payload={})
    for name, value in changes.items():
        setattr(artifact, name, value)
    assert [p.field for p in artifact_problems(artifact)] == [field]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tags": ["bad\x00tag"]}, "tags[0]"),
        ({"partition_key": "k" * 300}, "partition_key"),
        ({"visibility": TenantVisibility(tenant_id="\ud800")}, "visibility.tenant_id"),
        ({"correlation_id": "c" * 200}, "correlation_id"),
    ],
)
async def test_publish_refuses_what_no_store_can_hold(
    kwargs: dict[str, object], field: str
) -> None:
    flock = Flock()
    with pytest.raises(ArtifactValidationError) as refused:
        await flock.publish(Note(text="hi"), **kwargs)  # type: ignore[arg-type]
    assert [p.field for p in refused.value.problems] == [field]
    assert (await flock.store.query_artifacts(FilterConfig()))[1] == 0


@pytest.mark.parametrize(
    "note",
    [
        Note(text="a\ud800"),
        Note(text="\x00"),
        Note(x=math.nan),
        Note(extra={"s": ["\x00"]}),
    ],
)
async def test_publish_refuses_a_payload_no_store_can_hold(note: Note) -> None:
    flock = Flock()
    with pytest.raises(ArtifactValidationError):
        await flock.publish(note)
    with pytest.raises(ArtifactValidationError):
        await flock.publish(Artifact(type=f"ValNote_{_SUFFIX}", payload=note.model_dump()))
    assert (await flock.store.query_artifacts(FilterConfig()))[1] == 0


async def test_an_agent_output_no_store_can_hold_fails_its_run() -> None:
    flock = Flock()
    flock.agent("divider").consumes(Note).publishes(Out).with_engines(lambda note: Out(x=math.inf))

    seed = await flock.publish(Note(text="go"))
    await flock.run_until_idle(seed.correlation_id, timeout=10)

    status = await flock.correlation_status(seed.correlation_id)
    assert status is not None
    (error,) = status.errors
    assert error.agent == "divider"
    assert error.message.startswith("ArtifactValidationError: payload.x: NaN and Infinity")
    _, total = await flock.store.query_artifacts(FilterConfig(correlation_id=seed.correlation_id))
    assert total == 1  # the input only


def test_scrub_json_makes_old_bad_data_encodable() -> None:
    scrubbed = scrub_json({"a\ud800": ["x\udfffy", math.nan, 1.5, {"b": math.inf}]})
    assert scrubbed == {"a\ufffd": ["x\ufffdy", None, 1.5, {"b": None}]}


class _Leaky(Exception):
    pass


def test_an_agents_failure_keeps_type_and_message() -> None:
    assert describe_failure(ValueError("no stock for sku 42")) == "ValueError: no stock for sku 42"
    assert describe_failure(KeyError()) == "KeyError"


def test_a_failure_message_is_capped_and_storable() -> None:
    text = describe_failure(ValueError("a\x00b\ud800" + "x" * 5000))
    assert "\x00" not in text and "\ud800" not in text
    assert len(text) <= len("ValueError: ") + MAX_MESSAGE_LENGTH + 3


def test_store_and_framework_internals_are_named_by_type_only() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    leaks = [
        sqlite3.OperationalError("no such table: artifacts_secret"),
        OperationalError("SELECT * FROM artifacts", {}, Exception("host db.internal:5432")),
        StoreUnavailableError("postgresql://admin@db.internal/prod is down"),
    ]
    for exc in leaks:
        assert is_internal(exc)
        text = describe_failure(exc)
        assert text.startswith(type(exc).__name__)
        assert "internal" in text and "db.internal" not in text and "artifacts" not in text
    assert not is_internal(_Leaky("mine"))
