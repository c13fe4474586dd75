"""`flock worker`: a process that executes runs and serves no HTTP API.

It claims runs from the store it shares with `flock serve` processes (and other workers),
exactly as the worker inside `flock serve` does. SIGTERM or SIGINT stops it the same way: no
new claims, running engines get the grace period, then their runs are released for another
process to take at once. A second signal during the drain releases them at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from flock.core.orchestrator import Flock

logger = logging.getLogger("flock.worker")


async def run_worker(flock: Flock, grace: float, metrics_port: int | None = None) -> None:
    """Execute `flock`'s runs until a stop signal, then drain (see the module docstring)."""
    loop = asyncio.get_running_loop()
    stops = asyncio.Queue[int]()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stops.put_nowait, sig)
    if metrics_port is not None:
        _serve_metrics(flock, metrics_port)
    await flock.store.ping()
    flock.start()
    agents = ", ".join(agent.name for agent in flock.agents) or "none"
    logger.info(
        "worker %s: executing runs of %s, at most %d at once",
        flock.worker.name,
        agents,
        flock.worker.settings.concurrency,
    )
    gauge = loop.create_task(flock.watch_queue())
    received = await stops.get()
    gauge.cancel()
    logger.info(
        "%s: no new claims; %d run(s) running get %g s, then are released",
        signal.Signals(received).name,
        flock.worker.active_runs,
        grace,
    )
    drain = loop.create_task(flock.stop(grace))
    forced = loop.create_task(stops.get())
    await asyncio.wait((drain, forced), return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        logger.info("second signal: releasing the runs now")
        await flock.stop(0.0)
    forced.cancel()
    await flock.close()
    logger.info("worker stopped")


def _serve_metrics(flock: Flock, port: int) -> None:
    """`/metrics` of this worker's counters (prometheus-client's own server, a thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from flock.api.metrics import register_flock_metrics

    registry = CollectorRegistry(auto_describe=True)
    register_flock_metrics(registry, flock.stats)
    start_http_server(port, addr="0.0.0.0", registry=registry)
    logger.info("metrics on port %d (/metrics)", port)


__all__ = ["run_worker"]
