"""Counters of one Flock, read by the metrics endpoint at scrape time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FlockStats:
    """Counters since the orchestrator was created (exported as Prometheus metrics)."""

    artifacts_published: int = 0
    agent_runs: int = 0
    agent_failures: int = 0
    runs_fenced: int = 0  # results dropped because the run's lease was lost
    runs_recovered: int = 0  # runs taken over after their worker's lease ran out


__all__ = ["FlockStats"]
