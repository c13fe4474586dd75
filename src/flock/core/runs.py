"""Runs: the data model of one execution of one agent on its input artifacts (SPEC section 6).

A run is a record in the blackboard store, not a task in some process's memory. Its id is
derived from the agent and the input ids, so the same input can never create a second run
of the same agent; its outputs' ids are derived from the run id and their index, so a run
whose engine executed twice still puts each output on the blackboard once.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

# Fixed namespace for run and output ids (uuid5): the same inputs give the same ids on
# every machine and release.
_NAMESPACE = uuid.UUID("6b1f0f3e-5d0c-4b6e-9a39-0c2f3a7d9e51")
_NAMESPACE_BYTES = _NAMESPACE.bytes


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


PENDING_STATES = frozenset({RunState.QUEUED, RunState.RUNNING})
FINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.DEAD, RunState.CANCELLED})


class NonRetryableError(Exception):
    """Raised by an engine (or by Flock) for a failure that another attempt cannot mend:
    the run goes `dead` at once instead of being retried."""


def run_id_for(agent: str, input_ids: Sequence[str]) -> str:
    """The id of the run of `agent` on exactly these inputs, in this order."""
    return _uuid5("\n".join((agent, *input_ids)))


def output_id_for(run_id: str, index: int) -> str:
    """The id of a run's `index`-th output (the same for every attempt of the run)."""
    return _uuid5(f"{run_id}\n{index}")


def _uuid5(name: str) -> str:
    """`str(uuid.uuid5(_NAMESPACE, name))`, built from the digest directly: two of these are
    minted per run, and the `UUID` object cost more than the hash."""
    raw = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(slots=True)
class Usage:
    """What a run spent on model calls (engines that call models add to it)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, *, requests: int = 0, input_tokens: int = 0, output_tokens: int = 0) -> None:
        self.requests += requests
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def __bool__(self) -> bool:
        return bool(self.requests or self.input_tokens or self.output_tokens)

    def to_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage | None:
        if not data:
            return None
        return cls(
            int(data.get("requests", 0)),
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`agent.retry(...)`: how many attempts a run gets and how long it waits between them."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    backoff: float = 2.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): full jitter on an
        exponential ceiling, so runs that failed together do not retry together."""
        ceiling = min(self.initial_delay * self.backoff ** (attempt - 1), self.max_delay)
        return random.uniform(ceiling / 2, ceiling)

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, NonRetryableError):
            return False
        return not (self.non_retryable and isinstance(exc, self.non_retryable))


@dataclass(slots=True)
class Run:
    """One execution of one agent on its input artifacts, as the store holds it."""

    id: str
    agent: str
    correlation_id: str
    input_ids: tuple[str, ...]
    state: RunState = RunState.QUEUED
    attempt: int = 0  # attempts started so far
    max_attempts: int = 3
    error: str | None = None
    worker: str | None = None  # the lease owner while running
    principal: str | None = None
    usage: Usage | None = None
    output_ids: tuple[str, ...] = ()
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    lease_expires_at: datetime | None = None
    fence: int = 0  # grows at every claim: a commit must name the fence it claimed with
    # The other correlations its inputs came from (a join or batch across correlations):
    # the run counts as pending work of each of them too.
    linked: tuple[str, ...] = ()

    @classmethod
    def new(
        cls,
        agent: str,
        correlation_id: str,
        input_ids: Sequence[str],
        *,
        max_attempts: int,
        principal: str | None,
        at: datetime,
        state: RunState = RunState.QUEUED,
        error: str | None = None,
    ) -> Run:
        ids = tuple(input_ids)
        final = state in FINAL_STATES
        return cls(
            id=run_id_for(agent, ids),
            agent=agent,
            correlation_id=correlation_id,
            input_ids=ids,
            state=state,
            max_attempts=max_attempts,
            principal=principal,
            error=error,
            created_at=at,
            finished_at=at if final else None,
            next_attempt_at=None if final else at,
        )

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    def copy(self) -> Run:
        return replace(self)

    def to_dict(self) -> dict[str, Any]:
        """The run as `GET /api/v1/runs/{id}` shows it."""
        return {
            "id": self.id,
            "agent": self.agent,
            "correlation_id": self.correlation_id,
            "input_ids": list(self.input_ids),
            "output_ids": list(self.output_ids),
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "worker": self.worker,
            "principal": self.principal,
            "usage": self.usage.to_dict() if self.usage is not None else None,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "next_attempt_at": _iso(self.next_attempt_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def lease_until(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


__all__ = [
    "FINAL_STATES",
    "PENDING_STATES",
    "NonRetryableError",
    "RetryPolicy",
    "Run",
    "RunState",
    "Usage",
    "lease_until",
    "output_id_for",
    "run_id_for",
]
