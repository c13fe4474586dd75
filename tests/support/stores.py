"""Blackboard stores for tests that run once per backend: memory, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from flock.core.store import (
    BlackboardStore,
    InMemoryBlackboardStore,
    PostgresBlackboardStore,
    SQLiteBlackboardStore,
)

BACKENDS = ("memory", "sqlite", "postgres")
# The stores' contract, not their deadline, is under test: a loaded CI machine once kept a
# statement past the default 5 s (tests of the deadline open stores of their own).
LOADED_MACHINE_TIMEOUT = 30.0


def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> BlackboardStore:
    """A fresh store of `backend`; PostgreSQL uses the test's own schema (`pg_schema`)."""
    if backend == "memory":
        return InMemoryBlackboardStore()
    if backend == "sqlite":
        return SQLiteBlackboardStore(tmp_path / "board.db")
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("pg_schema")
    return PostgresBlackboardStore(url, schema=schema, timeout=LOADED_MACHINE_TIMEOUT)


__all__ = ["BACKENDS", "LOADED_MACHINE_TIMEOUT", "open_store"]
