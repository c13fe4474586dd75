"""The SQL blackboard store's tables, and the conversions between rows and records.

Times are stored as integer microseconds since the Unix epoch (UTC): exact, and ordered the
same way on SQLite and PostgreSQL. JSON columns are plain text, so both backends hold the
same bytes. Ids use the "C" collation on PostgreSQL so that `ORDER BY id` is codepoint
order, as in SQLite and Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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
    inspect,
    text,
)
from sqlalchemy.engine import Connection, RowMapping

from flock.core.artifacts import AgentError, Artifact, ConsumptionRecord
from flock.core.groups import GroupPart
from flock.core.runs import Run, RunState, Usage
from flock.core.store.migrations import (
    SchemaDefinition,
    Step,
    add_columns,
    baseline,
    create_tables,
    in_order,
)
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

# `state` and `seq` are kept from schema version 1 (state is derived from runs since 2).
correlations = Table(
    "correlations",
    metadata,
    Column("correlation_id", _Key, primary_key=True),
    Column("state", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("started_at", _Micros, nullable=False),
    Column("updated_at", _Micros, nullable=False),
    Column("cancelled", Integer, nullable=False, server_default="0"),
    Column("run_count", Integer, nullable=False, server_default="0"),
    Column("limit_reported", Integer, nullable=False, server_default="0"),
)
# Columns added to `correlations` by schema version 2, as (name, DDL type and default).
CORRELATION_COLUMNS_V2 = (
    ("cancelled", "INTEGER NOT NULL DEFAULT 0"),
    ("run_count", "INTEGER NOT NULL DEFAULT 0"),
    ("limit_reported", "INTEGER NOT NULL DEFAULT 0"),
)

# One row per agent run. `due_at` is when a pending run is next claimable: its
# next_attempt_at while queued, its lease expiry while running; NULL once final. So one
# partial index serves the claim query, the pending counts and the worker's next wake-up.
runs = Table(
    "runs",
    metadata,
    Column("id", _Key, primary_key=True),
    Column("agent", Text, nullable=False),
    Column("correlation_id", _Key, nullable=False),
    Column("input_ids", Text, nullable=False),
    Column("first_input_id", _Key),
    Column("output_ids", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("error", Text),
    Column("worker", Text),
    Column("principal", Text),
    Column("usage_requests", BigInteger, nullable=False),
    Column("usage_input_tokens", BigInteger, nullable=False),
    Column("usage_output_tokens", BigInteger, nullable=False),
    Column("created_at", _Micros, nullable=False),
    Column("started_at", _Micros),
    Column("finished_at", _Micros),
    Column("due_at", _Micros),
    Column("fence", BigInteger, nullable=False),
    Index(
        "ix_runs_due",
        "due_at",
        "id",
        sqlite_where=text("due_at IS NOT NULL"),
        postgresql_where=text("due_at IS NOT NULL"),
    ),
    Index("ix_runs_correlation", "correlation_id", "due_at"),
    Index("ix_runs_order", "created_at", "id"),
)

# Artifacts waiting in the open groups of AND gates, joins and batches (schema version 3).
# A part leaves its group when the group becomes a run, or when it expires.
group_parts = Table(
    "group_parts",
    metadata,
    Column("agent", Text, nullable=False),
    Column("grp", _Key, nullable=False),
    Column("artifact_id", _Key, nullable=False),
    Column("kind", Text, nullable=False),
    Column("type_name", Text, nullable=False),
    Column("correlation_id", _Key, nullable=False),
    Column("arrived_at", _Micros, nullable=False),
    Column("need", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("deadline", _Micros),
    Column("principal", Text),
    Column("max_attempts", Integer, nullable=False),
    PrimaryKeyConstraint("agent", "grp", "artifact_id"),
    Index("ix_group_parts_correlation", "correlation_id"),
    Index(
        "ix_group_parts_deadline",
        "deadline",
        sqlite_where=text("deadline IS NOT NULL"),
        postgresql_where=text("deadline IS NOT NULL"),
    ),
)

# The other correlations a run's inputs came from (joins and batches across correlations):
# the run counts as pending work of each (schema version 3).
run_links = Table(
    "run_links",
    metadata,
    Column("run_id", _Key, nullable=False),
    Column("correlation_id", _Key, nullable=False),
    PrimaryKeyConstraint("run_id", "correlation_id"),
    Index("ix_run_links_correlation", "correlation_id", "run_id"),
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
        "cancelled": 0, "run_count": 0, "limit_reported": 0,
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


def run_row(run: Run) -> dict[str, Any]:
    usage = run.usage or Usage()
    return {
        "id": run.id,
        "agent": run.agent,
        "correlation_id": run.correlation_id,
        "input_ids": _dumps(list(run.input_ids)),
        "first_input_id": run.input_ids[0] if run.input_ids else None,
        "output_ids": _dumps(list(run.output_ids)),
        "state": run.state.value,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "error": run.error,
        "worker": run.worker,
        "principal": run.principal,
        "usage_requests": usage.requests,
        "usage_input_tokens": usage.input_tokens,
        "usage_output_tokens": usage.output_tokens,
        "created_at": to_micros(run.created_at),
        "started_at": _micros_or_none(run.started_at),
        "finished_at": _micros_or_none(run.finished_at),
        "due_at": _micros_or_none(
            run.next_attempt_at if run.state == RunState.QUEUED else run.lease_expires_at
        ),
        "fence": run.fence,
    }


def run_from_row(row: RowMapping) -> Run:
    state = RunState(row["state"])
    due = None if row["due_at"] is None else from_micros(row["due_at"])
    usage = Usage(row["usage_requests"], row["usage_input_tokens"], row["usage_output_tokens"])
    return Run(
        id=row["id"],
        agent=row["agent"],
        correlation_id=row["correlation_id"],
        input_ids=tuple(json.loads(row["input_ids"])),
        state=state,
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        error=row["error"],
        worker=row["worker"],
        principal=row["principal"],
        usage=usage if usage else None,
        output_ids=tuple(json.loads(row["output_ids"])),
        created_at=from_micros(row["created_at"]),
        started_at=None if row["started_at"] is None else from_micros(row["started_at"]),
        finished_at=None if row["finished_at"] is None else from_micros(row["finished_at"]),
        next_attempt_at=due if state == RunState.QUEUED else None,
        lease_expires_at=due if state == RunState.RUNNING else None,
        fence=row["fence"],
    )


def part_row(part: GroupPart) -> dict[str, Any]:
    return {
        "agent": part.agent,
        "grp": part.group,
        "artifact_id": part.artifact_id,
        "kind": part.kind,
        "type_name": part.type_name,
        "correlation_id": part.correlation_id,
        "arrived_at": to_micros(part.arrived_at),
        "need": _dumps(list(part.need)),
        "size": part.size,
        "deadline": _micros_or_none(part.deadline),
        "principal": part.principal,
        "max_attempts": part.max_attempts,
    }


def part_from_row(row: RowMapping) -> GroupPart:
    return GroupPart(
        agent=row["agent"],
        group=row["grp"],
        kind=row["kind"],
        artifact_id=row["artifact_id"],
        type_name=row["type_name"],
        correlation_id=row["correlation_id"],
        arrived_at=from_micros(row["arrived_at"]),
        need=tuple(json.loads(row["need"])),
        size=row["size"],
        deadline=None if row["deadline"] is None else from_micros(row["deadline"]),
        principal=row["principal"],
        max_attempts=row["max_attempts"],
    )


def usage_params(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {
        "p_usage_requests": usage.requests,
        "p_usage_input_tokens": usage.input_tokens,
        "p_usage_output_tokens": usage.output_tokens,
    }


def dumps_ids(ids: Sequence[str]) -> str:
    return _dumps(list(ids))


def _micros_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


# -- versions -----------------------------------------------------------------------------
# A new schema version: change the tables above, and append its Step to BLACKBOARD_STEPS.


def _legacy_version(conn: Connection, schema: str | None) -> int | None:
    """Version 1 (the first release) had no version table; None: no tables at all."""
    return 1 if inspect(conn).has_table("correlations", schema=schema) else None


def _create(conn: Connection, schema: str | None) -> None:
    metadata.create_all(conn)
    _write_function(conn, schema)


def _write_function(conn: Connection, schema: str | None) -> None:
    from flock.core.store.sql_pg_write import create_function  # it builds on this module

    create_function(conn, schema)


BLACKBOARD_STEPS = (
    Step(1, "artifacts, tags, audience, consumptions, correlations, agent errors", baseline),
    Step(
        2,
        "runs table; correlations.cancelled, run_count, limit_reported",
        in_order(
            create_tables(metadata, "runs"),
            add_columns("correlations", CORRELATION_COLUMNS_V2),
        ),
    ),
    Step(
        3,
        "group_parts and run_links tables (AND gates, joins, batches)",
        create_tables(metadata, "group_parts", "run_links"),
    ),
    Step(
        4,
        "PostgreSQL: the flock_write function (a publish or a run's commit in one statement)",
        _write_function,
    ),
)

BLACKBOARD_SCHEMA = SchemaDefinition(
    name="blackboard store",
    version_table="flock_schema",
    lock_id=0x466C6F636B4242,  # "FlockBB"
    create=_create,
    steps=BLACKBOARD_STEPS,
    legacy_version=_legacy_version,
)
SCHEMA_VERSION = BLACKBOARD_SCHEMA.latest
schema_info = BLACKBOARD_SCHEMA.table()  # in the store's schema through schema_translate_map
