"""Store URLs: one parser for the blackboard and the idempotency stores.

`memory://[?max_records=N]`, `sqlite:///relative.db` or `sqlite:////absolute.db`,
`postgresql://` / `postgres://` / `postgresql+asyncpg://` DSNs and `redis://` / `rediss://`
URLs. Flock's own query parameters (`?schema=NAME` for PostgreSQL, `?prefix=P` for Redis,
`?max_records=N` for memory) are taken out; every other one stays with the driver, libpq's
`sslmode` spelt the way asyncpg takes it (`ssl`), so `?sslmode=require` means the same on
every store. Errors never echo a URL that may hold a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import URL, make_url

Kind = Literal["memory", "sqlite", "postgresql", "redis"]
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})
SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+aiosqlite"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})
SUPPORTED = "memory://, sqlite:///path.db, postgresql://... or redis://..."
# Flock's own parameters, per kind; the others go to the driver.
_OWN = {"memory": ("max_records",), "sqlite": (), "postgresql": ("schema",), "redis": ("prefix",)}


class StoreURLError(ValueError):
    """Not a store URL Flock understands (the message names the scheme, not the URL)."""


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: its `kind`, Flock's own options, and what the driver gets."""

    kind: Kind
    driver_url: str  # the URL without Flock's own parameters
    path: str | None = None  # SQLite's file
    schema: str | None = None  # PostgreSQL's schema
    prefix: str | None = None  # Redis's key prefix
    options: dict[str, str] = field(default_factory=dict)  # other Flock options (memory)

    def asyncpg(self) -> URL:
        """PostgreSQL: the SQLAlchemy asyncpg URL (`sslmode` passed on as `ssl`)."""
        return asyncpg_url(self.driver_url)

    def libpq_dsn(self) -> str:
        """PostgreSQL: a plain `postgresql://` DSN for asyncpg itself (it reads `sslmode`)."""
        url = make_url(self.driver_url).set(drivername="postgresql")
        query = dict(url.query)
        if "ssl" in query and "sslmode" not in query:
            query["sslmode"] = query.pop("ssl")
        return url.set(query=query).render_as_string(hide_password=False)


def parse_store_url(url: str, *, kinds: tuple[Kind, ...] | None = None) -> StoreURL:
    """Parse `url`; `kinds` limits what is accepted (the blackboard takes no Redis)."""
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    kind: Kind
    if not separator:
        raise StoreURLError(f"not a store URL (no scheme://); use {_supported(kinds)}")
    if scheme == "memory":
        kind = "memory"
    elif scheme in SQLITE_SCHEMES:
        kind = "sqlite"
    elif scheme in POSTGRES_SCHEMES:
        kind = "postgresql"
    elif scheme in REDIS_SCHEMES:
        kind = "redis"
    else:
        raise StoreURLError(f"unsupported store URL scheme {scheme!r}: use {_supported(kinds)}")
    if kinds is not None and kind not in kinds:
        raise StoreURLError(f"a {kind} store URL cannot be used here: use {_supported(kinds)}")
    driver_url, own = _split_query(url, _OWN[kind])
    if kind == "sqlite":
        path = rest.partition("?")[0]
        path = path[1:] if path.startswith("/") else ""
        if not path:
            raise StoreURLError("a SQLite store URL looks like sqlite:///path/file.db")
        return StoreURL(kind, driver_url, path=path)
    if kind == "postgresql":
        asyncpg_url(driver_url)  # refuse a malformed DSN now, not on first use
        return StoreURL(kind, driver_url, schema=own.get("schema") or None)
    if kind == "redis":
        return StoreURL(kind, driver_url, prefix=own.get("prefix"))
    return StoreURL(kind, driver_url, options=own)


def asyncpg_url(dsn: str | URL) -> URL:
    """`postgresql://` and `postgres://` DSNs, as SQLAlchemy's asyncpg URL."""
    try:
        url = make_url(dsn)
    except Exception:  # sqlalchemy.exc.ArgumentError, ValueError (a bad port): no URL echo
        raise StoreURLError("not a valid PostgreSQL URL (postgresql://user@host/db)") from None
    if url.drivername not in POSTGRES_SCHEMES:
        raise StoreURLError(f"not a PostgreSQL URL (postgresql://...): {url.drivername}://")
    query = dict(url.query)
    if "sslmode" in query:  # libpq's name; asyncpg takes the same values as `ssl`
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername="postgresql+asyncpg", query=query)


def _split_query(url: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """`url` without the query parameters `names`, and their (last) values."""
    if not names or "?" not in url:
        return url, {}
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in names}
    kept = urlencode([(k, v) for k, v in query if k not in names])
    return urlunsplit(parts._replace(query=kept)), own


def _supported(kinds: tuple[Kind, ...] | None) -> str:
    if kinds is None:
        return SUPPORTED
    examples = {
        "memory": "memory://",
        "sqlite": "sqlite:///path.db",
        "postgresql": "postgresql://... (PostgreSQL)",
        "redis": "redis://...",
    }
    return ", ".join(examples[k] for k in kinds)


__all__ = [
    "POSTGRES_SCHEMES",
    "StoreURL",
    "StoreURLError",
    "asyncpg_url",
    "parse_store_url",
]
