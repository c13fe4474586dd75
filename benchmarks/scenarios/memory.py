"""Memory: server RSS over 100,000 keyed requests with a 2 s idempotency TTL.

`flock serve` runs with the in-memory idempotency store, `FLOCK_IDEMPOTENCY_TTL=2` and
`FLOCK_IDEMPOTENCY_PURGE_INTERVAL=1`, and the SQLite blackboard (so the artifacts are on
disk, not in the process). Every request is a keyed async publish with a fresh key, so each
one leaves an idempotency record. RSS is sampled as the requests go, then once the TTL and
a purge have passed: it must level off rather than grow with the number of requests.
"""

from __future__ import annotations

import json
import tempfile
import time

from benchmarks.context import Context
from benchmarks.loadgen import Request, run_load
from benchmarks.report import Row
from benchmarks.server import Server

TTL_SECONDS = 2
PURGE_SECONDS = 1
NOTE = json.dumps({"type": "BenchNote", "payload": {"text": "remember me"}}).encode()
KEYED_NOTE = Request("POST", "/api/v1/artifacts", NOTE, unique_key=True)


def run(ctx: Context) -> list[Row]:
    target = 20_000 if ctx.quick else 100_000
    chunk_seconds = 2.0 if ctx.quick else 5.0
    env = {
        "FLOCK_IDEMPOTENCY_TTL": str(TTL_SECONDS),
        "FLOCK_IDEMPOTENCY_PURGE_INTERVAL": str(PURGE_SECONDS),
    }
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/blackboard.db"
        with Server.flock(store=store, idempotency="memory://", env=env) as server:
            run_load(server.url, KEYED_NOTE, 16, 1.0, ctx.loadgen)  # warm-up
            time.sleep(TTL_SECONDS + 2 * PURGE_SECONDS)
            before = server.rss_mib()
            done = errors = 0
            tool = ""
            while done < target:
                result = run_load(server.url, KEYED_NOTE, 16, chunk_seconds, ctx.loadgen)
                done += result.requests
                errors += result.errors
                tool = result.tool
                samples.append((done, server.rss_mib()))
            end = samples[-1][1]
            time.sleep(TTL_SECONDS + 3 * PURGE_SECONDS)
            after = server.rss_mib()
    peak = max(rss for _, rss in samples)
    half = [(n, rss) for n, rss in samples if n >= done / 2]
    growth = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1) * 10_000
    figures = {"before MiB": before, "peak MiB": peak, "end MiB": end, "after purge MiB": after}
    row = Row("memory", f"RSS over {done:,} keyed requests, TTL {TTL_SECONDS} s", figures)
    row.note = (
        f"{tool}; growth over the second half: {growth:+.2f} MiB per 10k requests; "
        f"{errors} errors; RSS by requests: "
        + ", ".join(f"{n // 1000}k={rss:.0f}" for n, rss in samples)
    )
    return [row]
