"""Logs: agent failures once, with their traceback, at WARNING; `--log-format json` (and
FLOCK_LOG_FORMAT) for `flock serve` and `flock worker`, one JSON object per line naming the
correlation, run and agent where known."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from flock import Flock, flock_type, logs
from flock.core.store.protocol import RunFilter
from flock.logs import JSONFormatter, bind, configure, current, parse_format, unbind
from support.durable import WorkerProcess
from support.polling import poll_until
from support.serve import ServeProcess, server_env

FAILING_APP = """
from pydantic import BaseModel

from flock import Flock, flock_type


@flock_type(name="LogJob")
class Job(BaseModel):
    n: int


@flock_type(name="LogDone")
class Done(BaseModel):
    n: int


def work(job: Job) -> Done:
    raise RuntimeError(f"boom {job.n}")


flock = Flock()
flock.agent("breaker").consumes(Job).publishes(Done).with_engines(work).retry(max_attempts=1)
"""


@flock_type(name="LogTestJob")
class Job(BaseModel):
    n: int


@flock_type(name="LogTestDone")
class Done(BaseModel):
    n: int


def _explode(job: Job) -> Done:
    raise ValueError(f"cannot handle {job.n}")


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a JSON-format log, parsed (a line that is not JSON fails the test)."""
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            assert {"time", "level", "logger", "message"} <= entry.keys(), line
            entries.append(entry)
    return entries


def test_json_formatter_writes_one_object_with_the_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    log = logging.getLogger("flock.test.logs")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("before %s", "binding")
        token = bind({"correlation_id": "c-1", "run_id": "r-1", "agent": "a"})
        try:
            try:
                raise KeyError("missing")
            except KeyError:
                log.warning("it failed: %s", "line\nbreak", exc_info=True)
            log.info("explicit", extra={"correlation_id": "c-2"})
        finally:
            unbind(token)
        log.info("after")
    finally:
        log.removeHandler(handler)
        log.propagate = True

    first, failed, explicit, after = _json_lines(stream.getvalue())
    assert first["message"] == "before binding" and first["level"] == "INFO"
    assert first["logger"] == "flock.test.logs" and first["time"].endswith("Z")
    assert not {"correlation_id", "run_id", "agent"} & first.keys()
    assert failed["message"] == "it failed: line\nbreak" and failed["level"] == "WARNING"
    assert (failed["correlation_id"], failed["run_id"], failed["agent"]) == ("c-1", "r-1", "a")
    assert "KeyError: 'missing'" in failed["exception"]
    assert "Traceback" in failed["exception"]
    assert explicit["correlation_id"] == "c-2" and explicit["run_id"] == "r-1"
    assert "correlation_id" not in after


def test_parse_format_refuses_unknown_formats() -> None:
    assert parse_format("JSON") == "json" and parse_format("text") == "text"
    with pytest.raises(ValueError, match="text or json"):
        parse_format("xml")


def test_configure_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    earlier = [handler for _, handler in logs._configured]  # an earlier test's configure
    saved = [h for h in root.handlers if h not in earlier]
    level = root.level
    try:
        assert configure("warning", "json") == "json"
        ours = [h for h in root.handlers if h not in saved]
        assert [type(h.formatter) for h in ours] == [JSONFormatter]
        assert root.level == logging.WARNING
        configure("info", "text")
        ours = [h for h in root.handlers if h not in saved]
        assert len(ours) == 1 and not isinstance(ours[0].formatter, JSONFormatter)
        assert all(h in root.handlers for h in saved)  # pytest's capture is still there
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)
        root.setLevel(level)


async def test_an_agent_failure_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flock = Flock()
    flock.agent("exploder").consumes(Job).publishes(Done).with_engines(_explode).retry(
        max_attempts=2, initial_delay=0
    )
    caplog.set_level(logging.DEBUG)
    try:
        artifact = await flock.publish(Job(n=7))
        await flock.run_until_idle(correlation_id=artifact.correlation_id)
    finally:
        await flock.close()

    failures = [
        r
        for r in caplog.records
        if "cannot handle 7" in r.getMessage()
        or (r.exc_info and "cannot handle 7" in str(r.exc_info[1]))
    ]
    assert len(failures) == 2, [(r.name, r.levelname, r.getMessage()) for r in failures]
    for attempt, record in enumerate(failures, start=1):
        assert record.levelno == logging.WARNING and record.name == "flock.worker"
        assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
        assert f"attempt {attempt} of 2" in record.getMessage()
        assert "exploder" in record.getMessage()


def _write_app(directory: Path) -> Path:
    path = directory / "failing_app.py"
    path.write_text(FAILING_APP)
    return path


async def test_serve_writes_json_logs_with_the_run_context(tmp_path: Path) -> None:
    app = _write_app(tmp_path)
    stores = ("--store", "memory://", "--idempotency", "memory://")
    async with (
        ServeProcess(str(app), *stores, "--log-format", "json", cwd=tmp_path) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        answer = await client.post(
            "/api/v1/artifacts/sync", json={"type": "LogJob", "payload": {"n": 1}}
        )
        direct = await client.post(
            "/api/v1/agents/breaker/run",
            json={"inputs": [{"type": "LogJob", "payload": {"n": 2}}]},
            headers={"X-Correlation-ID": "direct-request-1"},
        )

        async def failures_logged() -> list[dict[str, Any]] | None:
            entries = _json_lines(server.log.read_text())
            found = [e for e in entries if "boom" in e.get("exception", "")]
            return found if len(found) >= 2 else None

        await poll_until(failures_logged, seconds=30, what="both failures in the log")
    entries = _json_lines(server.log.read_text())  # every line, shutdown included, is JSON

    body = answer.json()
    (error,) = body["errors"]
    run_failures = [e for e in entries if "boom 1" in e.get("exception", "")]
    assert len(run_failures) == 1, run_failures
    (logged,) = run_failures
    assert logged["level"] == "WARNING" and logged["logger"] == "flock.worker"
    assert logged["correlation_id"] == body["correlation_id"]
    assert logged["run_id"] == error["run_id"]
    assert logged["agent"] == "breaker"
    assert "Traceback (most recent call last)" in logged["exception"]

    assert direct.status_code == 200 and direct.json()["errors"]
    (direct_logged,) = [e for e in entries if "boom 2" in e.get("exception", "")]
    assert direct_logged["level"] == "WARNING"
    assert direct_logged["correlation_id"] == "direct-request-1"
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's lines too


async def test_worker_writes_json_logs_from_the_environment(tmp_path: Path) -> None:
    app = _write_app(tmp_path)
    store = f"sqlite:///{tmp_path / 'blackboard.db'}"
    worker = WorkerProcess(app, store, tmp_path / "worker.log", FLOCK_LOG_FORMAT="json")
    try:
        await worker.wait_ready()
        async with (
            ServeProcess(
                str(app),
                "--store",
                store,
                "--idempotency",
                "memory://",
                "--no-worker",
                cwd=tmp_path,
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            published = await client.post(
                "/api/v1/artifacts", json={"type": "LogJob", "payload": {"n": 3}}
            )
            correlation_id = published.json()["correlation_id"]

            async def failure_logged() -> dict[str, Any] | None:
                entries = _json_lines(worker.output())
                found = [e for e in entries if "boom 3" in e.get("exception", "")]
                return found[0] if found else None

            logged = await poll_until(failure_logged, seconds=60, what="the failure logged")
            runs = await client.get("/api/v1/runs", params={"correlation_id": correlation_id})
            (run,) = runs.json()["items"]
    finally:
        worker.stop()

    assert logged["correlation_id"] == correlation_id
    assert logged["run_id"] == run["id"] and logged["agent"] == "breaker"
    assert logged["level"] == "WARNING" and logged["logger"] == "flock.worker"
    assert _json_lines(worker.output())  # every line is JSON


def test_an_unknown_log_format_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flock", "serve", "--demo", "--log-format", "xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: bad setting --log-format=xml: input should be 'text' or 'json'"
    ]


def test_a_startup_failure_is_a_json_line_with_json_logs(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "flock", "serve", "--demo", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=server_env(FLOCK_LOG_FORMAT="json"),
        )

    assert result.returncode == 2
    (entry,) = _json_lines(result.stderr)
    assert entry["level"] == "ERROR"
    assert entry["message"].startswith(f"error: cannot listen on 127.0.0.1:{port}")


async def test_engines_log_in_the_context_of_their_run() -> None:
    seen: list[dict[str, Any]] = []

    def sync_engine(job: Job) -> Done:  # runs on an engine thread
        seen.append(dict(current()))
        return Done(n=job.n)

    async def async_engine(job: Job) -> Done:
        seen.append(dict(current()))
        return Done(n=job.n)

    flock = Flock()
    flock.agent("sync-one").consumes(Job).publishes(Done).with_engines(sync_engine)
    flock.agent("async-one").consumes(Job).publishes(Done).with_engines(async_engine)
    try:
        artifact = await flock.publish(Job(n=1))
        await flock.run_until_idle(correlation_id=artifact.correlation_id)
        listed, _ = await flock.list_runs(RunFilter(correlation_id=artifact.correlation_id))
        runs = {run.agent: run for run in listed}
    finally:
        await flock.close()

    assert sorted(c["agent"] for c in seen) == ["async-one", "sync-one"]
    for context in seen:
        assert context["correlation_id"] == artifact.correlation_id
        assert context["run_id"] == runs[context["agent"]].id
    assert current() == {}  # nothing leaked into the test's own context
