"""Idempotency keys for the REST API: the store protocol and its backends.

`InMemoryIdempotencyStore` is the default; `SQLiteIdempotencyStore`,
`PostgresIdempotencyStore` and `RedisIdempotencyStore` share records across processes and
replicas. `store_from_url` picks one from configuration.
"""

from flock.api.idempotency.memory import InMemoryIdempotencyStore
from flock.api.idempotency.protocol import (
    CachedResponse,
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStore,
    IdempotencyStoreFullError,
    IdempotencyStoreUnavailableError,
    RecordState,
)
from flock.api.idempotency.purge import purge_periodically
from flock.api.idempotency.redis import RedisIdempotencyStore
from flock.api.idempotency.sql import PostgresIdempotencyStore, SQLiteIdempotencyStore
from flock.api.idempotency.stores import store_from_url

__all__ = [
    "CachedResponse",
    "ClaimResult",
    "IdempotencyRecord",
    "IdempotencyStore",
    "IdempotencyStoreFullError",
    "IdempotencyStoreUnavailableError",
    "InMemoryIdempotencyStore",
    "PostgresIdempotencyStore",
    "RecordState",
    "RedisIdempotencyStore",
    "SQLiteIdempotencyStore",
    "purge_periodically",
    "store_from_url",
]
