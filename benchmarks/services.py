"""PostgreSQL and Redis for the benchmarks: availability, a private schema or prefix, clean-up."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as redis


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _plain_dsn(url: str) -> str:
    """The DSN without query parameters (asyncpg does not know `schema`)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=""))


async def postgres_available(url: str) -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        conn = await asyncpg.connect(_plain_dsn(url), timeout=5)
    except Exception as exc:
        return f"PostgreSQL unavailable at {url}: {type(exc).__name__}"
    await conn.close()
    return None


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(_plain_dsn(url), timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def redis_available(url: str) -> str | None:
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        return f"Redis unavailable at {url}: {type(exc).__name__}"
    finally:
        await client.aclose()
    return None


async def delete_prefix(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        async for key in client.scan_iter(match=prefix + "*", count=1000):
            deleted += await client.delete(key)
    finally:
        await client.aclose()
    return deleted


def with_query(url: str, **params: str) -> str:
    """`url` with these query parameters added."""
    parts = urlsplit(url)
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


__all__ = [
    "delete_prefix",
    "drop_schema",
    "postgres_available",
    "redis_available",
    "unique_name",
    "with_query",
]
