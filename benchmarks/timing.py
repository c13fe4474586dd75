"""Latency samples and their percentiles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50/p95 (and mean) in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p95_ms": percentile(ordered, 95) * 1000,
        "mean_ms": sum(ordered) / len(ordered) * 1000 if ordered else float("nan"),
    }


async def sample(call: Callable[[], Awaitable[object]], n: int, warmup: int = 0) -> list[float]:
    """Time `n` sequential awaits of `call()` after `warmup` untimed ones."""
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def new_loop_runner() -> asyncio.Runner:
    """An event loop like `flock serve`'s: uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


__all__ = ["new_loop_runner", "percentile", "sample", "summary_ms"]
