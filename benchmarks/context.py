"""What every scenario gets: the mode (quick or full), the load generator, the services."""

from __future__ import annotations

import os
from dataclasses import dataclass

POSTGRES_URL = os.environ.get(
    "FLOCK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("FLOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class Context:
    quick: bool
    loadgen: str  # "auto", "wrk" or "python"
    repeat: int  # HTTP measurements are taken this many times; the median is reported
    postgres_url: str = POSTGRES_URL
    redis_url: str = REDIS_URL

    @property
    def seconds(self) -> float:
        """Duration of one HTTP load run."""
        return 3.0 if self.quick else 8.0


__all__ = ["POSTGRES_URL", "REDIS_URL", "Context"]
