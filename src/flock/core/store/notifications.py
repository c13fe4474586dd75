"""Cross-process wake-ups on PostgreSQL: `LISTEN/NOTIFY` over one dedicated connection.

Every write that makes runs claimable, or that may end a correlation's pending work, sends
one `pg_notify` in its own transaction (so it is delivered when, and only if, it commits).
The payload is `r|cid|cid...|@origin`: a leading `r` says runs may be due; the correlation
ids say whose waiters should look again; the origin names the store that sent it, which
drops its own notifications (it has woken its worker and waiters already, in process). A
listener that lost its connection reconnects with a backoff and then reports `*`
(everything may have changed), since notifications sent meanwhile are gone; the pollers'
long fallback interval covers the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger("flock.notifications")

RUNS = "r"
EVERYTHING = "*"
ORIGIN = "@"
_MAX_PAYLOAD = 7900  # PostgreSQL's limit is 8000 bytes


def payloads(runs: bool, correlation_ids: Iterable[str]) -> list[str]:
    """The notification payloads for one write (usually one; more if the ids do not fit)."""
    out: list[str] = []
    current = [RUNS] if runs else []
    size = len(RUNS) if runs else 0
    for cid in dict.fromkeys(correlation_ids):
        if current and size + len(cid) + 1 > _MAX_PAYLOAD:
            out.append("|".join(current))
            current, size = [], 0
        current.append(cid)
        size += len(cid) + 1
    if current:
        out.append("|".join(current))
    return out


def parse(payload: str) -> tuple[bool, list[str]]:
    """(runs may be due, correlation ids; `*` among them for everything)."""
    parts = payload.split("|")
    runs = parts[0] in (RUNS, EVERYTHING)
    ids = [p for p in parts if p != RUNS and not p.startswith(ORIGIN)]
    return runs, ids


def from_origin(payload: str, origin: str) -> bool:
    """True if the store named `origin` sent this payload."""
    return payload.endswith(f"|{ORIGIN}{origin}")


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()


class PostgresListener:
    """LISTENs on `channel` and hands each payload to `callback` (in the event loop)."""

    def __init__(self, dsn: str, channel: str, *, connect_timeout: float = 10.0) -> None:
        self.dsn, self.channel = dsn, channel
        self.connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self, callback: Callable[[str], None]) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(callback))

    async def _listen(self, callback: Callable[[str], None]) -> None:
        import asyncpg

        failures = 0
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                closed = asyncio.Event()
                conn.add_termination_listener(_setter(closed))
                await conn.add_listener(self.channel, lambda *args: callback(args[3]))
                if failures:
                    logger.info("notifications: listening again on %s", self.channel)
                    callback(EVERYTHING)  # what was sent while we were away is lost
                failures = 0
                self.connected.set()
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.warning("notifications: cannot listen (%s); retrying", exc)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


__all__ = ["EVERYTHING", "RUNS", "PostgresListener", "parse", "payloads"]
