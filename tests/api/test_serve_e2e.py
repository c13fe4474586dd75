"""`flock serve` end to end: a real server process, called over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.contract import check_response_contract
from support.serve import ServeProcess, free_port, server_env

pytestmark = pytest.mark.timeout(120)

MEMORY_STORES = ("--store", "memory://", "--idempotency", "memory://")
DOCUMENT = {
    "type": "Document",
    "payload": {
        "title": "Tea",
        "text": "Tea is a drink. Tea grows on bushes. People drink tea with milk or lemon.",
    },
}

APP_SOURCE = textwrap.dedent(
    """
    from pydantic import BaseModel

    from flock import Flock, flock_type


    @flock_type(name="E2EGreeting")
    class Greeting(BaseModel):
        name: str


    @flock_type(name="E2EReply")
    class Reply(BaseModel):
        text: str


    def reply(greeting: Greeting) -> Reply:
        return Reply(text=f"hello {greeting.name}")


    def build() -> Flock:
        flock = Flock()
        flock.agent("replier").consumes(Greeting).publishes(Reply).with_engines(reply)
        return flock


    flock = build()
    """
)


@contextlib.asynccontextmanager
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real server whose every response is checked against the error contract."""
    hooks = {"response": [check_response_contract]}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, event_hooks=hooks) as client:
        yield client


async def test_demo_answers_sync_publish_over_http(tmp_path: Path) -> None:
    async with ServeProcess("--demo", *MEMORY_STORES, cwd=tmp_path) as server:
        async with http(server.url) as client:
            response = await client.post("/api/v1/artifacts/sync", json=DOCUMENT)

            assert response.status_code == 200, response.text
            body = response.json()
            assert body["completed"] is True and body["errors"] == []
            types = [a["type"] for a in body["artifacts"]]
            assert types[0] == "Document"
            assert sorted(types) == ["Document", "Keywords", "Report", "Summary"]
            (report,) = [a for a in body["artifacts"] if a["type"] == "Report"]
            assert report["produced_by"] == "reporter"
            assert report["payload"]["title"] == "Tea" and "tea" in report["payload"]["keywords"]
            assert report["correlation_id"] == body["correlation_id"]
            assert response.headers["x-correlation-id"] == body["correlation_id"]

            status = await client.get(response.headers["content-location"])
            assert status.json()["state"] == "idle" and status.json()["artifact_count"] == 4

            invalid = await client.post(
                "/api/v1/artifacts/sync", json={"type": "Document", "payload": {"title": ""}}
            )
            assert invalid.status_code == 422
            assert invalid.headers["content-type"] == "application/problem+json"
            assert {d["field"] for d in invalid.json()["details"]} == {
                "payload.title",
                "payload.text",
            }

            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"type": "Document", "payload": {"title": "big", "text": "'
                for _ in range(40):
                    yield b"x" * 65_536
                yield b'"}}'

            too_big = await client.post(
                "/api/v1/artifacts/sync",
                content=chunks(),
                headers={"Content-Type": "application/json"},
            )
            assert too_big.status_code == 413
            assert too_big.json()["code"] == "PAYLOAD_TOO_LARGE"

            docs = await client.get("/docs")
            assert docs.status_code == 200 and "/docs-assets/" in docs.text
        assert not (tmp_path / ".flock").exists()  # memory stores: no files written
    # uvicorn re-raises SIGTERM once its graceful shutdown is done
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log.read_text()


async def test_app_file_on_default_stores_survives_a_restart(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP_SOURCE)
    key = {"Idempotency-Key": "greet-ada"}
    greeting = {"type": "E2EGreeting", "payload": {"name": "ada"}}

    async with ServeProcess("app.py", cwd=tmp_path) as server, http(server.url) as client:
        agents = (await client.get("/api/v1/agents")).json()["agents"]
        assert [a["name"] for a in agents] == ["replier"]
        first = await client.post("/api/v1/artifacts/sync", json=greeting, headers=key)
        assert first.status_code == 200, first.text
        assert first.json()["completed"] is True
        assert [a["payload"] for a in first.json()["artifacts"]] == [
            {"name": "ada"},
            {"text": "hello ada"},
        ]
    assert (tmp_path / ".flock" / "app" / "blackboard.db").is_file()
    assert (tmp_path / ".flock" / "app" / "idempotency.db").is_file()
    cid = first.json()["correlation_id"]

    async with ServeProcess("app.py", cwd=tmp_path) as server, http(server.url) as client:
        listed = (await client.get("/api/v1/artifacts")).json()
        assert [a["id"] for a in listed["items"]] == [a["id"] for a in first.json()["artifacts"]]
        status = (await client.get(f"/api/v1/correlations/{cid}")).json()
        assert status["state"] == "idle" and status["artifact_count"] == 2

        replay = await client.post("/api/v1/artifacts/sync", json=greeting, headers=key)
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.content == first.content

        again = await client.post(
            "/api/v1/artifacts/sync", json={"type": "E2EGreeting", "payload": {"name": "bo"}}
        )
        assert again.json()["completed"] is True
        assert (await client.get("/api/v1/artifacts")).json()["pagination"]["total"] == 4


async def test_module_attr_reference_to_a_factory(tmp_path: Path) -> None:
    (tmp_path / "greeter.py").write_text(APP_SOURCE)
    async with (
        ServeProcess("greeter:build", *MEMORY_STORES, cwd=tmp_path) as server,
        http(server.url) as client,
    ):
        response = await client.post(
            "/api/v1/artifacts/sync", json={"type": "E2EGreeting", "payload": {"name": "cy"}}
        )
        assert response.json()["artifacts"][-1]["payload"] == {"text": "hello cy"}


def test_serve_without_app_or_with_sqlite_workers_exits_with_a_reason(tmp_path: Path) -> None:
    """A real process: non-zero exit, a one-line reason, no traceback, no files written."""
    cases = [((), "give either an APP"), (("--demo", "--workers", "2"), "needs shared stores")]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "flock.cli", "serve", *args, "--port", str(free_port())],
            cwd=tmp_path,
            env=server_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in cases
    ]
    try:
        for process, (args, message) in zip(processes, cases, strict=True):
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 2, args
            assert message in stderr, (args, stderr)
            assert "Traceback" not in stderr, (args, stderr)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert not (tmp_path / ".flock").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("app.py", "--demo"), "give either an APP"),
        (("missing.py",), "no such file"),
        (("--demo", "--workers", "2", *MEMORY_STORES), "--workers > 1 needs shared stores"),
        (
            ("--demo", "--workers", "2", "--store", "sqlite:///x.db", "--idempotency", "redis://h"),
            "--workers > 1 needs shared stores",
        ),
    ],
)
def test_serve_refuses_bad_configurations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str
) -> None:
    """The same checks in-process (the CLI itself, through click's runner; no server starts)."""
    from typer.testing import CliRunner

    from flock.cli import app

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("FLOCK_")]:
        monkeypatch.delenv(name)
    (tmp_path / "app.py").write_text(APP_SOURCE)
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / ".flock").exists()


async def test_the_demo_gives_each_of_40_concurrent_documents_one_report(
    tmp_path: Path,
) -> None:
    """The demo's Report is an AND gate over Summary and Keywords, made side by side: 40
    documents sent 16 at a time through a real server (its default SQLite stores) each get
    exactly one Report."""
    await _forty_documents(tmp_path)


async def test_the_demo_gives_one_report_each_on_postgres(
    tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    await _forty_documents(tmp_path, "--store", f"{postgres_url}?schema={pg_schema}")


async def _forty_documents(tmp_path: Path, *stores: str) -> None:
    async with ServeProcess("--demo", *stores, cwd=tmp_path) as server, http(server.url) as client:
        gate = asyncio.Semaphore(16)

        async def send(n: int) -> dict[str, Any]:
            document = {
                "type": "Document",
                "payload": {"title": f"doc {n}", "text": f"Document {n} is about tea {n}."},
            }
            async with gate:
                response = await client.post(
                    "/api/v1/artifacts/sync", json={**document, "timeout": 60}
                )
            assert response.status_code == 200, response.text
            return dict(response.json())

        answers = await asyncio.gather(*(send(n) for n in range(40)))
        for n, answer in enumerate(answers):
            assert answer["completed"] is True and answer["errors"] == [], answer
            reports = [a for a in answer["artifacts"] if a["type"] == "Report"]
            assert len(reports) == 1, answer
            assert reports[0]["payload"]["title"] == f"doc {n}"
        listing = await client.get("/api/v1/artifacts", params={"type": "Report", "limit": 100})
        assert listing.json()["pagination"]["total"] == 40
        agents = (await client.get("/api/v1/agents")).json()["agents"]
        assert {a["name"]: a["open_groups"] for a in agents}["reporter"] == 0
