"""Real `flock serve` processes on free ports, for the tests that need a server over HTTP.

`ServeProcess` runs `python -m flock.cli serve ARGS --host 127.0.0.1 --port <free port>`
without the FLOCK_* settings of this environment, its output going to a log file. Use it as
a context manager (`with` from sync code, `async with` from async code: healthy inside,
stopped after), or through the `serve` fixture (`ServerFactory`), which stops every server
it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from support.polling import poll_until

STARTUP_SECONDS = 60.0
STOP_SECONDS = 30.0
FLOCK_SERVE = ("-m", "flock.cli", "serve")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    """This environment without FLOCK_* settings (they would override the CLI flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOCK_")}
    env.update(extra)
    return env


class ServeProcess:
    """One `flock serve ARGS --host HOST --port <free port>` subprocess, run in `cwd`.

    Its output goes to `log` (default: `serve-<port>.log` in `cwd`); `env` adds variables
    to the FLOCK_*-free environment (FLOCK_* ones included). With `address_in_env`, the
    address goes to the server as FLOCK_HOST and FLOCK_PORT instead of options. `program`
    is what Python runs in place of `-m flock.cli serve`, e.g. a script of the test's that
    takes the same `--host` and `--port` options.
    """

    def __init__(
        self,
        *args: str,
        cwd: Path,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        address_in_env: bool = False,
        program: Sequence[str] = FLOCK_SERVE,
    ) -> None:
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = log or cwd / f"serve-{self.port}.log"
        command = [sys.executable, *program, *args]
        variables = dict(env or {})
        if address_in_env:
            variables.update(FLOCK_HOST=host, FLOCK_PORT=str(self.port))
        else:
            command += ["--host", host, "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env(**variables),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    async def wait_healthy(self, seconds: float = STARTUP_SECONDS) -> None:
        """Poll `/health` until it answers 200; fail if the process exits first.

        The polling runs in a worker thread, so the test's event loop goes on meanwhile.
        """
        await asyncio.to_thread(self._wait_healthy, seconds)

    def _wait_healthy(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"flock serve exited with {self.process.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"flock serve on {self.url} not healthy after {seconds:g} s:\n{self.output()}"
                )
            time.sleep(0.05)

    def rss_bytes(self) -> int:
        """The process's resident set size, from /proc/<pid>/status (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                assert unit == "kB", line
                return int(value) * 1024
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind in the server."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM: ask for a graceful shutdown (does not wait)."""
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, seconds: float) -> int:
        """The exit status, polled until `seconds` pass (then fail)."""

        async def exited() -> int | None:
            return self.process.poll()

        return await poll_until(exited, seconds=seconds, what=f"flock serve {self.pid} to exit")

    def stop(self) -> None:
        """Best-effort end of the process (test clean-up): SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def __enter__(self) -> ServeProcess:
        """Block until healthy (from sync code); the process is stopped if it never is."""
        try:
            self._wait_healthy(STARTUP_SECONDS)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> ServeProcess:
        try:
            await self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()


class ServerFactory:
    """Starts `flock serve APP` processes logging into `workdir`; `stop_all` ends every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[ServeProcess] = []

    def __call__(
        self, app: Path, *, store: str, idempotency: str, workers: int = 1, **env: str
    ) -> ServeProcess:
        server = ServeProcess(
            str(app),
            "--store",
            store,
            "--idempotency",
            idempotency,
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            cwd=app.parent,
            log=self.workdir / f"serve-{len(self.started)}.log",
            env=env,
        )
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
