"""Request and response models of the REST API (seed plan phase 1)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flock.api.models import (
    AgentErrorModel,
    ArtifactModel,
    ErrorDetail,
    ErrorResponse,
    SyncPublishFilters,
    SyncPublishRequest,
    SyncPublishResponse,
)


def _fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {".".join(str(p) for p in error["loc"]) for error in exc.value.errors()}


def test_sync_request_defaults() -> None:
    request = SyncPublishRequest(type="Idea")
    assert request.timeout == 30
    assert request.payload == {}
    assert request.tags == []
    assert request.filters is None
    assert request.on_timeout == "partial"
    assert request.visibility is None


def test_sync_request_requires_a_type() -> None:
    with pytest.raises(ValidationError) as exc:
        SyncPublishRequest.model_validate({"payload": {"topic": "tea"}})
    assert _fields(exc) == {"type"}
    with pytest.raises(ValidationError) as exc:
        SyncPublishRequest.model_validate({"type": ""})
    assert _fields(exc) == {"type"}


@pytest.mark.parametrize("timeout", [1, 1.5, 30, 300])
def test_sync_request_accepts_timeouts_within_bounds(timeout: float) -> None:
    assert SyncPublishRequest(type="Idea", timeout=timeout).timeout == timeout


@pytest.mark.parametrize("timeout", [0, 0.999, -1, 300.001, 301, 10_000])
def test_sync_request_rejects_timeouts_out_of_bounds(timeout: float) -> None:
    with pytest.raises(ValidationError) as exc:
        SyncPublishRequest(type="Idea", timeout=timeout)
    assert _fields(exc) == {"timeout"}


def test_sync_request_filters_and_on_timeout() -> None:
    request = SyncPublishRequest.model_validate(
        {
            "type": "Idea",
            "filters": {"type_names": ["Draft"], "produced_by": ["writer"]},
            "on_timeout": "error",
        }
    )
    assert request.filters == SyncPublishFilters(type_names=["Draft"], produced_by=["writer"])
    assert request.on_timeout == "error"
    assert SyncPublishFilters().type_names == [] and SyncPublishFilters().produced_by == []
    with pytest.raises(ValidationError) as exc:
        SyncPublishRequest.model_validate({"type": "Idea", "on_timeout": "wait"})
    assert _fields(exc) == {"on_timeout"}


def test_sync_request_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        SyncPublishRequest.model_validate({"type": "Idea", "timeuot": 5})
    assert _fields(exc) == {"timeuot"}
    with pytest.raises(ValidationError) as exc:
        SyncPublishFilters.model_validate({"types": ["Draft"]})
    assert _fields(exc) == {"types"}


def _artifact(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": "a1",
        "type": "Idea",
        "payload": {"topic": "tea"},
        "produced_by": "external",
        "correlation_id": "c1",
        "partition_key": None,
        "tags": ["x"],
        "visibility": {"kind": "Public"},
        "visibility_kind": "Public",
        "created_at": "2025-01-01T00:00:00Z",
        "version": 1,
    }
    data.update(overrides)
    return data


def test_sync_response_serializes_to_the_documented_shape() -> None:
    response = SyncPublishResponse(
        correlation_id="c1",
        artifacts=[
            ArtifactModel.model_validate(_artifact()),
            ArtifactModel.model_validate(
                _artifact(id="a2", type="Draft", payload={"text": "t"}, produced_by="writer")
            ),
        ],
        completed=True,
        duration_ms=12.5,
        errors=[
            AgentErrorModel(
                run_id="r1",
                agent="critic",
                artifact_id="a1",
                message="boom",
                attempts=3,
                at="2025-01-01Z",
            )
        ],
        truncated=False,
    )
    data = json.loads(response.model_dump_json(exclude_unset=True))
    assert set(data) == {
        "correlation_id",
        "artifacts",
        "completed",
        "duration_ms",
        "errors",
        "truncated",
    }
    assert data["artifacts"][0] == _artifact()
    assert [a["id"] for a in data["artifacts"]] == ["a1", "a2"]
    assert data["errors"] == [
        {
            "run_id": "r1",
            "agent": "critic",
            "artifact_id": "a1",
            "message": "boom",
            "attempts": 3,
            "at": "2025-01-01Z",
        }
    ]
    assert data["completed"] is True and data["truncated"] is False
    assert SyncPublishResponse.model_validate_json(response.model_dump_json()) == response


def test_sync_response_requires_its_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        SyncPublishResponse.model_validate({"correlation_id": "c1", "artifacts": []})
    assert _fields(exc) == {"completed", "duration_ms", "errors", "truncated"}


def _problem(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "type": "https://flock.dev/errors/not-found",
        "title": "Not found",
        "status": 404,
        "code": "NOT_FOUND",
        "message": "unknown artifact type 'Nope'",
        "correlation_id": "c1",
        "retryable": False,
    }
    data.update(overrides)
    return data


def test_error_response_without_details() -> None:
    problem = ErrorResponse.model_validate(_problem())
    assert problem.details is None
    data = json.loads(problem.model_dump_json())
    assert data == {**_problem(), "details": None}


def test_error_response_with_details() -> None:
    details = [
        {"field": "payload.topic", "message": "Field required", "code": "missing"},
        {"field": "timeout", "message": "too large", "code": "less_than_equal"},
    ]
    problem = ErrorResponse.model_validate(
        _problem(status=422, code="VALIDATION_ERROR", details=details)
    )
    assert problem.details is not None
    assert [d.field for d in problem.details] == ["payload.topic", "timeout"]
    assert json.loads(problem.model_dump_json())["details"] == details


def test_error_response_correlation_id_is_nullable_but_required() -> None:
    assert ErrorResponse.model_validate(_problem(correlation_id=None)).correlation_id is None
    data = _problem()
    del data["correlation_id"]
    with pytest.raises(ValidationError) as exc:
        ErrorResponse.model_validate(data)
    assert _fields(exc) == {"correlation_id"}


@pytest.mark.parametrize("missing", ["code", "message", "retryable", "status", "type", "title"])
def test_error_response_requires_its_fields(missing: str) -> None:
    data = _problem()
    del data[missing]
    with pytest.raises(ValidationError) as exc:
        ErrorResponse.model_validate(data)
    assert _fields(exc) == {missing}


def test_error_response_rejects_unknown_members() -> None:
    with pytest.raises(ValidationError) as exc:
        ErrorResponse.model_validate(_problem(trace="Traceback ..."))
    assert _fields(exc) == {"trace"}


def test_error_detail_fields() -> None:
    detail = ErrorDetail(field="payload.qty", message="must be positive", code="greater_than")
    assert detail.model_dump() == {
        "field": "payload.qty",
        "message": "must be positive",
        "code": "greater_than",
    }
    for missing in ("field", "message", "code"):
        data = detail.model_dump()
        del data[missing]
        with pytest.raises(ValidationError) as exc:
            ErrorDetail.model_validate(data)
        assert _fields(exc) == {missing}
    with pytest.raises(ValidationError) as exc:
        ErrorDetail.model_validate({"field": 1, "message": None, "code": []})
    assert _fields(exc) == {"field", "message", "code"}
