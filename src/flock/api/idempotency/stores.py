"""Pick an idempotency store from a URL, e.g. a service's configuration."""

from __future__ import annotations

from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from flock.api.idempotency.protocol import IdempotencyStore

SUPPORTED = "memory://, sqlite:///path.db, postgresql://..., redis://... or rediss://..."


def store_from_url(url: str) -> IdempotencyStore:
    """Build the store a URL names.

    `memory://` (optionally `memory://?max_records=N`), `sqlite:///relative.db` or
    `sqlite:////absolute.db`, `postgresql://` / `postgres://` DSNs (`?schema=NAME` puts the
    table in that schema), `redis://` / `rediss://` (`?prefix=P` sets the key prefix).
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

        dsn, schema = _pop_param(url, "schema")
        return PostgresIdempotencyStore(dsn, schema=schema)
    if scheme in {"redis", "rediss"}:
        from flock.api.idempotency.redis import RedisIdempotencyStore

        redis_url, prefix = _pop_param(url, "prefix")
        if prefix is None:
            return RedisIdempotencyStore(redis_url)
        return RedisIdempotencyStore(redis_url, prefix=prefix)
    raise ValueError(f"unsupported idempotency store URL {url!r}; use {SUPPORTED}")


def _pop_param(url: str, name: str) -> tuple[str, str | None]:
    """The URL without query parameter `name`, and that parameter's (last) value."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [v for k, v in query if k == name]
    if not values:
        return url, None
    kept = urlencode([(k, v) for k, v in query if k != name])
    return urlunsplit(parts._replace(query=kept)), values[-1]
