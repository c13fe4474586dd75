"""Request and response models of the REST API (they also shape /openapi.json)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from flock.api.validation import JSONObject, Name, PartitionKey, StrictVisibility, Tag
from flock.core.validation import MAX_TAGS


class _Strict(BaseModel):
    # NaN and Infinity are not JSON: a float field refuses them as any other bad value.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PublishRequest(_Strict):
    """One artifact to publish. `payload` must validate against the registered `type`."""

    type: Name = Field(description="a registered artifact type")
    payload: JSONObject = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    partition_key: PartitionKey | None = None
    visibility: StrictVisibility | None = Field(
        default=None,
        description="who may see it; a tenant's key publishes Tenant of its tenant by default",
    )


class PublishResponse(BaseModel):
    status: Literal["accepted"] = "accepted"
    artifact_id: str
    correlation_id: str


class SyncPublishFilters(_Strict):
    """Which of the correlation's artifacts the sync response returns (empty: all)."""

    type_names: list[Name] = Field(default_factory=list, max_length=100)
    produced_by: list[Name] = Field(default_factory=list, max_length=100)


class SyncPublishRequest(PublishRequest):
    timeout: float = Field(default=30.0, ge=1, le=300, description="seconds to wait (1-300)")
    filters: SyncPublishFilters | None = None
    on_timeout: Literal["partial", "error"] = "partial"


class ArtifactModel(BaseModel):
    """A serialized artifact."""

    id: str
    type: str
    payload: dict[str, Any]
    produced_by: str
    correlation_id: str
    partition_key: str | None
    tags: list[str]
    visibility: dict[str, Any]
    visibility_kind: str
    created_at: str = Field(description="ISO 8601, UTC")
    version: int
    consumptions: list[dict[str, Any]] | None = Field(
        default=None, description="present when embed_meta=true"
    )


class AgentErrorModel(BaseModel):
    """A run that ended `dead` (with its `run_id` and `attempts`), or a correlation-level
    error such as the run bound (`run_id` and `attempts` null)."""

    run_id: str | None
    agent: str
    artifact_id: str | None
    message: str
    attempts: int | None
    at: str


class SyncPublishResponse(BaseModel):
    correlation_id: str
    artifacts: list[ArtifactModel]
    completed: bool
    duration_ms: float
    errors: list[AgentErrorModel]
    truncated: bool


class Pagination(BaseModel):
    limit: int
    offset: int
    total: int


class ArtifactListResponse(BaseModel):
    items: list[ArtifactModel]
    pagination: Pagination


class ArtifactSummary(BaseModel):
    total: int
    by_type: dict[str, int]
    by_producer: dict[str, int]
    by_visibility: dict[str, int]


class CorrelationStatusResponse(BaseModel):
    correlation_id: str
    state: Literal["running", "idle", "cancelled"]
    pending_runs: int
    waiting_artifacts: int = Field(
        0, description="Its artifacts waiting in open groups (AND gates, joins, batches)."
    )
    artifact_count: int
    errors: list[AgentErrorModel]
    started_at: str
    updated_at: str


class UsageModel(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int


class RunModel(BaseModel):
    """One execution of one agent on its input artifacts (SPEC section 6)."""

    id: str
    agent: str
    correlation_id: str
    input_ids: list[str]
    output_ids: list[str]
    state: Literal["queued", "running", "succeeded", "dead", "cancelled"]
    attempt: int = Field(description="attempts started so far")
    max_attempts: int
    error: str | None
    worker: str | None = Field(description="the worker that ran (or runs) its last attempt")
    principal: str | None = Field(description="who published the run's correlation")
    usage: UsageModel | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    next_attempt_at: str | None = Field(description="when a queued run is claimable")


class RunListResponse(BaseModel):
    items: list[RunModel]
    pagination: Pagination


class AgentInput(_Strict):
    type: Name
    payload: JSONObject = Field(default_factory=dict)


class AgentRunRequest(_Strict):
    """Inputs for a direct run of one agent (no cascade follows)."""

    inputs: list[AgentInput] = Field(min_length=1, max_length=100)


class AgentRunResponse(BaseModel):
    """The run's outputs; an agent that raised yields no artifacts and one entry in `errors`."""

    agent: str
    artifacts: list[ArtifactModel]
    errors: list[AgentErrorModel]


class AgentDescription(BaseModel):
    name: str
    description: str
    subscriptions: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    max_concurrency: int | None
    max_attempts: int
    timeout: float | None
    labels: list[str]
    tenant: str | None
    open_groups: int = Field(
        0, description="Its open groups (AND gates, joins, batches) waiting for parts."
    )


class AgentListResponse(BaseModel):
    agents: list[AgentDescription]


class ErrorDetail(BaseModel):
    """One problem with the request, e.g. `{"field": "payload.qty", ...}`."""

    field: str
    message: str
    code: str


class ErrorResponse(BaseModel):
    """An RFC 9457 problem document with Flock's fields."""

    model_config = ConfigDict(extra="forbid")

    type: str
    title: str
    status: int
    code: str
    message: str
    correlation_id: str | None
    retryable: bool
    details: list[ErrorDetail] | None = None


class HealthResponse(BaseModel):
    status: str


__all__ = [
    "AgentDescription",
    "AgentErrorModel",
    "AgentInput",
    "AgentListResponse",
    "AgentRunRequest",
    "AgentRunResponse",
    "ArtifactListResponse",
    "ArtifactModel",
    "ArtifactSummary",
    "CorrelationStatusResponse",
    "ErrorDetail",
    "ErrorResponse",
    "HealthResponse",
    "Pagination",
    "PublishRequest",
    "PublishResponse",
    "SyncPublishFilters",
    "SyncPublishRequest",
    "SyncPublishResponse",
]


# -- batch publish (POST /artifacts/batch) -------------------------------------------------


class BatchPublishItem(PublishRequest):
    """One batch item: a publish request, with its own optional idempotency key."""

    idempotency_key: str | None = Field(
        default=None, description="1-255 printable ASCII characters; scoped to batch items"
    )


class _DocumentedAs:
    """Documents a leniently parsed value with a model's schema (it is validated later)."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self.model.__pydantic_core_schema__)


class BatchPublishRequest(_Strict):
    """Up to 100 items, each validated on its own: one bad item fails alone."""

    items: list[Annotated[Any, _DocumentedAs(BatchPublishItem)]] = Field(
        min_length=1, max_length=100, description="1-100 publish requests"
    )
    wait: bool = Field(default=False, description="wait for every item's cascade")
    timeout: float = Field(default=30.0, ge=1, le=300, description="seconds to wait (1-300)")
    filters: SyncPublishFilters | None = None


class BatchItemResult(BaseModel):
    """What happened to one item. `artifacts`/`completed`/`errors`/`truncated` come with wait."""

    index: int
    status: Literal["accepted", "duplicate", "failed"]
    artifact_id: str | None
    correlation_id: str | None
    error: ErrorResponse | None = None
    artifacts: list[ArtifactModel] | None = None
    completed: bool | None = None
    errors: list[AgentErrorModel] | None = None
    truncated: bool | None = None


class BatchPublishResponse(BaseModel):
    items: list[BatchItemResult]


__all__ += [
    "BatchItemResult",
    "BatchPublishItem",
    "BatchPublishRequest",
    "BatchPublishResponse",
]


# -- artifact types (GET /types) -----------------------------------------------------------


class TypeDescription(BaseModel):
    """A registered artifact type: its name and its payload's JSON Schema."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    json_schema: dict[str, Any] = Field(
        alias="schema",
        description="the payload's JSON Schema (2020-12), with an example under `examples`",
    )


class TypeListResponse(BaseModel):
    types: list[TypeDescription]


__all__ += ["TypeDescription", "TypeListResponse"]
