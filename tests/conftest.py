"""Shared fixtures: real PostgreSQL and Redis (each test isolated), `flock serve` processes."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from support.serve import ServerFactory

POSTGRES_URL = os.environ.get(
    "FLOCK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("FLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("FLOCK_REQUIRE_SERVICES") == "1"


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, url: str) -> None:
    """Skip (or, with FLOCK_REQUIRE_SERVICES=1, fail) when a service cannot be reached."""
    if _reachable(url):
        return
    message = f"{name} is not reachable at {url} (set FLOCK_TEST_{name.upper()}_URL)"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; FLOCK_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> str:
    require_service("postgres", POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture
def redis_url() -> str:
    require_service("redis", REDIS_URL)
    return REDIS_URL


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    yield schema
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh Redis key prefix for one test; its keys are deleted afterwards."""
    from redis.asyncio import Redis

    prefix = f"flocktest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def shared_store_urls(
    postgres_url: str, pg_schema: str, redis_url: str, redis_prefix: str
) -> dict[str, str]:
    """`store` (PostgreSQL, this test's schema) and `idempotency` (Redis, this test's prefix)
    URLs for `flock serve`: what replicas share in production."""
    return {
        "store": f"{postgres_url}?schema={pg_schema}",
        "idempotency": f"{redis_url}?prefix={redis_prefix}",
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """`serve(app, store=..., idempotency=..., **env)` starts `flock serve`; all are stopped."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
