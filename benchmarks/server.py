"""Servers under test, each in its own process: `flock serve` and the uvicorn baseline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parents[1]
CASCADE_APP = ROOT / "benchmarks" / "apps" / "cascade.py"
STARTUP_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _flock_command() -> list[str]:
    script = Path(sys.executable).with_name("flock")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flock.cli"]


class Server:
    """A server subprocess on a free port; `ready_path` answers 200 once it serves."""

    def __init__(
        self,
        command: list[str],
        *,
        ready_path: str,
        env: dict[str, str] | None = None,
        port_option: str = "--port",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [*command, port_option, str(self.port)]
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+b", prefix="flock-bench-", suffix=".log"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def flock(
        cls,
        *,
        store: str,
        idempotency: str,
        workers: int = 1,
        run_worker: bool = True,
        env: dict[str, str] | None = None,
    ) -> Server:
        command = [
            *_flock_command(),
            "serve",
            str(CASCADE_APP),
            "--store",
            store,
            "--idempotency",
            idempotency,
            "--log-level",
            "warning",
        ]
        if workers != 1:
            command += ["--workers", str(workers)]
        if not run_worker:
            command.append("--no-worker")
        return cls(command, ready_path="/health", env=env)

    @classmethod
    def worker(cls, *, store: str, env: dict[str, str] | None = None) -> Server:
        """A `flock worker` of the cascade app; ready once its `/metrics` port answers."""
        command = [
            *_flock_command(),
            "worker",
            str(CASCADE_APP),
            "--store",
            store,
            "--log-level",
            "warning",
        ]
        return cls(command, ready_path="/metrics", env=env, port_option="--metrics-port")

    @classmethod
    def baseline(cls) -> Server:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.apps.baseline:app",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        return cls(command, ready_path="/ok")

    def start(self) -> Server:
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.command}\n{self.output()}")
                try:
                    if client.get(self.ready_path).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready: {self.command}\n{self.output()}")
                time.sleep(0.05)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def pids(self) -> list[int]:
        """The server process and its children (workers)."""
        assert self.process is not None
        return _tree(self.process.pid)

    def rss_mib(self) -> float:
        """Resident memory of the server process and its children (workers), in MiB."""
        return sum(_rss_kib(pid) for pid in self.pids()) / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server process and its children."""
        return cpu_seconds(self.pids())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids += _tree(int(child))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes (0 for those gone)."""
    return sum(_cpu_seconds(pid) for pid in pids)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


__all__ = ["CASCADE_APP", "ROOT", "Server", "cpu_seconds", "free_port"]
