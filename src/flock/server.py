"""How `flock serve` stops: a drain phase between a stop signal and uvicorn's shutdown.

On its own, uvicorn closes the listening socket the moment SIGTERM arrives, so callers
that connect after it are refused. With a `Drain` in front, the first SIGTERM or SIGINT
keeps the server listening and answering every new request `503 SERVICE_UNAVAILABLE`
(`Retry-After`, `Connection: close`) while the requests in flight finish; once none is
left, or the grace period is over, uvicorn's own shutdown runs as usual (it stops
listening, waits for what still runs, runs the app's shutdown) and the process exits 0.
Another SIGINT during the drain forces an immediate exit, as a second Ctrl+C does in
uvicorn; another SIGTERM changes nothing (a supervisor and a process manager may each
send one).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from types import FrameType

import uvicorn

from flock.api.service import BlackboardHTTPService

logger = logging.getLogger("flock.server")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_GRACE_SECONDS = 30.0
# After the grace period: for waiting sync calls to answer, then (uvicorn's graceful
# shutdown timeout) for whatever still holds a connection; then it is cancelled. So SIGTERM
# to exit takes at most the grace period plus these, whatever is in flight.
LAST_ANSWERS_SECONDS = 3.0
GRACEFUL_SHUTDOWN_SECONDS = 3


class Drain:
    """The drain phase of one uvicorn server serving `service`; `handle_signal` is the
    server's SIGINT/SIGTERM handler."""

    def __init__(
        self, server: uvicorn.Server, service: BlackboardHTTPService, grace_seconds: float
    ) -> None:
        if grace_seconds < 0:
            raise ValueError("the shutdown grace period must not be negative")
        self.server = server
        self.service = service
        self.grace_seconds = grace_seconds
        self.started = False
        self._task: asyncio.Task[None] | None = None

    def handle_signal(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it runs between two bytecodes of the event loop's thread, so it
        # only flips flags and hands the waiting to the loop.
        if self.started or self.server.should_exit:
            if sig == signal.SIGINT:
                self.server.should_exit = self.server.force_exit = True
            return
        self.started = True
        self.service.begin_shutdown()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet (or any more): nothing to drain
            self.server.should_exit = True
            return
        loop.call_soon_threadsafe(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_seconds
        if self.service.requests_in_flight:
            logger.info(
                "draining: %d request(s) in flight, new requests get 503 (up to %g s)",
                self.service.requests_in_flight,
                self.grace_seconds,
            )
        # Running engines get the grace period; then their runs are released (another
        # process takes them at once). Sync calls still waiting may yet see their cascade
        # finish elsewhere until the grace period ends; then they answer completed=false.
        await self.service.stop_runs(self.grace_seconds)
        if not await self.service.wait_drained(max(deadline - loop.time(), 0.0)):
            logger.warning(
                "shutdown grace period of %g s over with %d request(s) still in flight; "
                "sync calls answer completed=false now",
                self.grace_seconds,
                self.service.requests_in_flight,
            )
            self.service.answer_waiters()
            await self.service.wait_drained(LAST_ANSWERS_SECONDS)
        self.server.should_exit = True

    def take_over_signals(self) -> None:
        """Make this drain the process's stop-signal handler (from the main thread)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle_signal)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a `Drain` before its shutdown (`flock serve`, one process)."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: BlackboardHTTPService,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        super().__init__(config)
        self.drain = Drain(self, service, grace_seconds)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.handle_signal(sig, frame)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn installs `handle_exit` only once its loop runs, and restores the previous
        # handler afterwards: with Python's default, a SIGTERM just before or after would
        # kill the process. Installed for the whole run, a stop signal always stops the
        # server gracefully and the process exits 0.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            super().run(sockets)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def drain_running_server(service: BlackboardHTTPService, grace_seconds: float) -> bool:
    """Put a `Drain` in front of the uvicorn server that is starting `service` in this
    process (a `--workers` process, where uvicorn creates the server itself).

    Call it from the app factory: uvicorn loads the app inside its serve loop, after it made
    its server's `handle_exit` the stop-signal handler, which is how the server is found.
    Returns False, leaving uvicorn's own handling, when no such server is found.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not isinstance(server, uvicorn.Server):
        logger.warning("no uvicorn server handles SIGTERM here: shutting down without a drain")
        return False
    Drain(server, service, grace_seconds).take_over_signals()
    return True


__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "GRACEFUL_SHUTDOWN_SECONDS",
    "Drain",
    "DrainingServer",
    "drain_running_server",
]
