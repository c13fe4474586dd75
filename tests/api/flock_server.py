"""Real `flock serve` processes on free ports, for the multi-process and crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

STARTUP_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FlockServer:
    """One `flock serve APP` subprocess; its output goes to `log`."""

    def __init__(
        self,
        app: Path,
        *,
        store: str,
        idempotency: str,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable,
            "-m",
            "flock.cli",
            "serve",
            str(app),
            "--port",
            str(self.port),
            "--store",
            store,
            "--idempotency",
            idempotency,
            "--log-level",
            "warning",
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=app.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    async def wait_ready(self) -> None:
        """Poll `/health` until it answers 200; fail if the process exits or time runs out."""
        deadline = time.monotonic() + STARTUP_SECONDS
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"flock serve exited:\n{self.log.read_text()}")
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"flock serve not ready:\n{self.log.read_text()}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class ServerPool:
    """Starts servers and stops every one of them at the end (use in a fixture)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[FlockServer] = []

    def start(self, app: Path, *, store: str, idempotency: str, **env: str) -> FlockServer:
        log = self.workdir / f"server-{len(self.servers)}.log"
        server = FlockServer(app, store=store, idempotency=idempotency, log=log, env=env)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


def server_pool(workdir: Path) -> Iterator[ServerPool]:
    """The body of a fixture: `yield from server_pool(tmp_path)`."""
    pool = ServerPool(workdir)
    try:
        yield pool
    finally:
        pool.stop_all()
