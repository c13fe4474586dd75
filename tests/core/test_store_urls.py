"""One parser for store URLs: the blackboard and idempotency stores read `?schema=`,
`?sslmode=` and the other options the same way, against a real PostgreSQL."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from flock.api.idempotency import store_from_url as idempotency_store
from flock.api.idempotency.redis import RedisIdempotencyStore
from flock.core.store.sql import store_from_url as blackboard_store
from flock.core.store.urls import StoreURLError, parse_store_url


def test_flock_options_are_taken_out_and_driver_options_kept() -> None:
    pg = parse_store_url("postgresql://u:secret@db:6543/app?schema=s1&sslmode=require&x=1")
    assert (pg.kind, pg.schema) == ("postgresql", "s1")
    assert dict(pg.asyncpg().query) == {"ssl": "require", "x": "1"}
    assert pg.asyncpg().drivername == "postgresql+asyncpg" and pg.asyncpg().password == "secret"
    assert "sslmode=require" in pg.libpq_dsn() and "schema" not in pg.libpq_dsn()
    redis = parse_store_url("rediss://cache:6380/2?prefix=p:&ssl_cert_reqs=none")
    assert (redis.kind, redis.prefix) == ("redis", "p:")
    assert redis.driver_url == "rediss://cache:6380/2?ssl_cert_reqs=none"
    assert parse_store_url("sqlite:////abs/board.db").path == "/abs/board.db"
    assert parse_store_url("sqlite:///rel/board.db").path == "rel/board.db"
    assert parse_store_url("memory://?max_records=5").options == {"max_records": "5"}


@pytest.mark.parametrize(
    "url", ["mysql://db/x", "sqlite://relative.db", "nonsense", "postgresql://u:secret@db:port/x"]
)
def test_bad_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(StoreURLError) as raised:
        parse_store_url(url)
    assert "secret" not in str(raised.value)


def test_the_blackboard_takes_no_redis_url() -> None:
    with pytest.raises(StoreURLError, match="redis store URL cannot be used here"):
        blackboard_store("redis://localhost")
    assert isinstance(idempotency_store("redis://localhost?prefix=x:"), RedisIdempotencyStore)


@pytest.mark.services
@pytest.mark.parametrize("sslmode", ["disable", "prefer", "allow"])
async def test_sslmode_and_schema_work_on_both_stores(
    postgres_url: str, pg_schema: str, sslmode: str, tmp_path: Path
) -> None:
    url = f"{postgres_url}?schema={pg_schema}&sslmode={sslmode}"
    board = blackboard_store(url)
    idem = idempotency_store(url)
    try:
        await board.ping()
        await idem.ping()
        claim = await idem.claim("k", "f", owner="o", lease_seconds=5, ttl_seconds=60)
        assert claim.acquired
        assert await board.query_artifacts() == ([], 0)
    finally:
        await board.close()
        await idem.close()
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            pg_schema,
        )
    finally:
        await conn.close()
    names = {row["table_name"] for row in tables}
    assert {"artifacts", "runs", "flock_schema", "flock_idempotency"} <= names


@pytest.mark.services
async def test_sslmode_require_on_a_server_without_tls_is_unavailable_on_both(
    postgres_url: str, pg_schema: str
) -> None:
    from flock.api.idempotency.protocol import IdempotencyStoreUnavailableError
    from flock.core.store.protocol import StoreUnavailableError

    url = f"{postgres_url}?schema={pg_schema}&sslmode=require"
    board, idem = blackboard_store(url), idempotency_store(url)
    try:
        # Either the server offers TLS and both answer, or it does not and both are
        # unavailable (503), not a TypeError as `--idempotency` was.
        with contextlib.suppress(StoreUnavailableError):
            await board.ping()
        with contextlib.suppress(IdempotencyStoreUnavailableError):
            await idem.ping()
    finally:
        await board.close()
        await idem.close()
