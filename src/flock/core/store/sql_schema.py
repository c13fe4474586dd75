"""The SQL blackboard store's tables, and the conversions between rows and records.

Times are stored as integer microseconds since the Unix epoch (UTC): exact, and ordered the
same way on SQLite and PostgreSQL. JSON columns are plain text, so both backends hold the
same bytes. Ids use the "C" collation on PostgreSQL so that `ORDER BY id` is codepoint
order, as in SQLite and Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)
from sqlalchemy.engine import RowMapping

from flock.core.artifacts import AgentError, Artifact, ConsumptionRecord
from flock.core.visibility import (
    AnyVisibility,
    LabelledVisibility,
    PrivateVisibility,
    TenantVisibility,
    visibility_from_dict,
    visibility_to_dict,
)

metadata = MetaData()

_Key = Text().with_variant(Text(collation="C"), "postgresql")
_Micros = BigInteger
# SQLite only autoincrements an INTEGER PRIMARY KEY.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", _Key, primary_key=True),
    Column("type", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("produced_by", Text, nullable=False),
    Column("correlation_id", _Key, nullable=False),
    Column("partition_key", Text),
    Column("tags", Text, nullable=False),
    Column("visibility", Text, nullable=False),
    Column("visibility_kind", Text, nullable=False),
    Column("tenant_id", Text),
    Column("created_at", _Micros, nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_artifacts_correlation_order", "correlation_id", "created_at", "id"),
    Index("ix_artifacts_order", "created_at", "id"),
    Index("ix_artifacts_type", "type"),
    Index("ix_artifacts_produced_by", "produced_by"),
)

# One row per tag, so the tag filter is an exact indexed lookup rather than a match on JSON text.
artifact_tags = Table(
    "artifact_tags",
    metadata,
    Column("artifact_id", _Key, nullable=False),
    Column("tag", Text, nullable=False),
    PrimaryKeyConstraint("artifact_id", "tag"),
    Index("ix_artifact_tags_tag", "tag", "artifact_id"),
)

# The agents of a Private rule, or the labels of a Labelled one: lets `visible_to` run in SQL.
artifact_audience = Table(
    "artifact_audience",
    metadata,
    Column("artifact_id", _Key, nullable=False),
    Column("member", Text, nullable=False),
    PrimaryKeyConstraint("artifact_id", "member"),
)

consumptions = Table(
    "consumptions",
    metadata,
    Column("artifact_id", _Key, nullable=False),
    Column("consumer", Text, nullable=False),
    Column("correlation_id", _Key, nullable=False),
    Column("consumed_at", _Micros, nullable=False),
    PrimaryKeyConstraint("artifact_id", "consumer"),
)

correlations = Table(
    "correlations",
    metadata,
    Column("correlation_id", _Key, primary_key=True),
    Column("state", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("started_at", _Micros, nullable=False),
    Column("updated_at", _Micros, nullable=False),
)

agent_errors = Table(
    "agent_errors",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("correlation_id", _Key, nullable=False, index=True),
    Column("agent", Text, nullable=False),
    Column("artifact_id", _Key),
    Column("message", Text, nullable=False),
    Column("at", _Micros, nullable=False),
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _dumps(value: Any) -> str:
    # ASCII-only output: PostgreSQL text rejects NUL bytes, and escapes keep them out.
    return json.dumps(value, separators=(",", ":"))


def artifact_row(artifact: Artifact) -> dict[str, Any]:
    visibility = artifact.visibility
    return {
        "id": artifact.id,
        "type": artifact.type,
        "payload": _dumps(artifact.payload),
        "produced_by": artifact.produced_by,
        "correlation_id": artifact.correlation_id,
        "partition_key": artifact.partition_key,
        "tags": _dumps(sorted(artifact.tags)),
        "visibility": _dumps(visibility_to_dict(visibility)),
        "visibility_kind": visibility.kind,
        "tenant_id": visibility.tenant_id if isinstance(visibility, TenantVisibility) else None,
        "created_at": to_micros(artifact.created_at),
        "version": artifact.version,
    }


def audience_rows(artifact: Artifact) -> Iterator[dict[str, str]]:
    """The `artifact_audience` rows for the artifact's visibility rule (none for most rules)."""
    members = audience(artifact.visibility)
    for member in sorted(members):
        yield {"artifact_id": artifact.id, "member": member}


def audience(visibility: AnyVisibility) -> frozenset[str]:
    if isinstance(visibility, PrivateVisibility):
        return visibility.agents
    if isinstance(visibility, LabelledVisibility):
        return visibility.required_labels
    return frozenset()


def tag_rows(artifact: Artifact) -> Iterator[dict[str, str]]:
    for tag in sorted(artifact.tags):
        yield {"artifact_id": artifact.id, "tag": tag}


def artifact_from_row(row: RowMapping) -> Artifact:
    return Artifact(
        id=row["id"],
        type=row["type"],
        payload=json.loads(row["payload"]),
        produced_by=row["produced_by"],
        correlation_id=row["correlation_id"],
        partition_key=row["partition_key"],
        tags=frozenset(json.loads(row["tags"])),
        visibility=visibility_from_dict(json.loads(row["visibility"])),
        created_at=from_micros(row["created_at"]),
        version=row["version"],
    )


def consumption_row(record: ConsumptionRecord) -> dict[str, Any]:
    return {
        "artifact_id": record.artifact_id,
        "consumer": record.consumer,
        "correlation_id": record.correlation_id,
        "consumed_at": to_micros(record.consumed_at),
    }


def consumption_from_row(row: RowMapping) -> ConsumptionRecord:
    return ConsumptionRecord(
        row["artifact_id"], row["consumer"], row["correlation_id"], from_micros(row["consumed_at"])
    )


def correlation_row(
    correlation_id: str, state: str, seq: int, started_at: int, updated_at: int
) -> dict[str, Any]:
    return {
        "correlation_id": correlation_id, "state": state, "seq": seq,
        "started_at": started_at, "updated_at": updated_at,
    }  # fmt: skip


def error_row(error: AgentError) -> dict[str, Any]:
    return {
        "correlation_id": error.correlation_id,
        "agent": error.agent,
        "artifact_id": error.artifact_id,
        "message": error.message,
        "at": to_micros(error.at),
    }


def error_from_row(row: RowMapping) -> AgentError:
    return AgentError(
        row["agent"],
        row["artifact_id"],
        row["message"],
        row["correlation_id"],
        from_micros(row["at"]),
    )
