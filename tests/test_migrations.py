"""Schema migrations: a store written by the previous release opens, keeps its data and
serves new cascades after the upgrade; a database newer than the code is refused.

The previous release (commit 31369ce, schema version 1: no version table, no runs table)
is taken from this repository's history with `git archive` and served as it was, by
`python -m flock.cli serve` with that tree first on its PYTHONPATH. It answers one keyed
sync call; then the current code opens the same stores. Its one dependency that this
environment no longer installs, `swagger-ui-bundle` (the assets of its /docs page, which
nothing here requests), is stood in for by an empty package.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from flock.core.store.migrations import SchemaDefinition, SchemaVersionError, Step, baseline
from flock.core.store.sql import SQLiteBlackboardStore
from flock.core.store.sql_schema import SCHEMA_VERSION
from support.apps import job_app, write_app
from support.serve import ServeProcess, free_port, server_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_RELEASE = "31369ce"
JOB, DONE = "MigrationJob", "MigrationDone"
APP = job_app(job=JOB, done=DONE)
SYNC = "/api/v1/artifacts/sync"
HANG_GUARD_SECONDS = 120


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `src` folder of the previous release, extracted from git."""
    target = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "src"],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"`git archive {PREVIOUS_RELEASE}` failed (a shallow clone?): {archive.stderr!r}"
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    assert (target / "src" / "flock" / "cli.py").is_file()
    shim = target / "src" / "swagger_ui_bundle"
    (shim / "assets").mkdir(parents=True)
    (shim / "__init__.py").write_text(f"swagger_ui_path = {str(shim / 'assets')!r}\n")
    return target / "src"


def flock_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flock", *args],
        cwd=cwd,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )


def sync_call(base_url: str, n: int, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    body = {"type": JOB, "payload": {"n": n}, "timeout": 30}
    return httpx.post(f"{base_url}{SYNC}", json=body, headers=headers, timeout=60)


def payloads(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    assert response.json()["completed"] is True, response.text
    return sorted(a["payload"]["n"] for a in response.json()["artifacts"])


def serve_old_release(
    previous_release: Path, app: Path, store: str, idempotency: str
) -> httpx.Response:
    """Serve with the previous release; one keyed sync call; stop. Its response."""
    old = ServeProcess(
        app.name,
        "--store",
        store,
        "--idempotency",
        idempotency,
        cwd=app.parent,
        log=app.parent / "old-release.log",
        env={"PYTHONPATH": str(previous_release)},
    )
    with old:
        response = sync_call(old.url, 1, key="written-by-the-previous-release")
        assert payloads(response) == [1, 2]
    return response


def check_served_after_upgrade(server: ServeProcess, first: httpx.Response) -> None:
    """The old data is there, the old key replays, and a new cascade runs."""
    correlation = first.json()["correlation_id"]
    listed = httpx.get(
        f"{server.url}/api/v1/artifacts", params={"correlation_id": correlation}, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert sorted(a["payload"]["n"] for a in listed.json()["items"]) == [1, 2]
    status = httpx.get(f"{server.url}/api/v1/correlations/{correlation}", timeout=30)
    assert status.status_code == 200, status.text
    # The key's record survived: the retry is not run anew. (Since the previous release the
    # fingerprint of a body includes the visibility the caller's artifact gets, so the
    # same body under an old key is a conflict, not a replay.)
    replay = sync_call(server.url, 1, key="written-by-the-previous-release")
    if replay.status_code == 409:
        assert replay.json()["code"] == "IDEMPOTENCY_CONFLICT", replay.text
    else:
        assert replay.headers.get("idempotent-replayed") == "true", replay.text
        assert replay.json() == first.json()
    assert payloads(sync_call(server.url, 10)) == [10, 11]
    assert payloads(sync_call(server.url, 20, key=f"new-{uuid.uuid4().hex}")) == [20, 21]


def test_a_sqlite_store_of_the_previous_release_is_upgraded_when_served(
    previous_release: Path, tmp_path: Path
) -> None:
    app = write_app(tmp_path, "migration_app.py", APP)
    board, idem = tmp_path / "data" / "blackboard.db", tmp_path / "data" / "idempotency.db"
    urls = ("--store", f"sqlite:///{board}", "--idempotency", f"sqlite:///{idem}")
    first = serve_old_release(previous_release, app, urls[1], urls[3])
    with sqlite3.connect(board) as db:  # the previous release's schema: no version table
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "artifacts" in tables and "flock_schema" not in tables and "runs" not in tables

    current = flock_cli("db", "current", urls[0], urls[1], cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert f"schema version 1, this Flock's is {SCHEMA_VERSION}" in current.stdout

    with ServeProcess(app.name, *urls, cwd=tmp_path) as server:
        assert f"schema upgraded from version 1 to {SCHEMA_VERSION}" in server.output()
        check_served_after_upgrade(server, first)
    current = flock_cli("db", "current", urls[0], urls[1], urls[2], urls[3], cwd=tmp_path)
    assert current.stdout.count("(current)") == 2, current.stdout


@pytest.mark.services
def test_a_postgres_store_of_the_previous_release_needs_an_explicit_upgrade(
    previous_release: Path, tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    app = write_app(tmp_path, "migration_app.py", APP)
    store = f"{postgres_url}?schema={pg_schema}&sslmode=disable"
    idem = f"{postgres_url}?schema={pg_schema}&sslmode=prefer"
    first = serve_old_release(
        previous_release,
        app,
        f"{postgres_url}?schema={pg_schema}",
        f"{postgres_url}?schema={pg_schema}",
    )
    urls = ("--store", store, "--idempotency", idem)

    refused = subprocess.run(
        [sys.executable, "-m", "flock", "serve", app.name, *urls, "--port", str(free_port())],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.stderr  # the log lines before it say what it serves
    assert "schema version 1" in errors[0] and "flock db upgrade" in errors[0]
    assert "listening on" not in refused.stderr

    upgraded = flock_cli("db", "upgrade", *urls, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"blackboard store: schema upgraded from version 1 to {SCHEMA_VERSION}" in (
        upgraded.stdout
    )
    assert "idempotency store: schema version 1 (current)" in upgraded.stdout
    with ServeProcess(app.name, *urls, cwd=tmp_path) as server:
        check_served_after_upgrade(server, first)


@pytest.mark.services
def test_serve_migrate_upgrades_postgres_itself(
    previous_release: Path, tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    app = write_app(tmp_path, "migration_app.py", APP)
    url = f"{postgres_url}?schema={pg_schema}"
    first = serve_old_release(previous_release, app, url, url)
    with ServeProcess(
        app.name, "--store", url, "--idempotency", url, "--migrate", cwd=tmp_path
    ) as server:
        assert f"schema upgraded from version 1 to {SCHEMA_VERSION}" in server.output()
        check_served_after_upgrade(server, first)


async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    board = tmp_path / "blackboard.db"
    store = SQLiteBlackboardStore(board)
    await store.prepare()
    await store.close()
    with sqlite3.connect(board) as db:
        db.execute("UPDATE flock_schema SET version = 99")

    reopened = SQLiteBlackboardStore(board)
    with pytest.raises(
        SchemaVersionError, match=f"version 99, newer than this Flock's {SCHEMA_VERSION}"
    ):
        await reopened.query_artifacts()
    await reopened.close()

    url = f"sqlite:///{board}"
    serve = ["serve", "--demo", "--store", url, "--port", str(free_port())]
    for command in (serve, ["db", "upgrade", "--store", url]):
        result = flock_cli(*command, cwd=tmp_path)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "newer than this Flock" in errors[0], result.stderr
        assert "listening on" not in result.stderr


def test_steps_are_numbered_in_order() -> None:
    def definition(*versions: int) -> SchemaDefinition:
        return SchemaDefinition(
            name="test store",
            version_table="t_schema",
            lock_id=1,
            create=baseline,
            steps=[Step(v, f"v{v}", baseline) for v in versions],
            legacy_version=lambda conn, schema: None,
        )

    assert definition(1, 2, 3).latest == 3
    for wrong in ((2,), (1, 3), (1, 2, 2)):
        with pytest.raises(ValueError, match="in order"):
            definition(*wrong)
