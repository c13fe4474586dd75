"""Helpers of the reliability suite: a TCP proxy to cut, raw HTTP, problem documents.

Everything here talks to real things: `TCPProxy` forwards bytes to a real PostgreSQL or
Redis until a test cuts it; the `flock serve` processes come from `support.serve`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from support.contract import PROBLEM_FIELDS, PROBLEM_JSON, assert_response_contract
from support.serve import free_port

T = TypeVar("T")


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """Assert `response` is a problem document with this `status` (and `code`, if given),
    through the suite's contract check (`support.contract`); returns the document."""
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.status_code == status, f"{where}, expected {status}: {response.text}"
    problem = assert_response_contract(response)
    assert problem is not None, f"{where}: not an error response"
    if code is not None:
        assert problem.code == code, f"{where}: {problem}"
    document: dict[str, Any] = response.json()
    return document


class TCPProxy:
    """Forwards 127.0.0.1:`port` to an upstream TCP service, until a test cuts it.

    `cut()` closes every forwarded connection and stops listening, so new connections are
    refused, as when the service went away; `restore()` listens again on the same port.
    The proxy runs its own event loop in a thread, so it keeps forwarding whatever the test's
    own loop is doing, and it can be driven from sync or async code alike.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.connections_cut = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        # Each forwarded connection: the writer towards the client and towards upstream.
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    @classmethod
    def to_url(cls, url: str) -> TCPProxy:
        """A proxy to the host and port of a service URL (`postgresql://`, `redis://`)."""
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"no host:port in {url!r}"
        return cls(parts.hostname, parts.port)

    def proxied(self, url: str) -> str:
        """`url` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    async def _listen(self) -> None:
        assert self._server is None, "the proxy is already listening"
        self._server = await asyncio.start_server(
            self._forward, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            for writer in link:
                writer.transport.abort()
            self.connections_cut += 1
        self._links.clear()

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        if self._server is None:  # cut while connecting upstream
            upstream_w.transport.abort()
            client_w.transport.abort()
            return
        link = (client_w, upstream_w)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(client_r, upstream_w), self._pump(upstream_r, client_w))
        finally:
            self._links.discard(link)
            for writer in link:
                writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction until EOF or an error; then end the other direction too."""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


class RawHTTPConnection:
    """One HTTP/1.1 connection on a plain socket, kept open between requests.

    httpx silently replaces a pooled connection the server closed; a test that needs to
    know what happens on *this* connection speaks HTTP itself.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawHTTPConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        """Send a request; its (status, headers, body), or None if the server closed instead."""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        try:
            self.writer.write(head.encode())
            await self.writer.drain()
            status_line = await self.reader.readline()
            if not status_line:
                return None
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (ConnectionError, asyncio.IncompleteReadError):
            return None
        return int(status_line.split()[1]), headers, body

    def close(self) -> None:
        self.writer.transport.abort()


__all__ = [
    "PROBLEM_FIELDS",
    "PROBLEM_JSON",
    "RawHTTPConnection",
    "TCPProxy",
    "assert_problem",
]
