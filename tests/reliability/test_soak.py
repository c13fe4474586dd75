"""Soak: many sync calls at 16 concurrent connections against one `flock serve` process.

Memory stores: no database in the way, so the figures are the server process's own. Every
call must answer 200 with completed=true and its two artifacts; one call in ten carries an
idempotency key.

`FLOCK_SOAK_CALLS` sets the number of calls (default 10,000: about 25 s here, at 400-470
calls/s on 2 cores with the client in the same machine; the timeout allows ~4x that).

Memory bound: RSS after the soak minus RSS after a 1,000-call warm-up must stay under
8 MiB + 4 KiB per call (47 MiB for 10,000 calls). The in-memory blackboard keeps every
artifact by design (two per call: input and output, with their models, payloads, index
entries, consumption and correlation records), the scheduler keeps the last 10,000 idle
correlations, and the idempotency store keeps keyed outcomes for their 24 h TTL. Measured
with tracemalloc in one process, that data is about 3.5 KiB per call, and the server's RSS
grows by 3.3-3.4 KiB per call (33 MiB for 10,000). The 8 MiB absorbs allocator and GC
noise; anything left behind per call beyond the stored data (a request, a response, a task,
a waiter of ~1.5 KiB or more) breaks the bound.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.apps import job_app, write_app
from support.serve import ServeProcess, ServerFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOB = "SoakJob"
DONE = "SoakDone"
APP = job_app(job=JOB, done=DONE)  # Done(n=job.n + 1)

CALLS = int(os.environ.get("FLOCK_SOAK_CALLS", "10000"))
WARMUP_CALLS = 1000
CONNECTIONS = 16
KEYED_EVERY = 10  # one call in ten carries an idempotency key
MIB = 1024 * 1024
KIB = 1024
RSS_SLACK = 8 * MIB
RSS_PER_CALL = 4 * KIB  # the stored data of one call (~3.4 KiB), rounded up


@dataclass
class Tally:
    calls: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(what)


async def run_calls(client: httpx.AsyncClient, count: int, run: str) -> Tally:
    """`count` sync calls spread over CONNECTIONS workers; every failure is tallied."""
    numbers = iter(range(count))
    tally = Tally()

    async def worker() -> None:
        for n in numbers:
            headers = {"Idempotency-Key": f"soak-{run}-{n}"} if n % KEYED_EVERY == 0 else {}
            body = {"type": JOB, "payload": {"n": n}}
            tally.calls += 1
            try:
                response = await client.post("/api/v1/artifacts/sync", json=body, headers=headers)
            except httpx.HTTPError as exc:
                tally.fail(f"call {n}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code != 200:
                tally.fail(f"call {n}: {response.status_code} {response.text[:300]}")
                continue
            result = response.json()
            payloads = [(a["type"], a["payload"]) for a in result["artifacts"]]
            expected = [(JOB, {"n": n}), (DONE, {"n": n + 1})]
            if result["completed"] is not True or payloads != expected:
                tally.fail(f"call {n}: {result}")

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return tally


async def test_soak_of_sync_calls(serve: ServerFactory, tmp_path: Path) -> None:
    app = write_app(tmp_path, "soak_app.py", APP)
    server: ServeProcess = serve(app, store="memory://", idempotency="memory://")
    await server.wait_healthy()
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        warmup = await run_calls(client, WARMUP_CALLS, f"{run}-warm")
        assert warmup.failures == [], warmup.failures
        rss_warm = server.rss_bytes()

        started = time.perf_counter()
        soak = await run_calls(client, CALLS, run)
        elapsed = time.perf_counter() - started
        rss_end = server.rss_bytes()

    growth = rss_end - rss_warm
    print(
        f"\nsoak: {CALLS} sync calls at {CONNECTIONS} connections in {elapsed:.1f} s "
        f"({CALLS / elapsed:.0f}/s); RSS after warm-up {rss_warm / MIB:.1f} MiB, "
        f"after soak {rss_end / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB"
    )
    assert soak.calls == CALLS
    assert soak.failures == [], soak.failures
    assert server.process.poll() is None
    bound = RSS_SLACK + CALLS * RSS_PER_CALL
    assert growth < bound, f"RSS grew {growth / MIB:.1f} MiB (bound {bound / MIB:.1f} MiB)"
