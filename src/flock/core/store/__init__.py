"""Blackboard stores: in-memory, SQLite and PostgreSQL behind one protocol."""

from flock.core.store.memory import InMemoryBlackboardStore
from flock.core.store.protocol import (
    BlackboardStore,
    CorrelationRecord,
    FilterConfig,
    StoreUnavailableError,
)

__all__ = [
    "BlackboardStore",
    "CorrelationRecord",
    "FilterConfig",
    "InMemoryBlackboardStore",
    "PostgresBlackboardStore",
    "SQLiteBlackboardStore",
    "StoreUnavailableError",
    "store_from_url",
]


def __getattr__(name: str) -> object:
    # The SQL stores import SQLAlchemy; load them only when asked for.
    if name in {"SQLiteBlackboardStore", "PostgresBlackboardStore", "store_from_url"}:
        from flock.core.store import sql

        return getattr(sql, name)
    raise AttributeError(name)
