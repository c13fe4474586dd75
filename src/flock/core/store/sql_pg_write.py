"""PostgreSQL: a publish, or a run's commit, in one statement (a server-side function).

On the general path a commit is `BEGIN`, six statements and `COMMIT`: eight round trips,
each costing our CPU and the database's. `flock_write(json)` does the same writes in one
call, which is its own transaction: the fenced `succeeded` update, the outputs (with their
tags and audience rows), the correlation touch, the consumption records, the triggered
runs within the correlation's bound, the notification, and, mid-cascade, a commit that
does not wait for the disk (see `SQLBlackboardStore.complete_run`).

It covers the common case only: one correlation, no group parts, a run with one input,
room under the run bound and a correlation not cancelled. Anything else raises
`FALLBACK` before the transaction ends, so nothing is written, and the store takes the
general path, which stays the reference (the store contract suites run both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from flock.core.artifacts import Artifact
from flock.core.runs import Run, RunState
from flock.core.store.sql_schema import artifact_row, audience_rows, run_row, tag_rows

# The SQLSTATE `flock_write` raises for a write it leaves to the general path.
FALLBACK = "FLK01"
_NAME = "flock_write"

_ARTIFACT_COLUMNS = (
    ("id", "text"),
    ("type", "text"),
    ("payload", "text"),
    ("produced_by", "text"),
    ("correlation_id", "text"),
    ("partition_key", "text"),
    ("tags", "text"),
    ("visibility", "text"),
    ("visibility_kind", "text"),
    ("tenant_id", "text"),
    ("created_at", "bigint"),
    ("version", "integer"),
)
_RUN_COLUMNS = (
    ("id", "text"),
    ("agent", "text"),
    ("correlation_id", "text"),
    ("input_ids", "text"),
    ("first_input_id", "text"),
    ("output_ids", "text"),
    ("state", "text"),
    ("attempt", "integer"),
    ("max_attempts", "integer"),
    ("error", "text"),
    ("worker", "text"),
    ("principal", "text"),
    ("usage_requests", "bigint"),
    ("usage_input_tokens", "bigint"),
    ("usage_output_tokens", "bigint"),
    ("created_at", "bigint"),
    ("started_at", "bigint"),
    ("finished_at", "bigint"),
    ("due_at", "bigint"),
    ("fence", "bigint"),
)


def _names(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in columns)


def _typed(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in columns)


def _quoted(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


def function_name(schema: str | None) -> str:
    return _NAME if schema is None else f"{_quoted(schema)}.{_NAME}"


# Leaves the write to the general path: the whole call is rolled back.
_LEAVE = f"RAISE EXCEPTION 'flock: the general path' USING ERRCODE = '{FALLBACK}';"


def _insert_new(table: str, columns: Sequence[tuple[str, str]], rows: str, into: str) -> str:
    """Insert the rows of `p->rows` not stored yet (by id); their ids into `into`."""
    names = _names(columns)
    return f"""WITH ins AS (
        INSERT INTO {table} ({names})
            SELECT {names} FROM json_to_recordset(p->'{rows}') AS x({_typed(columns)})
            ON CONFLICT (id) DO NOTHING RETURNING id
    ) SELECT coalesce(array_agg(id), '{{}}') INTO {into} FROM ins;"""


def _insert_members(table: str, column: str, rows: str) -> str:
    """Insert the `(artifact_id, column)` rows of `p->rows` that belong to new artifacts."""
    return f"""IF json_array_length(p->'{rows}') > 0 THEN
        INSERT INTO {table} (artifact_id, {column})
            SELECT m.artifact_id, m.{column}
            FROM json_to_recordset(p->'{rows}') AS m(artifact_id text, {column} text)
            WHERE m.artifact_id = ANY(v_new);
    END IF;"""


def function_ddl(schema: str | None) -> str:
    """`CREATE OR REPLACE FUNCTION flock_write(p json) RETURNS json` for the schema."""
    path = "" if schema is None else f"SET search_path = {_quoted(schema)}"
    return f"""
CREATE OR REPLACE FUNCTION {function_name(schema)}(p json) RETURNS json
LANGUAGE plpgsql {path} AS $flock$
DECLARE
    v_now bigint := (p->>'now')::bigint;
    v_cid text := p->>'cid';
    v_is_run boolean := p->>'run_id' IS NOT NULL;
    v_done record;
    v_corr record;
    v_new text[];
    v_created text[] := '{{}}';
    v_wanted integer := json_array_length(p->'runs');
    v_new_correlation boolean := false;
    v_busy boolean := false;  -- a run made here keeps the correlation busy
    v_payload text;
BEGIN
    IF v_wanted > 0 THEN
        -- The run bound and cancel first, the correlation row locked (as cancel locks it:
        -- the correlation, then its runs). A correlation not stored yet has room for
        -- `max_runs`. Beyond either, the general path writes what the bound allows.
        SELECT cancelled, run_count INTO v_corr FROM correlations
            WHERE correlation_id = v_cid FOR UPDATE;
        IF (FOUND AND (v_corr.cancelled <> 0
                       OR v_corr.run_count + v_wanted > (p->>'max_runs')::integer))
           OR (NOT FOUND AND v_wanted > (p->>'max_runs')::integer) THEN
            {_LEAVE}
        END IF;
        v_new_correlation := NOT FOUND;
    END IF;
    IF v_is_run THEN
        UPDATE runs SET state = 'succeeded', due_at = NULL, finished_at = v_now,
                output_ids = p->>'output_ids', error = NULL,
                usage_requests = usage_requests + (p->>'usage_requests')::bigint,
                usage_input_tokens = usage_input_tokens + (p->>'usage_input_tokens')::bigint,
                usage_output_tokens = usage_output_tokens + (p->>'usage_output_tokens')::bigint
            WHERE id = p->>'run_id' AND fence = (p->>'fence')::bigint
                AND state = 'running' AND due_at > v_now
            RETURNING agent, correlation_id, input_ids INTO v_done;
        IF NOT FOUND THEN
            RETURN json_build_object('ok', false);
        END IF;
        v_cid := coalesce(v_cid, v_done.correlation_id);  -- a run with no outputs names none
        IF v_done.correlation_id <> v_cid OR json_array_length(v_done.input_ids::json) <> 1 THEN
            {_LEAVE}
        END IF;
    END IF;
    {_insert_new("artifacts", _ARTIFACT_COLUMNS, "artifacts", "v_new")}
    IF NOT v_is_run AND cardinality(v_new) = 0 THEN
        RETURN json_build_object('ok', true, 'exists', true);
    END IF;
    {_insert_members("artifact_tags", "tag", "tags")}
    {_insert_members("artifact_audience", "member", "audience")}
    INSERT INTO correlations AS c (correlation_id, state, seq, started_at, updated_at,
                                   cancelled, run_count, limit_reported)
        VALUES (v_cid, 'idle', -1, (p->>'first')::bigint, (p->>'last')::bigint, 0, 0, 0)
        ON CONFLICT (correlation_id) DO UPDATE SET
            updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at),
            started_at = LEAST(c.started_at, EXCLUDED.started_at)
        WHERE c.updated_at < EXCLUDED.updated_at OR c.started_at > EXCLUDED.started_at;
    IF v_is_run THEN
        INSERT INTO consumptions (artifact_id, consumer, correlation_id, consumed_at)
            SELECT DISTINCT j.value, v_done.agent, v_done.correlation_id, v_now
            FROM json_array_elements_text(v_done.input_ids::json) AS j
            ON CONFLICT (artifact_id, consumer) DO NOTHING;
    END IF;
    IF v_wanted > 0 THEN
        IF v_new_correlation THEN
            -- Made by the touch above, or by a concurrent first write that got there first:
            -- its bound holds for both (the row is locked now).
            SELECT cancelled, run_count INTO v_corr FROM correlations
                WHERE correlation_id = v_cid FOR UPDATE;
            IF v_corr.cancelled <> 0
               OR v_corr.run_count + v_wanted > (p->>'max_runs')::integer THEN
                {_LEAVE}
            END IF;
        END IF;
        {_insert_new("runs", _RUN_COLUMNS, "runs", "v_created")}
        IF cardinality(v_created) > 0 THEN
            UPDATE correlations SET run_count = run_count + cardinality(v_created)
                WHERE correlation_id = v_cid;
            SELECT EXISTS (
                SELECT 1 FROM json_to_recordset(p->'runs') AS x(id text, state text)
                WHERE x.id = ANY(v_created) AND x.state IN ('queued', 'running')
            ) INTO v_busy;
        END IF;
    END IF;
    -- Other processes learn of queued runs (`r`), and of a correlation whose run ended
    -- without making another pending one in it (its waiters look again); see
    -- notifications.py.
    IF v_busy THEN
        v_payload := CASE WHEN (p->>'queued')::boolean THEN 'r' END;
    ELSIF v_is_run THEN
        v_payload := v_cid;
    END IF;
    IF v_payload IS NOT NULL AND p->>'channel' IS NOT NULL THEN
        PERFORM pg_notify(p->>'channel', v_payload || '|' || (p->>'origin'));
    END IF;
    IF v_is_run AND v_busy THEN
        -- Mid-cascade: see SQLBlackboardStore.complete_run.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN json_build_object('ok', true, 'created', v_created);
END
$flock$
"""


def left_to_general_path(exc: BaseException | None) -> bool:
    """The error `flock_write` raised to leave a write to the general path."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) == FALLBACK


def create_function(conn: Connection, schema: str | None) -> None:
    """The schema step that installs `flock_write` (PostgreSQL; nothing on SQLite)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(function_ddl(schema))


def call(schema: str | None) -> Any:
    return text(f"SELECT {function_name(schema)}(CAST(:p AS json)) AS result")


def params(
    *,
    now: int,
    correlation_id: str | None,
    artifacts: Sequence[Artifact],
    runs: Sequence[Run],
    max_runs: int,
    first: int,
    last: int,
    channel: str | None,
    origin: str,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one parameter of `flock_write`, as JSON text. `run` holds a commit's fenced
    update (`run_id`, `fence`, `output_ids`, usage); `correlation_id` may be None for a
    commit with neither outputs nor triggered runs (the run's own is used)."""
    body: dict[str, Any] = {
        "now": now,
        "cid": correlation_id,
        "artifacts": [artifact_row(a) for a in artifacts],
        "tags": [row for a in artifacts for row in tag_rows(a)],
        "audience": [row for a in artifacts for row in audience_rows(a)],
        "runs": [run_row(r) for r in runs],
        "queued": any(r.state == RunState.QUEUED for r in runs),
        "max_runs": max_runs,
        "first": first,
        "last": last,
        "channel": channel,
        "origin": origin,
    }
    if run is not None:
        body.update(run)
    return {"p": json.dumps(body, separators=(",", ":"))}


__all__ = ["FALLBACK", "call", "create_function", "function_ddl", "left_to_general_path", "params"]
