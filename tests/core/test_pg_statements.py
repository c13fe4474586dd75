"""PostgreSQL statements' positional values, made without SQLAlchemy's per-call expansion.

`PgStatements.bound` makes a plan per statement the first time it is used, checked against
SQLAlchemy's own expansion; the plan must give the same SQL and values for any later
parameters, and a statement it cannot reproduce (an expanding `IN` list) keeps SQLAlchemy's
path. No database is needed: these are the asyncpg dialect's compiled forms.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from flock.core.store import sql_runs
from flock.core.store.sql_pg import PgStatements


def succeed(run_id: str, fence: int) -> dict[str, Any]:
    return sql_runs.succeed_params(run_id, fence, 1_000 + fence, [f"out-{run_id}"], None)


@pytest.mark.parametrize("schema", [None, "flock_plans"])
def test_a_planned_statement_gives_sqlalchemys_sql_and_values(schema: str | None) -> None:
    statements = PgStatements(asyncpg_dialect(), schema)
    cases: list[tuple[Any, list[dict[str, Any]]]] = [
        (sql_runs.SUCCEED, [succeed("a", 1), succeed("b", 7), {**succeed("c", 2), "p_now": None}]),
        (sql_runs.PROGRESS, [{"p_correlation_id": "c1"}, {"p_correlation_id": None}]),
        (sql_runs.GET_RUN, [{"p_run_id": "r1"}, {"p_run_id": "r2"}]),
    ]
    for statement, (first, *later) in cases:
        statements.bound(statement, first)  # makes the plan (checked against SQLAlchemy)
        assert statements._plans[(statement, tuple(first))] is not None
        for params in later:  # from the plan now
            planned = statements.bound(statement, params)
            assert planned == statements._expanded(statement, params)
            assert planned[1] != statements.bound(statement, first)[1]
        if schema is not None:
            assert f"{schema}." in planned[0]


def test_an_expanding_list_keeps_sqlalchemys_path() -> None:
    statements = PgStatements(asyncpg_dialect(), None)
    inputs = sql_runs._INPUTS
    first = statements.bound(inputs, {"ids": ["a", "b"]})
    assert first[1] == ["a", "b"] and first[0].count("$") == 2
    assert statements._plans[(inputs, ("ids",))] is None
    sql, values = statements.bound(inputs, {"ids": ["a", "b", "c"]})
    assert values == ["a", "b", "c"] and sql.count("$") == 3
