"""The PostgreSQL connections of our processes: how many each holds, and their backends' CPU.

PostgreSQL runs one backend process per connection. A process's connections are its TCP
sockets to the server's port (from `/proc/PID/fd` and `/proc/net/tcp`); `pg_stat_activity`
names the backend serving each client port, and `/proc/BACKEND/stat` its CPU time. This
works when PostgreSQL runs on this machine (its backends are local processes we can read);
elsewhere the connections are counted, their CPU is not (it reads 0).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from benchmarks.services import _plain_dsn


def client_ports(pids: list[int], server_port: int) -> set[int]:
    """Local ports of the TCP connections these processes hold to `server_port`."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if (
                state == "01"
                and inode in inodes
                and int(remote.rsplit(":", 1)[1], 16) == server_port
            ):
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class Backends:
    """The PostgreSQL backends serving some processes, found once their pools are open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = urlsplit(url).port or 5432

    def connections(self, pids: list[int]) -> int:
        """How many connections to the server `pids` hold now (wherever it runs)."""
        return len(client_ports(pids, self.port))

    def backends(self, pids: list[int]) -> list[int]:
        """Backend pids of the connections `pids` hold now (local backends only)."""
        ports = client_ports(pids, self.port)
        if not ports:
            return []
        return asyncio.run(self._backends(sorted(ports)))

    async def _backends(self, ports: list[int]) -> list[int]:
        conn = await asyncpg.connect(_plain_dsn(self.url), timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports
            )
        finally:
            await conn.close()
        # Count a pid only where it is a local PostgreSQL process: with the server on
        # another machine the same number may name an unrelated process here.
        return [int(row["pid"]) for row in rows if _is_postgres(int(row["pid"]))]


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("postgres")
    except OSError:
        return False


__all__ = ["Backends", "client_ports"]
