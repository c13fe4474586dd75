"""Counters of one Flock, read by the metrics endpoint at scrape time."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)


@dataclass(slots=True)
class Histogram:
    """Cumulative bucket counts and a sum, as Prometheus exports a histogram."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(RUN_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        first = bisect.bisect_left(RUN_BUCKETS, value)  # buckets are cumulative (le)
        for i in range(first, len(RUN_BUCKETS)):
            self.buckets[i] += 1


@dataclass(slots=True)
class FlockStats:
    """Counters since the orchestrator was created (exported as Prometheus metrics).

    `llm_tokens` is keyed by (agent, kind: input|output), `llm_requests` by (agent, outcome:
    ok|rate_limited|client_error|server_error|transport_error); engines that call models add
    to them.
    """

    artifacts_published: int = 0
    agent_runs: int = 0
    agent_failures: int = 0
    runs_fenced: int = 0  # results dropped because the run's lease was lost
    runs_recovered: int = 0  # runs taken over after their worker's lease ran out
    # per (agent, outcome: succeeded|failed|retried|dead|released|fenced): attempts ended
    run_outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    run_durations: dict[str, Histogram] = field(default_factory=dict)  # per agent, seconds
    run_queue_waits: dict[str, Histogram] = field(default_factory=dict)  # created -> started
    runs_queued: dict[str, int] = field(default_factory=dict)  # per agent, as last read
    open_groups: dict[str, int] = field(default_factory=dict)  # per agent, as last read
    llm_tokens: dict[tuple[str, str], int] = field(default_factory=dict)
    llm_requests: dict[tuple[str, str], int] = field(default_factory=dict)

    def count_run(self, agent: str, outcome: str, *, seconds: float | None = None) -> None:
        """One attempt of a run of `agent` ended with `outcome`, after `seconds`."""
        key = (agent, outcome)
        self.run_outcomes[key] = self.run_outcomes.get(key, 0) + 1
        if seconds is not None:
            self.run_durations.setdefault(agent, Histogram()).observe(seconds)

    def count_queue_wait(self, agent: str, seconds: float) -> None:
        self.run_queue_waits.setdefault(agent, Histogram()).observe(seconds)

    def count_llm_tokens(self, agent: str, *, input_tokens: int, output_tokens: int) -> None:
        for kind, value in (("input", input_tokens), ("output", output_tokens)):
            if value:
                key = (agent, kind)
                self.llm_tokens[key] = self.llm_tokens.get(key, 0) + value

    def count_llm_requests(self, agent: str, outcome: str, n: int = 1) -> None:
        if n:
            key = (agent, outcome)
            self.llm_requests[key] = self.llm_requests.get(key, 0) + n


__all__ = ["RUN_BUCKETS", "FlockStats", "Histogram"]
