"""Rules every store applies the same way: run transitions, derived state, error records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from flock.core.artifacts import AgentError
from flock.core.runs import Run, RunState, Usage, lease_until
from flock.core.store.protocol import CorrelationState

# The error a run carries while an attempt that lost its lease is being retried.
LEASE_LOST = "the previous attempt's worker lost its lease (it crashed, froze or lost the store)"


def utcnow() -> datetime:
    return datetime.now(UTC)


def correlation_state(cancelled: bool, pending: int) -> CorrelationState:
    if cancelled:
        return "cancelled"
    return "running" if pending else "idle"


def fair_order(runs: Iterable[Run], busy: Mapping[str | None, int]) -> list[Run]:
    """Due runs (oldest first) in the order a claim takes them: round-robin across their
    principals, a principal with `busy[p]` runs running already waiting that many turns,
    so a caller whose burst holds the slots yields the next free one to another caller."""
    seen: dict[str | None, int] = {}
    keyed = []
    for position, run in enumerate(runs):
        turn = seen.get(run.principal, busy.get(run.principal, 0))
        seen[run.principal] = turn + 1
        keyed.append((turn, position, run))
    keyed.sort(key=lambda item: item[:2])
    return [run for _, _, run in keyed]


def start_attempt(
    run: Run, worker: str, now: datetime, lease_seconds: float, recovered: bool
) -> None:
    """A claim: the run is running under a new lease and fence, one attempt further."""
    run.state = RunState.RUNNING
    run.attempt += 1
    run.fence += 1
    run.worker = worker
    run.started_at = now
    run.next_attempt_at = None
    run.lease_expires_at = lease_until(now, lease_seconds)
    if recovered:
        run.error = LEASE_LOST


def requeue(run: Run, now: datetime) -> None:
    """A manual retry: queued again now with fresh attempts."""
    run.state = RunState.QUEUED
    run.attempt = 0
    run.error = None
    run.finished_at = None
    run.lease_expires_at = None
    run.next_attempt_at = now


def add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    if not more:
        return total
    if total is None:
        return Usage(more.requests, more.input_tokens, more.output_tokens)
    return Usage(
        total.requests + more.requests,
        total.input_tokens + more.input_tokens,
        total.output_tokens + more.output_tokens,
    )


def dead_run_error(run: Run) -> AgentError:
    return AgentError(
        run.agent,
        run.input_ids[0] if run.input_ids else None,
        run.error or "the run failed",
        run.correlation_id,
        run.finished_at or run.created_at,
        run_id=run.id,
        attempts=run.attempt,
    )


def run_limit_error(run: Run, max_runs: int) -> AgentError:
    return AgentError(
        "flock",
        run.input_ids[0] if run.input_ids else None,
        f"correlation reached the limit of {max_runs} agent runs; further runs were not "
        "scheduled (a loop of agents?)",
        run.correlation_id,
        run.created_at,
    )


__all__ = [
    "LEASE_LOST",
    "add_usage",
    "correlation_state",
    "dead_run_error",
    "fair_order",
    "requeue",
    "run_limit_error",
    "start_attempt",
    "utcnow",
]
