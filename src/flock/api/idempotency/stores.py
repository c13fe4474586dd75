"""Pick an idempotency store from a URL, e.g. a service's configuration."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from flock.api.idempotency.protocol import IdempotencyStore

SUPPORTED = "memory://, sqlite:///path.db, postgresql://..., redis://... or rediss://..."


def store_from_url(url: str) -> IdempotencyStore:
    """Build the store a URL names.

    `memory://` (optionally `memory://?max_records=N`), `sqlite:///relative.db` or
    `sqlite:////absolute.db`, `postgresql://` / `postgres://` DSNs, `redis://` / `rediss://`.
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator:
        raise ValueError(f"not a store URL: {url!r}; use {SUPPORTED}")
    if scheme == "memory":
        from flock.api.idempotency.memory import InMemoryIdempotencyStore

        query = parse_qs(urlsplit(url).query)
        if "max_records" in query:
            return InMemoryIdempotencyStore(max_records=int(query["max_records"][-1]))
        return InMemoryIdempotencyStore()
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        from flock.api.idempotency.sql import SQLiteIdempotencyStore

        path = rest[1:] if rest.startswith("/") else ""
        if not path:
            raise ValueError(f"SQLite URL needs a file path, like sqlite:///flock.db: {url!r}")
        return SQLiteIdempotencyStore(path)
    if scheme in {"postgresql", "postgres", "postgresql+asyncpg"}:
        from flock.api.idempotency.sql import PostgresIdempotencyStore

        return PostgresIdempotencyStore(url)
    if scheme in {"redis", "rediss"}:
        from flock.api.idempotency.redis import RedisIdempotencyStore

        return RedisIdempotencyStore(url)
    raise ValueError(f"unsupported idempotency store URL {url!r}; use {SUPPORTED}")
