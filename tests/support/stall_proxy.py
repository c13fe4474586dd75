"""A TCP proxy in front of a real PostgreSQL or Redis that can stall or reset on demand.

`StallingProxy` forwards 127.0.0.1:`port` to the service until `stall()`: from then on it
forwards nothing in either direction and accepts new connections only to leave them
silent, as a server that hangs or a network that drops packets would (nothing is refused,
nothing is closed: only a deadline ends the wait). `reset()` aborts every open connection
with a TCP reset (new ones still forward). `resume()` forwards again on new connections
(the stalled ones are dropped). It runs its own event loop in a thread, so it keeps going
whatever the test's own loop does, and is driven from sync or async code alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from support.serve import free_port

T = TypeVar("T")


class StallingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.stalled = False
        self.accepted = 0
        self.accepted_while_stalled = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._resumed = asyncio.Event()

    @classmethod
    def to_url(cls, url: str) -> StallingProxy:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"no host:port in {url!r}"
        return cls(parts.hostname, parts.port)

    def proxied(self, url: str) -> str:
        """`url` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def __enter__(self) -> StallingProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def stall(self) -> None:
        self._call(self._set_stalled(True))

    def resume(self) -> None:
        self._call(self._set_stalled(False))

    def reset(self) -> None:
        """Abort every open connection with a TCP RST (both sides)."""
        self._call(self._reset())

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
        self._server = await asyncio.start_server(
            self._forward, "127.0.0.1", self.port, reuse_address=True
        )

    async def _set_stalled(self, stalled: bool) -> None:
        self.stalled = stalled
        if stalled:
            self._resumed = asyncio.Event()
        else:
            # The connections frozen meanwhile are dropped: their protocol state is lost.
            await self._reset()
            self._resumed.set()

    async def _reset(self) -> None:
        for writer in list(self._writers):
            _abort_with_rst(writer)
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # closing the proxy
            await self._link(client_r, client_w)

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(client_w)
        if self.stalled:  # accepted, then silent: read nothing, answer nothing
            self.accepted_while_stalled += 1
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort_with_rst(client_w)
            return
        self._writers.add(upstream_w)
        await asyncio.gather(
            self._pump(client_r, upstream_w, client_w), self._pump(upstream_r, client_w, upstream_w)
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, own: asyncio.StreamWriter
    ) -> None:
        """Copy one direction; while stalled, hold what was read (never deliver it)."""
        try:
            while data := await reader.read(65536):
                if self.stalled:
                    return  # frozen: this connection never moves again
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if not self.stalled:
            writer.transport.abort()
            own.transport.abort()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.transport.get_extra_info("socket")
    if sock is not None and not writer.transport.is_closing():
        with contextlib.suppress(OSError):  # already closed by the other side
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


__all__ = ["StallingProxy"]
