"""`flock.client` against a real `flock serve --demo` process, through a fault-injecting proxy."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from flock.api.auth import APIKeyring
from flock.client import (
    AsyncFlockClient,
    BatchItem,
    FlockAPIError,
    FlockClient,
    FlockTransportError,
    RetryEvent,
)
from flock.registry import TypeRegistry
from support.serve import ServeProcess

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Tea is a drink. Tea grows on bushes. People drink tea with milk or lemon."

# The demo's types, registered in a registry of this module's own (the global one is shared
# by every test module of the process).
REGISTRY = TypeRegistry()


class Document(BaseModel):
    title: str
    text: str


class Summary(BaseModel):
    title: str
    summary: str


class Keywords(BaseModel):
    title: str
    keywords: list[str]


class Report(BaseModel):
    title: str
    summary: str
    keywords: list[str]


for _model in (Document, Summary, Keywords, Report):
    REGISTRY.register(_model)


# -- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cwd = tmp_path_factory.mktemp("client-server")
    with ServeProcess(
        "--demo", "--store", "memory://", "--idempotency", "memory://", cwd=cwd
    ) as served:
        yield served.url


# -- a proxy that misbehaves on cue ------------------------------------------------------------


@dataclass
class Exchange:
    """One request the proxy saw, and what it did with it."""

    method: str
    target: str
    idempotency_key: str | None
    fault: str | None
    upstream_status: int | None = None


_SYNTHETIC = {
    "503": (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
        b"Content-Type: application/problem+json\r\nConnection: close\r\nContent-Length: %d\r\n"
        b"\r\n%s"
    )
    % (
        len(body := b'{"code":"SERVICE_UNAVAILABLE","message":"try later","retryable":true}'),
        body,
    ),
    "500-empty": b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n",
}


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message (head, body), or None once the peer closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    headers = _headers(head)
    assert "chunked" not in headers.get("transfer-encoding", ""), "the proxy needs lengths"
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head, body


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}


class FaultProxy:
    """A TCP proxy to the server, speaking just enough HTTP/1.1 to fail on purpose.

    `faults` are used up one per request, in order (None: forward it):
    - "drop": forward the request, read the server's whole response, then close the client's
      connection without sending it (the call happened; the caller never heard).
    - "503": answer a problem-document 503 with `Retry-After: 1` without forwarding.
    - "500-empty": answer a 500 without a body without forwarding.
    """

    def __init__(self, upstream: str, faults: Sequence[str | None] = ()) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.faults = list(faults)
        self.log: list[Exchange] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        handlers: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await self._relay(reader, writer)
            finally:
                handlers.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (request := await _read_message(reader)) is not None:
                head, body = request
                method, target, _ = head.decode("latin-1").split(" ", 2)
                fault = self.faults.pop(0) if self.faults else None
                exchange = Exchange(method, target, _headers(head).get("idempotency-key"), fault)
                self.log.append(exchange)
                if fault in _SYNTHETIC:
                    writer.write(_SYNTHETIC[fault])
                    await writer.drain()
                    return
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                upstream[1].write(head + body)
                await upstream[1].drain()
                response = await _read_message(upstream[0])
                assert response is not None, "the server closed the connection"
                exchange.upstream_status = int(response[0].split(b" ", 2)[1])
                if fault == "drop":
                    return
                writer.write(response[0] + response[1])
                await writer.drain()
        finally:
            writer.close()
            if upstream is not None:
                upstream[1].close()


# -- helpers -------------------------------------------------------------------------------------


def client_for(url: str, events: list[RetryEvent] | None = None, **options: Any) -> FlockClient:
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.05)
    hook = events.append if events is not None else None
    return FlockClient(url, registry=REGISTRY, on_retry=hook, **options)


def async_client_for(
    url: str, events: list[RetryEvent] | None = None, **options: Any
) -> AsyncFlockClient:
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.05)
    hook = events.append if events is not None else None
    return AsyncFlockClient(url, registry=REGISTRY, on_retry=hook, **options)


def documents_titled(url: str, title: str) -> list[Any]:
    """Every Document with this title the server stored (asked directly, not via a proxy)."""
    with client_for(url) as direct:
        return [a for a in direct.list_artifacts(type="Document") if a.payload["title"] == title]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- retries answered by replays ------------------------------------------------------------


def test_a_dropped_publish_response_is_retried_and_replayed(server: str) -> None:
    title = unique("drop")
    with FaultProxy(server, ["drop"]) as proxy, client_for(proxy.url) as client:
        result = client.publish(Document(title=title, text=TEXT))

    assert result.replayed is True
    first, second = proxy.log
    assert first.fault == "drop" and first.upstream_status == 200  # it did run, once
    assert first.idempotency_key == second.idempotency_key == result.idempotency_key
    (stored,) = documents_titled(server, title)
    assert stored.id == result.artifact_id and stored.correlation_id == result.correlation_id


async def test_a_dropped_sync_response_is_retried_and_replayed(server: str) -> None:
    title = unique("drop-sync")
    events: list[RetryEvent] = []
    with FaultProxy(server, ["drop"]) as proxy:
        async with async_client_for(proxy.url, events) as client:
            result = await client.publish_sync("Document", {"title": title, "text": TEXT})

    assert result.replayed is True and result.completed is True
    assert [e.error.code for e in events] == ["TRANSPORT_ERROR"]
    assert events[0].idempotency_key == result.idempotency_key
    assert [e.idempotency_key for e in proxy.log] == [result.idempotency_key] * 2
    inputs = [a for a in result.artifacts if a.type == "Document"]
    assert len(inputs) == 1 and result.artifacts[0].type == "Document"
    (report,) = result.models_of(Report)
    assert report.title == title and "tea" in report.keywords
    assert {type(m) for m in result.models()} == {Document, Summary, Keywords, Report}
    assert len(documents_titled(server, title)) == 1


def test_a_dropped_batch_response_is_retried_and_replayed(server: str) -> None:
    titles = [unique("batch-drop") for _ in range(3)]
    with FaultProxy(server, ["drop"]) as proxy, client_for(proxy.url) as client:
        result = client.publish_batch(
            [Document(title=t, text=TEXT) for t in titles], wait=True, timeout=20
        )

    assert result.replayed is True and result.ok
    assert [item.status for item in result] == ["accepted"] * 3
    assert all(item.completed for item in result)
    assert [item.models_of(Document)[0].title for item in result] == titles
    assert len({e.idempotency_key for e in proxy.log}) == 1
    for title in titles:
        assert len(documents_titled(server, title)) == 1


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_503_is_retried_no_sooner_than_retry_after(server: str, flavour: str) -> None:
    title = unique("busy")
    events: list[RetryEvent] = []
    with FaultProxy(server, ["503"]) as proxy:
        if flavour == "sync":
            with client_for(proxy.url, events) as client:
                result = client.publish(Document(title=title, text=TEXT))
        else:
            async with async_client_for(proxy.url, events) as aclient:
                result = await aclient.publish(Document(title=title, text=TEXT))

    (event,) = events
    assert event.error.code == "SERVICE_UNAVAILABLE" and event.error.status == 503
    assert event.delay >= 1.0  # Retry-After: 1, although the backoff alone is <= 0.05 s
    assert event.attempt == 1 and event.path == "/api/v1/artifacts"
    assert result.replayed is False  # the 503 never reached the server
    assert [e.idempotency_key for e in proxy.log] == [result.idempotency_key] * 2
    assert len(documents_titled(server, title)) == 1


def test_a_retry_after_beyond_the_limit_is_not_waited_for(server: str) -> None:
    events: list[RetryEvent] = []
    with (
        FaultProxy(server, ["503"]) as proxy,
        client_for(proxy.url, events, max_retry_after=0.5) as client,
        pytest.raises(FlockAPIError) as raised,
    ):
        client.publish(Document(title=unique("patient"), text=TEXT))

    assert raised.value.code == "SERVICE_UNAVAILABLE" and raised.value.retryable is True
    assert events == [] and len(proxy.log) == 1  # Retry-After: 1 > 0.5: raised, not retried


def test_a_5xx_without_a_body_is_retried(server: str) -> None:
    events: list[RetryEvent] = []
    with FaultProxy(server, ["500-empty"]) as proxy, client_for(proxy.url, events) as client:
        result = client.publish_sync(Document(title=unique("empty"), text=TEXT))

    assert result.completed is True
    assert [(e.error.code, e.error.status) for e in events] == [("HTTP_ERROR", 500)]


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_non_retryable_error_is_raised_at_once(server: str, flavour: str) -> None:
    events: list[RetryEvent] = []
    with FaultProxy(server) as proxy:
        if flavour == "sync":
            with client_for(proxy.url, events) as client, pytest.raises(FlockAPIError) as caught:
                client.publish("NoSuchType", {})
        else:
            async with async_client_for(proxy.url, events) as aclient:
                with pytest.raises(FlockAPIError) as caught:
                    await aclient.publish("NoSuchType", {})

    error = caught.value
    assert (error.code, error.status, error.retryable) == ("NOT_FOUND", 404, False)
    assert error.correlation_id and "NoSuchType" in error.message
    assert events == [] and len(proxy.log) == 1


def test_validation_errors_carry_their_details(server: str) -> None:
    with client_for(server) as client, pytest.raises(FlockAPIError) as caught:
        client.publish_sync("Document", {"title": "only a title"})

    assert caught.value.code == "VALIDATION_ERROR" and caught.value.status == 422
    assert [d["field"] for d in caught.value.details] == ["payload.text"]


def test_retries_stop_when_the_budget_is_spent(server: str) -> None:
    title = unique("budget")
    events: list[RetryEvent] = []
    with (
        FaultProxy(server, ["drop"] * 3) as proxy,
        client_for(proxy.url, events, max_retries=2) as client,
        pytest.raises(FlockTransportError) as caught,
    ):
        client.publish(Document(title=title, text=TEXT))

    assert caught.value.code == "TRANSPORT_ERROR" and caught.value.retryable
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    assert [e.attempt for e in events] == [1, 2] and len(proxy.log) == 3
    assert len({e.idempotency_key for e in proxy.log}) == 1
    assert len(documents_titled(server, title)) == 1  # three attempts, one execution


def test_a_callers_idempotency_key_is_used_across_calls(server: str) -> None:
    key = unique("caller-key")
    title = unique("keyed")
    with client_for(server) as client:
        first = client.publish(Document(title=title, text=TEXT), idempotency_key=key)
        second = client.publish(Document(title=title, text=TEXT), idempotency_key=key)
        with pytest.raises(FlockAPIError) as caught:
            client.publish(Document(title="other", text=TEXT), idempotency_key=key)

    assert first.idempotency_key == key and not first.replayed
    assert second.replayed and second.artifact_id == first.artifact_id
    assert caught.value.code == "IDEMPOTENCY_CONFLICT" and not caught.value.retryable


# -- queries ---------------------------------------------------------------------------------


def test_list_artifacts_pages_through_every_result(server: str) -> None:
    tag = unique("paged")
    with client_for(server) as client:
        batch = client.publish_batch(
            [BatchItem("Document", {"title": f"p{i}", "text": TEXT}, tags=[tag]) for i in range(7)]
        )
    published = {item.artifact_id for item in batch}

    with FaultProxy(server) as proxy, client_for(proxy.url) as client:
        listed = list(client.list_artifacts(type=Document, tag=tag, page_size=3))
        limited = list(client.list_artifacts(type="Document", tag=tag, page_size=3, limit=5))

    assert {a.id for a in listed} == published and len(listed) == 7
    assert len(limited) == 5 and {a.id for a in limited} <= published
    offsets = [re.search(r"offset=(\d+)", e.target).group(1) for e in proxy.log]  # type: ignore[union-attr]
    assert offsets == ["0", "3", "6", "0", "3"]
    assert "limit=2" in proxy.log[-1].target


async def test_async_list_artifacts_pages_too(server: str) -> None:
    tag = unique("apaged")
    async with async_client_for(server) as client:
        batch = await client.publish_batch(
            [BatchItem(Document(title=f"a{i}", text=TEXT), tags=[tag]) for i in range(5)]
        )
        listed = [a async for a in client.list_artifacts(type=Document, tag=tag, page_size=2)]
        (first,) = [a async for a in client.list_artifacts(type=Document, tag=tag, limit=1)]

    published = {item.artifact_id for item in batch}
    assert len(listed) == 5 and {a.id for a in listed} == published
    assert first.id in published


async def test_get_artifact_and_correlation(server: str) -> None:
    async with async_client_for(server) as client:
        result = await client.publish_sync(Document(title=unique("get"), text=TEXT))
        artifact = await client.get_artifact(result.artifacts[0].id)
        status = await client.correlation(result.correlation_id)
        with pytest.raises(FlockAPIError) as missing:
            await client.get_artifact("no-such-artifact")

    assert artifact.id == result.artifacts[0].id and artifact.payload == result.artifacts[0].payload
    assert status.idle and status.pending_runs == 0
    assert status.artifact_count == len(result.artifacts) == 4
    assert missing.value.code == "NOT_FOUND"


def test_batch_items_fail_alone_and_carry_errors(server: str) -> None:
    key = unique("item-key")
    items = [
        BatchItem(Document(title=unique("ok"), text=TEXT), idempotency_key=key),
        {"type": "Document", "payload": {"title": "no text"}},
    ]
    with client_for(server) as client:
        first = client.publish_batch(items)
        second = client.publish_batch(items)

    assert [i.status for i in first] == ["accepted", "failed"]
    assert not first.ok and first.failed == [first[1]]
    error = first[1].error
    assert error is not None and error.code == "VALIDATION_ERROR"
    assert [d["field"] for d in error.details] == ["items[1].payload.text"]
    assert second[0].status == "duplicate" and second[0].artifact_id == first[0].artifact_id


def test_closing_the_client_closes_its_connections(server: str) -> None:
    with client_for(server) as client:
        client.publish(Document(title=unique("close"), text=TEXT))
    with pytest.raises(RuntimeError):
        client.publish(Document(title=unique("closed"), text=TEXT))


# -- the example and the docs run as written -----------------------------------------------------


def test_the_client_example_runs(server: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client_usage.py")],
        env={**os.environ, "FLOCK_URL": server},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "report:" in result.stdout and "failed items: 1" in result.stdout


def _doc_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "calling-flock.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_docs_python_examples_run(server: str, tmp_path: Path) -> None:
    blocks = _doc_blocks("python")
    assert blocks
    script = tmp_path / "docs_examples.py"
    script.write_text("\n".join(blocks))
    result = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "FLOCK_URL": server},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# In a block's commented sample output: `"key":"text"`, `"key":true|false|null`, `"key":123`
# (not "..." placeholders, not floats such as durations), and HTTP header lines.
_SAMPLE_FIELD = re.compile(r'"\w+":\s*(?:"[^".]+"|true|false|null|\d+(?![\d.]))')
_SAMPLE_HEADER = re.compile(r"^(HTTP/1\.1 \d+ \w+|[a-z-]+: \S+)$", re.M)


def _promised(block: str) -> list[str]:
    """What the sample output in a block's `# ...` comments says the command prints."""
    sample = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))
    fields = [re.sub(r":\s+", ":", f) for f in _SAMPLE_FIELD.findall(sample)]
    return fields + _SAMPLE_HEADER.findall(sample)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_docs_curl_examples_print_what_they_show(server: str) -> None:
    blocks = [b for b in _doc_blocks("bash") if "curl" in b]
    assert blocks
    checked = 0
    for block in blocks:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            env={**os.environ, "FLOCK_URL": server, "FLOCK_API_KEY": "unused"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        assert result.stdout.strip(), f"{block}\nprinted nothing"
        printed = result.stdout.replace("\r\n", "\n")
        for expected in _promised(block):
            assert expected in printed, f"{block}\nexpected {expected!r} in:\n{printed}"
            checked += 1
    assert checked >= 10  # the samples really were compared


def test_the_docs_api_keys_file_loads() -> None:
    (keys,) = [b for b in _doc_blocks("json") if '"keys"' in b]
    ring = APIKeyring.from_dict(json.loads(keys))
    billing = ring.lookup("s3cret-billing")
    assert billing is not None
    assert (billing.name, billing.tenant, billing.labels) == ("billing", "acme", {"finance"})
    assert billing.allowed_types == {"Document"}


# -- deadlines -----------------------------------------------------------------------------------


def test_the_client_deadline_bounds_its_retries(server: str) -> None:
    """Retry-After: 1 on every attempt, ten retries allowed, a 2.5 s deadline: the call
    gives up with the 503 once another retry could not finish in time."""
    events: list[RetryEvent] = []
    with (
        FaultProxy(server, ["503"] * 10) as proxy,
        client_for(proxy.url, events, max_retries=10, deadline=2.5) as client,
        pytest.raises(FlockAPIError) as raised,
    ):
        client.publish(Document(title=unique("deadline"), text=TEXT))

    assert raised.value.code == "SERVICE_UNAVAILABLE"
    assert 1 <= len(events) <= 2 and len(proxy.log) == len(events) + 1
    with pytest.raises(ValueError, match="deadline"):
        FlockClient(server, deadline=0)


async def test_a_sync_call_that_times_out_is_bounded_by_its_wait(tmp_path: Path) -> None:
    """`on_timeout="error"`: the server answers 504 after each wait, and 504 is retryable.
    Fifty retries allowed would take about fifty waits; the call's deadline (its wait plus
    the client's margin) ends it within one wait and the margin, raising the 504."""
    import time

    from flock.client._base import WAIT_MARGIN
    from support.apps import job_app, work_after_marker, write_app

    marker = tmp_path / "never"  # never created: the cascade never finishes
    app = write_app(
        tmp_path,
        "slow_app.py",
        job_app(job="ClientSlowJob", done="ClientSlowDone", work=work_after_marker("job.n")),
    )
    served = ServeProcess(
        app.name,
        "--store",
        "memory://",
        "--idempotency",
        "memory://",
        cwd=tmp_path,
        env={"RELIABILITY_MARKER": str(marker)},
    )
    wait = 1.0
    async with served:
        for flavour in ("sync", "async"):
            events: list[RetryEvent] = []
            started = time.monotonic()
            with pytest.raises(FlockAPIError) as raised:
                if flavour == "sync":
                    with client_for(served.url, events, max_retries=50) as client:
                        client.publish_sync(
                            "ClientSlowJob", {"n": 1}, timeout=wait, on_timeout="error"
                        )
                else:
                    async with async_client_for(served.url, events, max_retries=50) as aclient:
                        await aclient.publish_sync(
                            "ClientSlowJob", {"n": 1}, timeout=wait, on_timeout="error"
                        )
            took = time.monotonic() - started
            assert raised.value.status == 504 and raised.value.retryable is True
            assert len(events) < 10, events  # not fifty
            assert took < wait + WAIT_MARGIN + 5, f"{flavour}: {took:.1f} s"
