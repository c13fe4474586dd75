"""Counters of one Flock, read by the metrics endpoint at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    llm_tokens: dict[tuple[str, str], int] = field(default_factory=dict)
    llm_requests: dict[tuple[str, str], int] = field(default_factory=dict)

    def count_llm_tokens(self, agent: str, *, input_tokens: int, output_tokens: int) -> None:
        for kind, value in (("input", input_tokens), ("output", output_tokens)):
            if value:
                key = (agent, kind)
                self.llm_tokens[key] = self.llm_tokens.get(key, 0) + value

    def count_llm_requests(self, agent: str, outcome: str, n: int = 1) -> None:
        if n:
            key = (agent, outcome)
            self.llm_requests[key] = self.llm_requests.get(key, 0) + n


__all__ = ["FlockStats"]
