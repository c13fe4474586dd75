"""Blackboard stores: in-memory, SQLite and PostgreSQL behind one protocol."""

from flock import lazy_getattr
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


# The SQL stores import SQLAlchemy; load them only when asked for.
__getattr__ = lazy_getattr(
    __name__,
    dict.fromkeys(
        ("SQLiteBlackboardStore", "PostgresBlackboardStore", "store_from_url"),
        "flock.core.store.sql",
    ),
    globals(),
)
