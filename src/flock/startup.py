"""What `flock serve` says as it starts: which stores it uses, where their data lives, and
whether they answered. An unreachable store is reported, not fatal: the server keeps
serving, and `/ready` answers 503 until the store is back."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

from flock.api.service import BlackboardHTTPService
from flock.server import DrainingServer

logger = logging.getLogger("flock.serve")
PING_SECONDS = 3.0


def describe_store(url: str | None) -> str:
    """A one-line, password-free description of where a store URL keeps its data."""
    if url is None:
        return "set by the app"
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return "memory (lost when the process exits)"
    if scheme.startswith("sqlite"):
        return f"SQLite file {Path(url.partition(':///')[2]).resolve()}"
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    where = f"{host}:{parts.port}" if parts.port else host
    kind = "Redis" if scheme.startswith("redis") else "PostgreSQL"
    return f"{kind} at {where}{parts.path if kind == 'PostgreSQL' else ''}"


async def check_stores(service: BlackboardHTTPService) -> bool:
    """Ping each store once and log whether it answered; whether all did."""
    checks = {
        "blackboard store": service.flock.store.ping,
        "idempotency store": service.idempotency.ping,
    }
    healthy = True
    for name, ping in checks.items():
        try:
            async with asyncio.timeout(PING_SECONDS):
                await ping()
        except Exception as exc:
            healthy = False
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.warning(
                "%s did not answer (%s); serving anyway, /ready answers 503 until it does",
                name,
                reason,
            )
        else:
            logger.info("%s answered", name)
    return healthy


class ReportingServer(DrainingServer):
    """`flock serve`'s server: the draining server, saying once it listens whether the
    stores answer."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            config = self.config
            logger.info("listening on http://%s:%d (API docs at /docs)", config.host, config.port)
            await check_stores(self.drain.service)


__all__ = ["ReportingServer", "check_stores", "describe_store"]
