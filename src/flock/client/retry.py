"""The retry policy: exponential backoff with full jitter, never sooner than `Retry-After`."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from flock.client.errors import FlockAPIError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    Attempt n (0-based) waits a random time in [0, min(backoff_max, backoff_base * 2**n)]
    ("full jitter", so many clients do not retry in lockstep), or the server's `Retry-After`
    if that is longer.
    """

    max_retries: int = 3
    backoff_base: float = 0.2
    backoff_max: float = 10.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("max_retries, backoff_base and backoff_max must not be negative")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2**attempt)
        delay = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Told to an `on_retry` hook before the client sleeps `delay` seconds and tries again."""

    method: str
    path: str
    attempt: int  # 1 for the first retry
    delay: float
    error: FlockAPIError
    idempotency_key: str | None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


__all__ = ["RetryEvent", "RetryPolicy", "parse_retry_after"]
