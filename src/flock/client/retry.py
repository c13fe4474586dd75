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
    if that is longer. A `Retry-After` beyond `max_retry_after` seconds is not waited for:
    the error is raised at once, for the caller to decide. `deadline` bounds a whole call,
    retries and waits included: no request outlives it, and no retry starts that it could
    not finish within it (None: only `max_retries` bounds it).
    """

    max_retries: int = 3
    backoff_base: float = 0.2
    backoff_max: float = 10.0
    max_retry_after: float = 60.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        if min(self.max_retries, self.backoff_base, self.backoff_max, self.max_retry_after) < 0:
            raise ValueError(
                "max_retries, backoff_base, backoff_max and max_retry_after must not be negative"
            )
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError("deadline must be positive (or None)")

    def gives_up(self, attempt: int, retry_after: float | None) -> bool:
        """True once `attempt` retries were made, or the server asks for too long a wait."""
        too_long = retry_after is not None and retry_after > self.max_retry_after
        return attempt >= self.max_retries or too_long

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
