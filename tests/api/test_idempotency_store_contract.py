"""One contract for every idempotency store: memory, SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from flock.api.idempotency import (
    CachedResponse,
    ClaimResult,
    IdempotencyStore,
    IdempotencyStoreFullError,
    IdempotencyStoreUnavailableError,
    InMemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
    SQLiteIdempotencyStore,
    purge_periodically,
    store_from_url,
)

LEASE = 30.0
TTL = 60.0
SHORT = 0.3
UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"

Factory = Callable[[], IdempotencyStore]

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.services),
    pytest.param("redis", id="redis", marks=pytest.mark.services),
]
SHARED_BACKENDS = BACKENDS[1:]


def _factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """New store instances on one backend; every SQL/Redis instance sees the same records."""
    if backend == "memory":
        return InMemoryIdempotencyStore
    if backend == "sqlite":
        return lambda: SQLiteIdempotencyStore(tmp_path / "idempotency.db")
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("pg_schema")
        return lambda: PostgresIdempotencyStore(url, schema=schema)
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisIdempotencyStore(url, prefix=prefix)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    return _factory(backend, request, tmp_path)


@pytest.fixture
async def open_store(factory: Factory) -> AsyncIterator[Factory]:
    """Opens store instances and closes them all after the test."""
    opened: list[IdempotencyStore] = []

    def open_() -> IdempotencyStore:
        store = factory()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
def store(open_store: Factory) -> IdempotencyStore:
    return open_store()


async def claim(
    store: IdempotencyStore,
    owner: str = "a",
    *,
    key: str = "k",
    fingerprint: str = "fp-1",
    lease: float = LEASE,
    ttl: float = TTL,
) -> ClaimResult:
    return await store.claim(key, fingerprint, owner=owner, lease_seconds=lease, ttl_seconds=ttl)


async def sleep_past(moment: float) -> None:
    """Sleep until the wall clock is just past `moment` (an expiry time)."""
    await asyncio.sleep(max(0.0, moment - time.time()) + 0.02)


async def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


RESPONSE = CachedResponse(
    status_code=201,
    body=bytes(range(256)) + '{"ok": "é"}'.encode(),
    headers={"content-type": "application/json", "x-note": "naïve ☃"},
)


async def test_satisfies_the_protocol(store: IdempotencyStore) -> None:
    assert isinstance(store, IdempotencyStore)
    await store.ping()


async def test_first_claim_wins(store: IdempotencyStore) -> None:
    before = time.time()
    first = await claim(store, "a")
    assert first.acquired and not first.taken_over
    record = first.record
    assert (record.key, record.fingerprint, record.state, record.owner) == (
        "k",
        "fp-1",
        "in_progress",
        "a",
    )
    assert before <= record.created_at <= time.time()
    assert record.expires_at == pytest.approx(record.created_at + TTL, abs=0.01)
    assert record.lease_expires_at == pytest.approx(record.created_at + LEASE, abs=0.01)
    assert record.correlation_id is None and record.artifact_id is None
    assert record.response is None
    assert await store.get("k") == record


async def test_second_claim_sees_the_existing_record(store: IdempotencyStore) -> None:
    await claim(store, "a", fingerprint="fp-1")
    second = await claim(store, "b", fingerprint="fp-2")
    assert not second.acquired and not second.taken_over
    assert second.record.fingerprint == "fp-1"
    assert second.record.state == "in_progress"
    assert second.record.owner == "a"
    assert (await claim(store, "c", key="other")).acquired


async def test_concurrent_claims_have_one_winner(store: IdempotencyStore) -> None:
    results = await asyncio.gather(*(claim(store, f"owner-{i}") for i in range(50)))
    winners = [r for r in results if r.acquired]
    assert len(winners) == 1
    assert all(r.record.owner == winners[0].record.owner for r in results)


@pytest.mark.parametrize("backend", SHARED_BACKENDS, indirect=True)
async def test_concurrent_claims_across_instances_have_one_winner(open_store: Factory) -> None:
    first, second = open_store(), open_store()
    for round_ in range(5):
        key = f"race-{round_}"
        results = await asyncio.gather(
            *(
                claim(s, f"{n}-{i}", key=key)
                for i in range(25)
                for n, s in (("x", first), ("y", second))
            )
        )
        assert sum(r.acquired for r in results) == 1


async def test_takeover_keeps_what_was_published(store: IdempotencyStore) -> None:
    held = (await claim(store, "a", lease=SHORT)).record
    assert await store.record_publish("k", "a", "corr-1", "art-1")
    await sleep_past(held.lease_expires_at)

    abandoned = await store.get("k")
    assert abandoned is not None and abandoned.lease_expired(time.time())

    taken = await claim(store, "b")
    assert taken.acquired and taken.taken_over
    assert taken.record.owner == "b"
    assert taken.record.state == "in_progress"
    assert (taken.record.correlation_id, taken.record.artifact_id) == ("corr-1", "art-1")
    assert taken.record.lease_expires_at > time.time() + LEASE - 5

    assert not await store.renew("k", "a", LEASE)
    assert not await store.record_publish("k", "a", "corr-2")
    assert not await store.complete("k", "a", RESPONSE, TTL)
    assert not await store.release("k", "a")
    assert await store.complete("k", "b", RESPONSE, TTL)


async def test_lapsed_lease_stays_bound_to_its_body(store: IdempotencyStore) -> None:
    held = (await claim(store, "a", lease=SHORT)).record
    assert await store.record_publish("k", "a", "corr-1", "art-1")
    await sleep_past(held.lease_expires_at)

    other = await claim(store, "b", fingerprint="fp-2")
    assert not other.acquired and not other.taken_over
    assert (other.record.fingerprint, other.record.owner) == ("fp-1", "a")
    assert (other.record.correlation_id, other.record.artifact_id) == ("corr-1", "art-1")

    # The first body can still take it over, and finds what was published.
    same = await claim(store, "c")
    assert same.acquired and same.taken_over
    assert same.record.correlation_id == "corr-1"


async def test_renew_prevents_takeover(store: IdempotencyStore) -> None:
    held = (await claim(store, "a", lease=SHORT)).record
    assert await store.renew("k", "a", LEASE)
    await sleep_past(held.lease_expires_at)
    second = await claim(store, "b")
    assert not second.acquired
    assert second.record.owner == "a"
    assert second.record.lease_expires_at > time.time() + LEASE - 5


async def test_renew_to_zero_hands_the_key_over_now(store: IdempotencyStore) -> None:
    await claim(store, "a")
    assert await store.record_publish("k", "a", "corr-1")
    assert await store.renew("k", "a", 0.0)
    taken = await claim(store, "b")
    assert taken.acquired and taken.taken_over
    assert taken.record.correlation_id == "corr-1" and taken.record.artifact_id is None


async def test_complete_stores_the_response_exactly(store: IdempotencyStore) -> None:
    await claim(store, "a")
    assert await store.record_publish("k", "a", "corr-1")
    before = time.time()
    assert await store.complete("k", "a", RESPONSE, TTL)

    record = await store.get("k")
    assert record is not None
    assert record.state == "completed"
    assert record.response == RESPONSE
    assert record.correlation_id == "corr-1"
    assert record.expires_at >= before + TTL

    repeat = await claim(store, "b")
    assert not repeat.acquired
    assert repeat.record.state == "completed" and repeat.record.response == RESPONSE

    empty = CachedResponse(status_code=204, body=b"")
    await claim(store, "c", key="empty")
    assert await store.complete("empty", "c", empty, TTL)
    stored = await store.get("empty")
    assert stored is not None and stored.response == empty


async def test_only_the_holder_can_act(store: IdempotencyStore) -> None:
    held = (await claim(store, "a")).record
    assert not await store.complete("k", "b", RESPONSE, TTL)
    assert not await store.renew("k", "b", LEASE)
    assert not await store.record_publish("k", "b", "corr-x")
    assert not await store.release("k", "b")
    assert await store.get("k") == held

    assert not await store.complete("missing", "a", RESPONSE, TTL)
    assert not await store.renew("missing", "a", LEASE)
    assert not await store.record_publish("missing", "a", "corr-x")
    assert not await store.release("missing", "a")
    assert await store.get("missing") is None


async def test_a_completed_record_is_final(store: IdempotencyStore) -> None:
    await claim(store, "a")
    assert await store.complete("k", "a", RESPONSE, TTL)
    assert not await store.complete("k", "a", CachedResponse(500, b"again"), TTL)
    assert not await store.renew("k", "a", LEASE)
    assert not await store.record_publish("k", "a", "corr-x")
    assert not await store.release("k", "a")
    record = await store.get("k")
    assert record is not None and record.response == RESPONSE


async def test_release_frees_the_key(store: IdempotencyStore) -> None:
    await claim(store, "a")
    assert await store.record_publish("k", "a", "corr-1")
    assert await store.release("k", "a")
    assert await store.get("k") is None
    again = await claim(store, "b", fingerprint="fp-2")
    assert again.acquired and not again.taken_over
    assert again.record.fingerprint == "fp-2" and again.record.correlation_id is None


async def test_completed_record_expires_after_its_ttl(store: IdempotencyStore) -> None:
    await claim(store, "a")
    assert await store.record_publish("k", "a", "corr-1")
    assert await store.complete("k", "a", RESPONSE, SHORT)

    async def gone() -> bool:
        return await store.get("k") is None

    await eventually(gone)
    fresh = await claim(store, "b", fingerprint="fp-2")
    assert fresh.acquired and not fresh.taken_over
    assert fresh.record.state == "in_progress" and fresh.record.response is None
    assert fresh.record.correlation_id is None
    assert fresh.record.fingerprint == "fp-2"


async def test_expired_claim_is_replaced_not_taken_over(store: IdempotencyStore) -> None:
    held = (await claim(store, "a", ttl=0.5)).record
    assert await store.record_publish("k", "a", "corr-1", "art-1")
    await sleep_past(held.expires_at)
    assert await store.get("k") is None
    assert not await store.renew("k", "a", LEASE)
    assert not await store.complete("k", "a", RESPONSE, TTL)

    fresh = await claim(store, "b")
    assert fresh.acquired and not fresh.taken_over
    assert fresh.record.correlation_id is None and fresh.record.artifact_id is None
    assert fresh.record.created_at > held.created_at


async def test_purge_removes_expired_records(
    store: IdempotencyStore, backend: str, request: pytest.FixtureRequest
) -> None:
    for i in range(2):
        await claim(store, "a", key=f"short-{i}")
        assert await store.complete(f"short-{i}", "a", RESPONSE, SHORT)
    await claim(store, "a", key="short-2", lease=SHORT, ttl=SHORT)
    await claim(store, "a", key="long")
    await sleep_past(time.time() + SHORT)

    if backend == "redis":
        # Redis expires keys natively; a sweep has nothing left to do.
        from redis.asyncio import Redis

        assert await store.purge_expired() == 0
        client = Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = request.getfixturevalue("redis_prefix")
        try:
            for i in range(3):
                assert await client.exists(f"{prefix}short-{i}") == 0
            assert await client.pttl(f"{prefix}long") > (TTL - 5) * 1000
        finally:
            await client.aclose()
    else:
        assert await store.purge_expired() == 3
        assert await store.purge_expired() == 0
    assert await store.get("long") is not None
    for i in range(3):
        assert (await claim(store, "b", key=f"short-{i}")).acquired


@pytest.mark.parametrize("backend", SHARED_BACKENDS, indirect=True)
async def test_instances_share_records(open_store: Factory) -> None:
    first, second = open_store(), open_store()
    await claim(first, "a")
    assert not (await claim(second, "b")).acquired
    assert await first.complete("k", "a", RESPONSE, TTL)
    record = await second.get("k")
    assert record is not None and record.response == RESPONSE


async def test_sqlite_new_file_opened_by_many_stores_at_once(tmp_path: Path) -> None:
    # Every instance's first call creates the table and switches the new file to WAL, which
    # SQLite refuses at once ("database is locked") to a racing connection: each call must
    # still answer, and exactly one claim win.
    for round_ in range(5):
        stores = [SQLiteIdempotencyStore(tmp_path / f"new-{round_}.db") for _ in range(8)]
        try:
            results = await asyncio.gather(
                *(claim(s, f"{n}-{i}") for i in range(6) for n, s in enumerate(stores))
            )
            assert sum(r.acquired for r in results) == 1
        finally:
            for s in stores:
                await s.close()


async def test_sqlite_records_survive_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    store = SQLiteIdempotencyStore(path)
    await claim(store, "a")
    assert await store.record_publish("k", "a", "corr-1", "art-1")
    assert await store.complete("k", "a", RESPONSE, TTL)
    await claim(store, "a", key="running")
    await store.close()

    reopened = SQLiteIdempotencyStore(path)
    try:
        record = await reopened.get("k")
        assert record is not None
        assert record.response == RESPONSE
        assert (record.correlation_id, record.artifact_id) == ("corr-1", "art-1")
        assert not (await claim(reopened, "b", key="running")).acquired
        assert await reopened.complete("running", "a", RESPONSE, TTL)
    finally:
        await reopened.close()


async def test_memory_evicts_expired_then_oldest_completed() -> None:
    store = InMemoryIdempotencyStore(max_records=4)
    await claim(store, "a", key="expiring", ttl=SHORT)
    for key in ("done-1", "done-2"):
        await claim(store, "a", key=key)
        assert await store.complete(key, "a", RESPONSE, TTL)
    await claim(store, "a", key="running")
    await sleep_past(time.time() + SHORT)

    assert (await claim(store, "a", key="new-1")).acquired
    assert len(store) == 4
    assert await store.get("done-1") is not None  # the expired record went first

    assert (await claim(store, "a", key="new-2")).acquired
    assert await store.get("done-1") is None  # then the oldest completed one
    assert await store.get("done-2") is not None

    assert (await claim(store, "a", key="new-3")).acquired
    assert await store.get("done-2") is None
    assert await store.get("running") is not None
    assert len(store) == 4


async def test_memory_full_of_claims_refuses_new_keys() -> None:
    store = InMemoryIdempotencyStore(max_records=3)
    for i in range(3):
        await claim(store, "a", key=f"running-{i}")
    with pytest.raises(IdempotencyStoreFullError) as caught:
        await claim(store, "a", key="one-too-many")
    assert isinstance(caught.value, IdempotencyStoreUnavailableError)
    # Existing keys still answer, and room comes back once a claim is released.
    assert not (await claim(store, "b", key="running-0")).acquired
    assert await store.release("running-0", "a")
    assert (await claim(store, "a", key="one-too-many")).acquired


async def test_memory_rejects_a_nonsense_limit() -> None:
    with pytest.raises(ValueError):
        InMemoryIdempotencyStore(max_records=0)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: PostgresIdempotencyStore(UNREACHABLE_POSTGRES), id="postgres"),
        pytest.param(lambda: RedisIdempotencyStore(UNREACHABLE_REDIS), id="redis"),
    ],
)
async def test_unreachable_backend_is_reported_unavailable(
    make: Callable[[], IdempotencyStore],
) -> None:
    store = make()
    try:
        with pytest.raises(IdempotencyStoreUnavailableError):
            await store.ping()
        with pytest.raises(IdempotencyStoreUnavailableError):
            await claim(store, "a")
        with pytest.raises(IdempotencyStoreUnavailableError):
            await store.get("k")
    finally:
        await store.close()


async def test_unopenable_sqlite_file_is_reported_unavailable() -> None:
    store = SQLiteIdempotencyStore("/nonexistent-dir/idempotency.db")
    try:
        with pytest.raises(IdempotencyStoreUnavailableError):
            await store.ping()
    finally:
        await store.close()
        # aiosqlite stops a connection that failed to open without awaiting that; give its
        # worker thread a moment to finish while this test's event loop still runs.
        await asyncio.sleep(0.1)


async def test_store_from_url(tmp_path: Path) -> None:
    cases: list[tuple[str, type]] = [
        ("memory://", InMemoryIdempotencyStore),
        (f"sqlite:///{tmp_path / 'a.db'}", SQLiteIdempotencyStore),
        ("postgresql://postgres@127.0.0.1:5432/test", PostgresIdempotencyStore),
        ("postgres://postgres@127.0.0.1:5432/test", PostgresIdempotencyStore),
        ("redis://127.0.0.1:6379/0", RedisIdempotencyStore),
        ("rediss://127.0.0.1:6379/0", RedisIdempotencyStore),
    ]
    for url, kind in cases:
        store = store_from_url(url)
        try:
            assert isinstance(store, kind), url
        finally:
            await store.close()
    limited = store_from_url("memory://?max_records=7")
    assert isinstance(limited, InMemoryIdempotencyStore) and limited.max_records == 7
    for bad in ("mysql://x/y", "memory", "sqlite://", "file:///tmp/x.db"):
        with pytest.raises(ValueError):
            store_from_url(bad)


async def test_purge_periodically_survives_store_errors(caplog: pytest.LogCaptureFixture) -> None:
    class FlakyStore(InMemoryIdempotencyStore):
        calls = 0

        async def purge_expired(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise IdempotencyStoreUnavailableError("down")
            if self.calls == 2:
                raise RuntimeError("bug")
            return await super().purge_expired()

    store = FlakyStore()
    await claim(store, "a", ttl=0.0)
    caplog.set_level(logging.DEBUG, logger="flock.api.idempotency.purge")
    task = asyncio.create_task(purge_periodically(store, 0.01))
    try:
        await eventually(lambda: store.calls >= 4)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(store) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped: down" in m for m in messages)
    assert any("purge failed" in m for m in messages)
    assert any("removed 1 expired" in m for m in messages)
    with pytest.raises(ValueError):
        await purge_periodically(store, 0)
