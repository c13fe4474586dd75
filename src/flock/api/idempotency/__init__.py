"""Idempotency keys for the REST API: the store protocol and its backends.

`InMemoryIdempotencyStore` is the default; `SQLiteIdempotencyStore`,
`PostgresIdempotencyStore` and `RedisIdempotencyStore` share records across processes and
replicas. `store_from_url` picks one from configuration. `idempotent` adds idempotency keys
to user-defined routes.
"""

from typing import TYPE_CHECKING

from flock import lazy_getattr
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
from flock.api.idempotency.stores import store_from_url

if TYPE_CHECKING:
    from flock.api.idempotency.dependency import idempotent
    from flock.api.idempotency.redis import RedisIdempotencyStore
    from flock.api.idempotency.sql import PostgresIdempotencyStore, SQLiteIdempotencyStore

# Imported on first use: the backends pull in SQLAlchemy or redis (a second or so at
# start-up, for a server that may use neither), and the decorator needs
# `flock.api.errors`, which imports this package's protocol module (a cycle if eager).
_LAZY = {
    "idempotent": "flock.api.idempotency.dependency",
    "RedisIdempotencyStore": "flock.api.idempotency.redis",
    "PostgresIdempotencyStore": "flock.api.idempotency.sql",
    "SQLiteIdempotencyStore": "flock.api.idempotency.sql",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())

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
    "idempotent",
    "purge_periodically",
    "store_from_url",
]
