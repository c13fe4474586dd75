"""Fixtures of the store contract suites: one store of each backend per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from flock.core.store import (
    BlackboardStore,
    InMemoryBlackboardStore,
    PostgresBlackboardStore,
    SQLiteBlackboardStore,
)
from support.stores import LOADED_MACHINE_TIMEOUT

StoreFactory = Callable[[], BlackboardStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens a store of the backend under test; every call opens the same data."""
    if backend == "memory":
        shared = InMemoryBlackboardStore()
        return lambda: shared
    if backend == "sqlite":
        path = tmp_path / "nested" / "dir" / "board.db"
        return lambda: SQLiteBlackboardStore(path)
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("pg_schema")
    return lambda: PostgresBlackboardStore(url, schema=schema, timeout=LOADED_MACHINE_TIMEOUT)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[BlackboardStore]:
    opened = make_store()
    yield opened
    await opened.close()
