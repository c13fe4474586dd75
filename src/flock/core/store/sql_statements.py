"""The SQL store's statements, each built once and then run with parameters.

A `FilterConfig` splits into a *shape* (which fields are set: that decides the SQL) and the
parameter values. Statements are memoized per shape, so a query costs SQLAlchemy a cache
lookup rather than building and hashing a new expression tree every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    TextClause,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from flock.core.runs import RunState
from flock.core.store.protocol import FilterConfig
from flock.core.store.sql_groups import pending_linked, waiting_parts
from flock.core.store.sql_schema import (
    agent_errors,
    artifact_audience,
    artifact_tags,
    artifacts,
    consumptions,
    correlations,
    run_links,
    runs,
    to_micros,
)

_DEAD = RunState.DEAD.value

Shape = tuple[str, ...]
_ORDER = (artifacts.c.created_at, artifacts.c.id)


def filter_params(filters: FilterConfig | None) -> tuple[Shape, dict[str, Any]]:
    """The filter's shape and its parameters. Empty sets filter nothing, as in `matches`."""
    params: dict[str, Any] = {}
    if filters is None:
        return (), params
    if filters.correlation_id is not None:
        params["correlation_id"] = filters.correlation_id
    for name in ("type_names", "produced_by", "visibility", "tags"):
        values = getattr(filters, name)
        if values:
            params[name] = sorted(values)
    if filters.start is not None:
        params["start"] = to_micros(filters.start)
    if filters.end is not None:
        params["end"] = to_micros(filters.end)
    if filters.visible_to is not None:
        viewer = filters.visible_to
        params["viewer_name"] = viewer.name
        params["viewer_tenant"] = viewer.tenant
        params["viewer_labels"] = sorted(viewer.labels)
    return tuple(params), params


@cache
def page(shape: Shape, limited: bool) -> Select[Any]:
    """Matching artifacts in (created_at, id) order; parameters `offset` and maybe `limit`."""
    statement = select(artifacts).where(*_where(shape)).order_by(*_ORDER)
    if limited:
        statement = statement.limit(bindparam("limit"))
    return statement.offset(bindparam("offset"))


@cache
def count(shape: Shape) -> Select[Any]:
    return select(func.count()).select_from(artifacts).where(*_where(shape))


@cache
def summary(shape: Shape) -> Select[Any]:
    c = artifacts.c
    groups = (c.type, c.produced_by, c.visibility_kind)
    return select(*groups, func.count()).where(*_where(shape)).group_by(*groups)


def _where(shape: Shape) -> list[ColumnElement[bool]]:
    c = artifacts.c
    where: list[ColumnElement[bool]] = []
    if "correlation_id" in shape:
        where.append(c.correlation_id == bindparam("correlation_id"))
    if "type_names" in shape:
        where.append(c.type.in_(bindparam("type_names", expanding=True)))
    if "produced_by" in shape:
        where.append(c.produced_by.in_(bindparam("produced_by", expanding=True)))
    if "visibility" in shape:
        where.append(c.visibility_kind.in_(bindparam("visibility", expanding=True)))
    if "start" in shape:
        where.append(c.created_at >= bindparam("start"))
    if "end" in shape:
        where.append(c.created_at <= bindparam("end"))
    if "tags" in shape:
        tag = artifact_tags.c
        where.append(
            exists().where(tag.artifact_id == c.id, tag.tag.in_(bindparam("tags", expanding=True)))
        )
    if "viewer_name" in shape:
        where.append(visible_clause())
    return where


def visible_clause() -> ColumnElement[bool]:
    """SQL for `visibility.allows(viewer)`, one branch per rule kind. A None name or tenant
    compares as NULL, which matches nothing, as `allows` says."""
    c, audience = artifacts.c, artifact_audience.c
    named = exists().where(
        audience.artifact_id == c.id, audience.member == bindparam("viewer_name")
    )
    lacking_label = exists().where(
        audience.artifact_id == c.id,
        audience.member.not_in(bindparam("viewer_labels", expanding=True)),
    )
    return or_(
        c.visibility_kind == "Public",
        and_(c.visibility_kind == "Tenant", c.tenant_id == bindparam("viewer_tenant")),
        and_(c.visibility_kind == "Private", named),
        and_(c.visibility_kind == "Labelled", ~lacking_label),
    )


GET_ARTIFACT = select(artifacts).where(artifacts.c.id == bindparam("id"))
CONSUMPTIONS_OF = (
    select(consumptions)
    .where(consumptions.c.artifact_id.in_(bindparam("ids", expanding=True)))
    .order_by(consumptions.c.consumed_at, consumptions.c.consumer)
)
CORRELATION = select(
    correlations,
    select(func.count())
    .select_from(artifacts)
    .where(artifacts.c.correlation_id == correlations.c.correlation_id)
    .scalar_subquery()
    .label("artifact_count"),
    (
        select(func.count())
        .select_from(runs)
        .where(runs.c.correlation_id == correlations.c.correlation_id, runs.c.due_at.is_not(None))
        .scalar_subquery()
        + pending_linked(correlations.c.correlation_id)
    ).label("pending_runs"),
    waiting_parts(correlations.c.correlation_id).label("waiting_artifacts"),
    # Whether there is any error to read (most correlations have none: two reads saved).
    or_(
        exists().where(agent_errors.c.correlation_id == correlations.c.correlation_id),
        exists().where(
            runs.c.correlation_id == correlations.c.correlation_id, runs.c.state == _DEAD
        ),
        exists()
        .select_from(runs.join(run_links, run_links.c.run_id == runs.c.id))
        .where(run_links.c.correlation_id == correlations.c.correlation_id, runs.c.state == _DEAD),
    ).label("has_errors"),
).where(correlations.c.correlation_id == bindparam("correlation_id"))
CORRELATION_ERRORS = (
    select(agent_errors)
    .where(agent_errors.c.correlation_id == bindparam("correlation_id"))
    .order_by(agent_errors.c.id)
)
INSERT_ERROR = agent_errors.insert()
INSERT_TAGS = artifact_tags.insert()
INSERT_AUDIENCE = artifact_audience.insert()


@dataclass(frozen=True, slots=True)
class Upserts:
    """The writes that need the dialect's `INSERT ... ON CONFLICT`; run with row parameters.

    SQLAlchemy cannot cache the compiled form of a dialect's `INSERT ... ON CONFLICT`
    ("no key"): run as constructs, they were compiled again on every execution, which took
    about as long as running them. So they are compiled once, per dialect and schema, into
    SQL text with named parameters; only `artifacts`, for many rows at once, stays a
    construct (its rows go in one statement, RETURNING the new ids).
    """

    artifact: TextClause  # one artifact row; returns its id if it was new
    artifacts: Insert  # the same for many rows; returns the ids it inserted
    consumptions: TextClause
    touch_correlation: TextClause  # creates the row, or raises updated_at
    ensure_correlation: TextClause  # creates the row if missing


@cache
def upserts(dialect: str, schema: str | None = None) -> Upserts:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stored = correlations.c
    by_id = [stored.correlation_id]
    touch = insert(correlations)
    new_artifacts = (
        insert(artifacts)
        .on_conflict_do_nothing(index_elements=[artifacts.c.id])
        .returning(artifacts.c.id)
    )

    def as_text(statement: Insert) -> TextClause:
        target = (postgresql if dialect == "postgresql" else sqlite).dialect(paramstyle="named")
        if schema is None:
            return text(str(statement.compile(dialect=target)))
        compiled = statement.compile(
            dialect=target, schema_translate_map={None: schema}, render_schema_translate=True
        )
        return text(str(compiled))

    return Upserts(
        artifact=as_text(new_artifacts),
        artifacts=new_artifacts,
        consumptions=as_text(
            insert(consumptions).on_conflict_do_nothing(
                index_elements=[consumptions.c.artifact_id, consumptions.c.consumer]
            )
        ),
        touch_correlation=as_text(
            touch.on_conflict_do_update(
                index_elements=by_id,
                set_={
                    "updated_at": case(
                        (touch.excluded.updated_at > stored.updated_at, touch.excluded.updated_at),
                        else_=stored.updated_at,
                    ),
                    "started_at": case(
                        (touch.excluded.started_at < stored.started_at, touch.excluded.started_at),
                        else_=stored.started_at,
                    ),
                },
                where=or_(
                    stored.updated_at < touch.excluded.updated_at,
                    stored.started_at > touch.excluded.started_at,
                ),
            )
        ),
        ensure_correlation=as_text(
            insert(correlations).on_conflict_do_nothing(index_elements=by_id)
        ),
    )
