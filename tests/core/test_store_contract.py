"""One contract for every blackboard store: in-memory, SQLite and PostgreSQL.

Where a query's answer is not spelled out, the expected result comes from
`FilterConfig.matches` applied to the stored artifacts in (created_at, id) order.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope
from flock.core.runs import Run
from flock.core.store import (
    BlackboardStore,
    FilterConfig,
    InMemoryBlackboardStore,
    PostgresBlackboardStore,
    SQLiteBlackboardStore,
    StoreUnavailableError,
    store_from_url,
)
from flock.core.store.memory import summarize
from flock.core.store.sql_backends import asyncpg_url
from flock.core.store.sql_thread import SQLiteFiles
from flock.core.visibility import (
    Identity,
    LabelledVisibility,
    PrivateVisibility,
    PublicVisibility,
    TenantVisibility,
)

T0 = datetime(2024, 5, 17, 8, 30, 0, 123456, tzinfo=UTC)
StoreFactory = Callable[[], BlackboardStore]


def art(n: int, **fields: Any) -> Artifact:
    """Artifact number n, created n seconds after T0 unless told otherwise."""
    fields.setdefault("id", f"art-{n:03d}")
    fields.setdefault("created_at", T0 + timedelta(seconds=n))
    fields.setdefault("correlation_id", "corr-a")
    return Artifact(type=fields.pop("type", "Idea"), payload={"n": n}, **fields)


async def ids(store: BlackboardStore, filters: FilterConfig | None = None, **kw: Any) -> list[str]:
    items, _ = await store.query_artifacts(filters, limit=-1, **kw)
    return [a.id for a in items]  # type: ignore[union-attr]


# -- publish / get ---------------------------------------------------------------------------


VISIBILITIES = [
    PublicVisibility(),
    PrivateVisibility(agents=frozenset({"writer", "critic"})),
    LabelledVisibility(required_labels=frozenset({"pii", "eu"})),
    TenantVisibility(tenant_id="acme"),
]


@pytest.mark.parametrize("visibility", VISIBILITIES, ids=lambda v: v.kind)
async def test_publish_get_round_trips_every_field(store: BlackboardStore, visibility: Any) -> None:
    artifact = Artifact(
        type="Report",
        payload={
            "title": 'Grüße, 世界 "quoted" \\ \u0000 nul',
            "score": 0.1 + 0.2,
            "big": 2**62 + 1,
            "nested": {"list": [1, None, True, {"x": []}], "empty": {}},
        },
        produced_by="writer",
        correlation_id=str(uuid.uuid4()),
        partition_key="customer-42",
        tags=frozenset({"urgent", "b2b", "with space"}),
        visibility=visibility,
        created_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        version=3,
    )
    await store.publish(artifact)

    got = await store.get(artifact.id)

    assert got == artifact
    assert got is not None
    assert got.to_dict() == artifact.to_dict()
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.created_at.microsecond == 999999
    assert got.visibility == visibility and got.visibility_kind == visibility.kind


async def test_created_at_in_another_timezone_is_the_same_instant(store: BlackboardStore) -> None:
    moment = datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=5)))
    await store.put(art(1, created_at=moment))

    got = await store.get("art-001")

    assert got is not None and got.created_at == moment


async def test_get_of_unknown_id_is_none(store: BlackboardStore) -> None:
    assert await store.get("nope") is None
    assert await store.get_consumptions("nope") == []
    assert await store.get_correlation("nope") is None


async def test_publish_is_idempotent_on_id(store: BlackboardStore) -> None:
    first = art(1, tags=frozenset({"a"}))
    await store.publish(first)
    await store.publish(first)
    await store.publish(art(1, tags=frozenset({"b"}), correlation_id="corr-other"))

    items, total = await store.query_artifacts()

    assert (items, total) == ([first], 1)
    assert await ids(store, FilterConfig(tags=frozenset({"b"}))) == []
    assert await store.get_correlation("corr-other") is None
    record = await store.get_correlation("corr-a")
    assert record is not None and record.artifact_count == 1


# -- ordering and pages ----------------------------------------------------------------------


async def test_query_orders_by_created_at_then_id(store: BlackboardStore) -> None:
    same = T0 + timedelta(seconds=5)
    tied = ["b", "a", "Z", "a-1", "a_1", "é", "0"]
    for artifact_id in tied:
        await store.publish(art(5, id=artifact_id, created_at=same))
    await store.publish(art(9, id="late"))
    await store.publish(art(1, id="zz-early"))
    await store.publish(art(5, id="micro", created_at=same + timedelta(microseconds=1)))

    assert await ids(store) == ["zz-early", *sorted(tied), "micro", "late"]


async def test_limit_offset_and_total(store: BlackboardStore) -> None:
    for n in range(7):
        await store.publish(art(n))
    every = [f"art-{n:03d}" for n in range(7)]

    async def page(limit: int, offset: int) -> tuple[list[str], int]:
        items, total = await store.query_artifacts(limit=limit, offset=offset)
        return [a.id for a in items], total  # type: ignore[union-attr]

    assert await page(3, 0) == (every[0:3], 7)
    assert await page(3, 3) == (every[3:6], 7)
    assert await page(3, 6) == (every[6:], 7)
    assert await page(7, 0) == (every, 7)
    assert await page(3, 7) == ([], 7)
    assert await page(3, 50) == ([], 7)
    assert await page(0, 0) == ([], 7)
    assert await page(-1, 0) == (every, 7)
    assert await page(-1, 2) == (every[2:], 7)
    assert await page(-1, 9) == ([], 7)
    assert await store.query_artifacts(FilterConfig(correlation_id="none")) == ([], 0)


# -- filters ---------------------------------------------------------------------------------


def dataset() -> list[Artifact]:
    """Artifacts covering every filter field; created in n order."""
    return [
        art(0, type="Idea", produced_by="external", tags=frozenset({"red"})),
        art(1, type="Draft", produced_by="writer", tags=frozenset({"red", "blue"})),
        art(2, type="Draft", produced_by="writer", correlation_id="corr-b",
            visibility=PrivateVisibility(agents=frozenset({"critic"}))),
        art(3, type="Review", produced_by="critic", tags=frozenset({"green"}),
            visibility=LabelledVisibility(required_labels=frozenset({"pii"}))),
        art(4, type="Idea", produced_by="external", correlation_id="corr-b",
            visibility=TenantVisibility(tenant_id="acme")),
        art(5, type="Review", produced_by="critic", tags=frozenset({"blue"}),
            visibility=LabelledVisibility(required_labels=frozenset())),
        art(6, type="Draft", produced_by="writer", correlation_id="corr-c",
            visibility=TenantVisibility(tenant_id="globex"), tags=frozenset({"red%", "_"})),
        art(7, type="Idea", produced_by="external",
            visibility=PrivateVisibility(agents=frozenset({"writer", "critic"}))),
        art(8, type="Summary", produced_by="writer",
            visibility=LabelledVisibility(required_labels=frozenset({"pii", "eu"}))),
    ]  # fmt: skip


async def publish_dataset(store: BlackboardStore) -> list[Artifact]:
    artifacts = dataset()
    for artifact in reversed(artifacts):
        await store.publish(artifact)
    return artifacts


def expected(artifacts: list[Artifact], filters: FilterConfig) -> list[str]:
    return [a.id for a in artifacts if filters.matches(a)]


SINGLE_FILTERS = {
    "type": FilterConfig(type_names=frozenset({"Draft"})),
    "types": FilterConfig(type_names=frozenset({"Idea", "Summary", "Unknown"})),
    "producer": FilterConfig(produced_by=frozenset({"critic"})),
    "producers": FilterConfig(produced_by=frozenset({"critic", "writer"})),
    "correlation": FilterConfig(correlation_id="corr-b"),
    "tag": FilterConfig(tags=frozenset({"red"})),
    "tags_any": FilterConfig(tags=frozenset({"green", "blue"})),
    "tag_like_chars": FilterConfig(tags=frozenset({"red%"})),
    "tag_underscore": FilterConfig(tags=frozenset({"_"})),
    "visibility_kind": FilterConfig(visibility=frozenset({"Labelled"})),
    "visibility_kinds": FilterConfig(visibility=frozenset({"Private", "Tenant"})),
    "start": FilterConfig(start=T0 + timedelta(seconds=6)),
    "end": FilterConfig(end=T0 + timedelta(seconds=2)),
    "start_end": FilterConfig(start=T0 + timedelta(seconds=3), end=T0 + timedelta(seconds=5)),
    "empty_sets": FilterConfig(type_names=frozenset(), tags=frozenset()),
}


@pytest.mark.parametrize("name", list(SINGLE_FILTERS))
async def test_each_filter_field(store: BlackboardStore, name: str) -> None:
    artifacts = await publish_dataset(store)
    filters = SINGLE_FILTERS[name]
    want = expected(artifacts, filters)
    if name != "empty_sets":
        assert 0 < len(want) < len(artifacts)  # the case really filters

    items, total = await store.query_artifacts(filters, limit=-1)

    assert [a.id for a in items] == want  # type: ignore[union-attr]
    assert total == len(want)


async def test_time_bounds_are_inclusive_to_the_microsecond(store: BlackboardStore) -> None:
    artifacts = await publish_dataset(store)
    at = artifacts[4].created_at

    assert await ids(store, FilterConfig(start=at, end=at)) == ["art-004"]
    tiny = timedelta(microseconds=1)
    assert await ids(store, FilterConfig(start=at + tiny, end=at + 2 * tiny)) == []


async def test_combined_filters(store: BlackboardStore) -> None:
    artifacts = await publish_dataset(store)
    filters = FilterConfig(
        type_names=frozenset({"Draft", "Idea"}),
        produced_by=frozenset({"writer", "external"}),
        correlation_id="corr-a",
        tags=frozenset({"red", "blue"}),
        visibility=frozenset({"Public"}),
        start=T0,
        end=T0 + timedelta(seconds=8),
    )

    items, total = await store.query_artifacts(filters, limit=1, offset=1)

    assert expected(artifacts, filters) == ["art-000", "art-001"]
    assert ([a.id for a in items], total) == (["art-001"], 2)  # type: ignore[union-attr]


IDENTITIES = {
    "anonymous": (Identity(), ["art-000", "art-001", "art-005"]),
    "named": (Identity(name="critic"), ["art-000", "art-001", "art-002", "art-005", "art-007"]),
    "labels": (
        Identity(labels=frozenset({"pii", "eu", "x"})),
        ["art-000", "art-001", "art-003", "art-005", "art-008"],
    ),
    "one_label": (
        Identity(labels=frozenset({"pii"})),
        ["art-000", "art-001", "art-003", "art-005"],
    ),
    "tenant": (Identity(tenant="acme"), ["art-000", "art-001", "art-004", "art-005"]),
    "everything": (
        Identity(name="writer", labels=frozenset({"pii"}), tenant="globex"),
        ["art-000", "art-001", "art-003", "art-005", "art-006", "art-007"],
    ),
}


@pytest.mark.parametrize("name", list(IDENTITIES))
async def test_visible_to(store: BlackboardStore, name: str) -> None:
    artifacts = await publish_dataset(store)
    identity, want = IDENTITIES[name]
    filters = FilterConfig(visible_to=identity)
    assert expected(artifacts, filters) == want

    assert await ids(store, filters) == want
    items, total = await store.query_artifacts(filters, limit=2, offset=1)
    assert ([a.id for a in items], total) == (want[1:3], len(want))  # type: ignore[union-attr]
    summary = await store.summarize_artifacts(filters)
    assert summary == summarize([a for a in artifacts if a.id in want])


async def test_visible_to_combines_with_other_filters(store: BlackboardStore) -> None:
    artifacts = await publish_dataset(store)
    filters = FilterConfig(
        visible_to=Identity(name="critic", tenant="acme"), correlation_id="corr-b"
    )

    assert await ids(store, filters) == expected(artifacts, filters) == ["art-002", "art-004"]


# -- consumptions and runs -------------------------------------------------------------------


async def consume(store: BlackboardStore, agent: str, *inputs: Artifact) -> Run:
    """Create, claim and complete one run of `agent` on the stored inputs."""
    run = Run.new(agent, inputs[0].correlation_id, [a.id for a in inputs], max_attempts=3,
                  principal=None, at=T0)  # fmt: skip
    await store.publish(art(900, id=f"trigger-{agent}", correlation_id="corr-runs"), [run])
    (claimed,) = [c for c in await store.claim_runs("w", 100, 30, {}) if c.run.id == run.id]
    assert await store.complete_run(run.id, claimed.run.fence, [], [])
    return run


async def test_embed_meta_returns_envelopes_with_consumptions(store: BlackboardStore) -> None:
    artifacts = {a.id: a for a in await publish_dataset(store)}
    await consume(store, "critic", artifacts["art-001"])
    await consume(store, "editor", artifacts["art-001"], artifacts["art-003"])

    items, total = await store.query_artifacts(
        FilterConfig(correlation_id="corr-a"), limit=3, embed_meta=True
    )

    assert total == 6
    assert all(isinstance(e, ArtifactEnvelope) for e in items)
    envelopes = {e.artifact.id: e for e in items}  # type: ignore[union-attr]
    assert list(envelopes) == ["art-000", "art-001", "art-003"]
    assert envelopes["art-000"].consumptions == ()
    assert [c.consumer for c in envelopes["art-001"].consumptions] == ["critic", "editor"]
    assert [c.consumer for c in envelopes["art-003"].consumptions] == ["editor"]
    assert [c.consumer for c in await store.get_consumptions("art-001")] == ["critic", "editor"]
    assert envelopes["art-001"].to_dict()["consumptions"][0]["consumer"] == "critic"


async def test_embed_meta_for_many_artifacts(store: BlackboardStore) -> None:
    outputs = [art(n, id=f"bulk-{n:05d}", created_at=T0) for n in range(2500)]
    for artifact in outputs:
        await store.publish(artifact)
    await consume(store, "agent", *outputs[::2])

    items, total = await store.query_artifacts(
        FilterConfig(correlation_id="corr-a"), limit=-1, embed_meta=True
    )

    assert total == len(items) == 2500
    consumed = [e.artifact.id for e in items if e.consumptions]  # type: ignore[union-attr]
    assert consumed == [a.id for a in outputs[::2]]


async def test_summarize(store: BlackboardStore) -> None:
    artifacts = await publish_dataset(store)

    assert await store.summarize_artifacts() == summarize(artifacts)
    assert await store.summarize_artifacts() == {
        "total": 9,
        "by_type": {"Idea": 3, "Draft": 3, "Review": 2, "Summary": 1},
        "by_producer": {"external": 3, "writer": 4, "critic": 2},
        "by_visibility": {"Public": 2, "Private": 2, "Labelled": 3, "Tenant": 2},
    }
    filters = FilterConfig(produced_by=frozenset({"writer"}), tags=frozenset({"red", "red%"}))
    assert await store.summarize_artifacts(filters) == summarize(
        [a for a in artifacts if filters.matches(a)]
    )
    assert await store.summarize_artifacts(FilterConfig(correlation_id="none")) == {
        "total": 0, "by_type": {}, "by_producer": {}, "by_visibility": {},
    }  # fmt: skip


# -- correlations ----------------------------------------------------------------------------


async def test_a_correlation_without_runs_is_idle(store: BlackboardStore) -> None:
    await store.publish(art(5, correlation_id="corr-new"))
    await store.publish(art(2, correlation_id="corr-new"))

    record = await store.get_correlation("corr-new")

    assert record is not None
    assert (record.state, record.pending_runs, record.artifact_count) == ("idle", 0, 2)
    assert record.started_at == T0 + timedelta(seconds=2)
    assert record.updated_at == T0 + timedelta(seconds=5)
    assert await store.get_correlation("corr-unknown") is None


async def test_errors_and_artifact_count(store: BlackboardStore) -> None:
    in_a = [a.created_at for a in await publish_dataset(store) if a.correlation_id == "corr-a"]
    errors = [
        AgentError("writer", "art-000", "ValueError: bad", "corr-a", T0 + timedelta(seconds=30)),
        AgentError("critic", None, "boom", "corr-a", T0 + timedelta(seconds=20)),
        AgentError("x", None, "elsewhere", "corr-b", T0),
    ]
    for error in errors:
        await store.record_error(error)
    await store.record_error(AgentError("flock", None, "no artifacts", "corr-empty", T0))

    record = await store.get_correlation("corr-a")
    assert record is not None
    assert record.artifact_count == 6
    assert record.errors == sorted(errors[:2], key=lambda e: e.at)  # oldest first
    assert record.state == "idle"
    # the span of its artifacts' times, whatever order they were stored in
    assert (record.started_at, record.updated_at) == (min(in_a), max(in_a))
    empty = await store.get_correlation("corr-empty")
    assert empty is not None
    assert (empty.artifact_count, empty.errors[0].message) == (0, "no artifacts")
    assert (empty.started_at, empty.updated_at) == (T0, T0)


# -- persistence and concurrency -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])  # memory keeps nothing
async def test_data_is_visible_from_a_new_store_instance(
    backend: str, store: BlackboardStore, make_store: StoreFactory
) -> None:
    artifacts = await publish_dataset(store)
    await consume(store, "writer", artifacts[0])
    pending = Run.new("critic", "corr-a", ["art-008"], max_attempts=3, principal=None, at=T0)
    await store.publish(art(50), [pending])
    stored = await ids(store)
    await store.close()

    reopened = make_store()
    try:
        assert await ids(reopened) == stored
        assert set(stored) >= {a.id for a in artifacts}
        assert await reopened.get("art-008") == artifacts[8]
        assert len(await reopened.get_consumptions(artifacts[0].id)) == 1
        record = await reopened.get_correlation("corr-a")
        assert record is not None and (record.state, record.pending_runs) == ("running", 1)
    finally:
        await reopened.close()


async def test_concurrent_writes(store: BlackboardStore) -> None:
    async def one(n: int) -> None:
        artifact = art(n, correlation_id=f"corr-{n % 3}")
        run = Run.new("a", artifact.correlation_id, [artifact.id], max_attempts=1,
                      principal=None, at=T0)  # fmt: skip
        await store.publish(artifact, [run])

    await asyncio.gather(*(one(n) for n in range(40)))

    assert (await store.query_artifacts(limit=0))[1] == 40
    record = await store.get_correlation("corr-1")
    assert record is not None and (record.artifact_count, record.pending_runs) == (13, 13)
    assert (await store.progress()).pending == 40


async def test_ping_succeeds_when_reachable(store: BlackboardStore) -> None:
    await store.ping()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])  # memory has no tables
async def test_two_processes_create_the_tables_at_once(
    backend: str, make_store: StoreFactory
) -> None:
    stores = [make_store() for _ in range(4)]  # separate engines, as separate processes have
    try:
        await asyncio.gather(*(s.publish(art(n)) for n, s in enumerate(stores)))
        assert len(await ids(stores[0])) == 4
    finally:
        for s in stores:
            await s.close()


async def test_missing_schema_is_created(postgres_url: str) -> None:
    import asyncpg

    schema = f"t_new_{uuid.uuid4().hex[:10]}"
    store = PostgresBlackboardStore(postgres_url, schema=schema)
    try:
        await store.publish(art(1))
        assert await ids(store) == ["art-001"]
    finally:
        await store.close()
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def test_postgres_on_a_closed_port_is_unavailable() -> None:
    store = PostgresBlackboardStore("postgresql://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(StoreUnavailableError):
            await store.ping()
        with pytest.raises(StoreUnavailableError):
            await store.publish(art(1))
        with pytest.raises(StoreUnavailableError):
            await store.query_artifacts(FilterConfig(correlation_id="corr-a"))
    finally:
        await store.close()


async def test_a_dropped_connection_is_unavailable_then_recovers(
    postgres_url: str, pg_schema: str
) -> None:
    import asyncpg

    app_name = f"flocktest-{uuid.uuid4().hex[:8]}"
    store = PostgresBlackboardStore(
        postgres_url,
        schema=pg_schema,
        connect_args={"server_settings": {"application_name": app_name}},
    )
    try:
        await store.publish(art(1))
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1",
                app_name,
            )
        finally:
            await admin.close()

        # The store either finds the connection dead as it uses it (the publish is
        # unavailable, and the retry reconnects) or before (a held connection the server
        # closed is replaced): never another error, and the artifact is stored once.
        try:
            await store.publish(art(2))
        except StoreUnavailableError:
            await store.publish(art(2))
        await store.publish(art(3))
        assert await ids(store) == ["art-001", "art-002", "art-003"]
    finally:
        await store.close()


async def test_a_locked_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    store = SQLiteBlackboardStore(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.publish(art(1))
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

        with pytest.raises(StoreUnavailableError):
            await store.publish(art(2))
        assert await ids(store) == ["art-001"]  # readers are not blocked (WAL)

        other.execute("ROLLBACK")
        await store.publish(art(2))
        assert await ids(store) == ["art-001", "art-002"]
    finally:
        other.close()
        await store.close()


async def held_file(path: Path) -> sqlite3.Connection:
    """A store file holding one artifact, which another connection holds exclusively (until
    it is closed): readers are shut out, as by a last connection checkpointing on close."""
    first = SQLiteBlackboardStore(path)
    await first.publish(art(1))
    await first.close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE artifacts SET type = type")
    other.execute("COMMIT")  # the exclusive lock stays
    return other


async def test_a_ping_waits_for_a_file_another_process_holds_for_a_moment(
    tmp_path: Path,
) -> None:
    # As another process's last connection closes, SQLite checkpoints the WAL under an
    # exclusive lock that even readers meet ("database is locked" at once, no busy handler
    # in place): `flock worker` starting beside a server found it, in CI.
    path = tmp_path / "board.db"
    other = await held_file(path)
    store = SQLiteBlackboardStore(path, busy_timeout=5.0)
    try:
        release = threading.Timer(0.3, other.close)  # gives the lock back
        release.start()
        await store.ping()  # waits instead of failing at once
        release.join()
        assert await ids(store) == ["art-001"]
    finally:
        other.close()
        await store.close()


async def test_opening_a_connection_to_a_held_file_does_not_stall_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "board.db"
    other = await held_file(path)
    files = SQLiteFiles(str(path), busy_timeout=5.0)  # the store's connections
    gaps: list[float] = []

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - before)

    ticker = asyncio.create_task(tick())
    release = threading.Timer(0.6, other.close)
    try:
        release.start()
        async with files.reading() as conn:  # opens the reader, whose setup waits
            result = await conn.execute(text("SELECT id FROM artifacts"))
            assert [row[0] for row in result] == ["art-001"]
        release.join()
        assert gaps and max(gaps) < 0.4  # the wait for the file was on the store's thread
    finally:
        ticker.cancel()
        other.close()
        await files.close()


# -- URLs ------------------------------------------------------------------------------------


async def test_store_from_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(store_from_url("memory://"), InMemoryBlackboardStore)

    relative = store_from_url("sqlite:///data/rel.db")
    absolute = store_from_url(f"sqlite:///{tmp_path}/abs/board.db")
    postgres = store_from_url("postgres://postgres@127.0.0.1:1/test")
    try:
        assert isinstance(relative, SQLiteBlackboardStore)
        assert Path(relative.path) == Path("data/rel.db")
        await relative.publish(art(1))
        assert (tmp_path / "data" / "rel.db").exists()
        assert isinstance(absolute, SQLiteBlackboardStore)
        assert Path(absolute.path) == tmp_path / "abs" / "board.db"
        assert isinstance(postgres, PostgresBlackboardStore)
        assert isinstance(store_from_url("postgresql://u:p@db/x"), PostgresBlackboardStore)
    finally:
        for opened in (relative, absolute, postgres):
            await opened.close()

    for bad in ["mysql://db/x", "sqlite://relative.db", "nonsense", "redis://localhost"]:
        with pytest.raises(ValueError, match="store URL"):
            store_from_url(bad)
    with pytest.raises(ValueError, match="PostgreSQL"):
        PostgresBlackboardStore("mysql://db/x")


def test_postgres_dsn_becomes_an_asyncpg_url() -> None:
    url = asyncpg_url("postgres://u:secret@db:6543/app?sslmode=require")

    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "u", "secret", "db", 6543, "app",
    )  # fmt: skip
    assert dict(url.query) == {"ssl": "require"}
