"""Pick an idempotency store from a URL, e.g. a service's configuration."""

from __future__ import annotations

from flock.api.idempotency.protocol import IdempotencyStore
from flock.core.store.urls import SUPPORTED, parse_store_url


def store_from_url(
    url: str, *, timeout: float | None = None, upgrade: bool | None = None
) -> IdempotencyStore:
    """Build the store a URL names (parsed as the blackboard's are, `flock.core.store.urls`).

    `memory://` (optionally `memory://?max_records=N`), `sqlite:///relative.db` or
    `sqlite:////absolute.db`, `postgresql://` / `postgres://` DSNs (`?schema=NAME` puts the
    table in that schema, `?sslmode=...` and other driver options pass on), `redis://` /
    `rediss://` (`?prefix=P` sets the key prefix). `timeout` bounds every operation on
    PostgreSQL and Redis (default `FLOCK_STORE_TIMEOUT`); `upgrade` lets an older SQL schema
    be upgraded on first use (default: SQLite yes, PostgreSQL no).
    """
    target = parse_store_url(url)
    if target.kind == "memory":
        from flock.api.idempotency.memory import InMemoryIdempotencyStore

        if "max_records" in target.options:
            try:
                limit = int(target.options["max_records"])
            except ValueError:
                raise ValueError("memory://?max_records= needs a whole number") from None
            return InMemoryIdempotencyStore(max_records=limit)
        return InMemoryIdempotencyStore()
    if target.kind == "sqlite":
        from flock.api.idempotency.sql import SQLiteIdempotencyStore

        assert target.path is not None
        return SQLiteIdempotencyStore(target.path, upgrade=upgrade is not False)
    if timeout is None:
        from flock.settings import load_settings

        timeout = load_settings().store_timeout
    if target.kind == "postgresql":
        from flock.api.idempotency.sql import PostgresIdempotencyStore

        return PostgresIdempotencyStore(
            target.driver_url, schema=target.schema, timeout=timeout, upgrade=bool(upgrade)
        )
    from flock.api.idempotency.redis import RedisIdempotencyStore

    if target.prefix is None:
        return RedisIdempotencyStore(target.driver_url, timeout=timeout)
    return RedisIdempotencyStore(target.driver_url, prefix=target.prefix, timeout=timeout)


__all__ = ["SUPPORTED", "store_from_url"]
