"""Multi-input subscriptions (SPEC section 7): AND gates, keyed joins and batches.

An artifact that an AND gate, a join or a batch consumes does not start a run by itself:
it becomes a *part* of an open group, stored with the artifact (so groups survive restarts
and every worker sees them). The store assembles groups in the same transaction that adds
a part: once a group holds what its subscription needs, the parts become one run and leave
the group, exactly once even when two processes add the last parts at the same moment.

- AND gate, `consumes(A, B)`: one group per correlation; a run once it holds one `A` and
  one `B` (`consumes(A, A)`: two `A`s). It waits as long as it takes.
- Join, `consumes(A, B, join=JoinSpec(by=..., within=...))`: one group per key computed
  from each payload, across correlations; a part not joined `within` its arrival is dropped
  and recorded as an error of its correlation.
- Batch, `consumes(A, batch=BatchSpec(size=..., timeout=...))`: one run per `size` parts,
  or with what was gathered `timeout` after the oldest part arrived.

Groups never mix tenants: a tenant's artifacts only join artifacts of the same tenant.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from flock.core.artifacts import AgentError
from flock.core.runs import Run

GroupKind = Literal["and", "batch"]
MAX_WAIT_SECONDS = 366 * 86_400  # join windows and batch timeouts, at most


def _seconds(value: timedelta | float | int, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{what} takes a timedelta or a number of seconds, got {value!r}")
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"{what} must be a positive duration of at most 366 days, got {value!r}")
    return float(seconds)


@dataclass(frozen=True, slots=True, init=False)
class JoinSpec:
    """Join artifacts of several types that share a key, across correlations.

    `by` gets each typed payload and returns its key (any JSON-serialisable value); parts
    wait at most `within` (a timedelta or seconds) for their partners.
    """

    by: Callable[[Any], Any]
    within: float

    def __init__(self, by: Callable[[Any], Any], within: timedelta | float) -> None:
        if not callable(by):
            raise TypeError(f"JoinSpec(by=...) takes a callable, got {by!r}")
        object.__setattr__(self, "by", by)
        object.__setattr__(self, "within", _seconds(within, "JoinSpec(within=...)"))


@dataclass(frozen=True, slots=True, init=False)
class BatchSpec:
    """One run per `size` artifacts, or with those gathered `timeout` (a timedelta or
    seconds) after the first; the engine gets them as a list, oldest first."""

    size: int
    timeout: float | None

    def __init__(self, size: int, timeout: timedelta | float | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"BatchSpec(size=...) must be an int >= 1, got {size!r}")
        object.__setattr__(self, "size", size)
        seconds = None if timeout is None else _seconds(timeout, "BatchSpec(timeout=...)")
        object.__setattr__(self, "timeout", seconds)


@dataclass(slots=True)
class GroupPart:
    """One artifact waiting in an open group of one agent's subscription.

    `group` names the group (subscription, what groups it, tenant); `need` lists the type
    names a complete AND group holds, in the order the engine gets them; `size` is a
    batch's size. `deadline` is when the part expires (joins) or its batch is flushed.
    """

    agent: str
    group: str
    kind: GroupKind
    artifact_id: str
    type_name: str
    correlation_id: str
    arrived_at: datetime
    need: tuple[str, ...] = ()
    size: int = 0
    deadline: datetime | None = None
    principal: str | None = None
    max_attempts: int = 3

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.arrived_at, self.artifact_id)


def group_name(subscription: int, scope: str, key: Any, tenant: str | None) -> str:
    """A group's name: a digest of the subscription's index in its agent, how it groups
    ("c" for a correlation, "j" for a join key, "b" for a batch), the key (canonical JSON,
    so a key of any size or shape fits an index) and the tenant."""
    canonical = json.dumps(
        [subscription, scope, key, tenant], separators=(",", ":"), sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def deadline_after(at: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else at + timedelta(seconds=seconds)


def assemble(parts: Sequence[GroupPart]) -> list[tuple[GroupPart, ...]]:
    """The complete sets one group's parts make now, oldest parts first, each in the order
    its run gets them; what is left stays in the group. `parts` share one group."""
    if not parts:
        return []
    ordered = sorted(parts, key=lambda p: p.order)
    first = ordered[0]
    if first.kind == "batch":
        size = max(first.size, 1)
        return [tuple(ordered[i : i + size]) for i in range(0, len(ordered) - size + 1, size)]
    waiting: dict[str, list[GroupPart]] = {}
    for part in ordered:
        waiting.setdefault(part.type_name, []).append(part)
    sets: list[tuple[GroupPart, ...]] = []
    while True:
        taken: list[GroupPart] = []
        used: dict[str, int] = {}
        for type_name in first.need:
            index = used.get(type_name, 0)
            pool = waiting.get(type_name, [])
            if index >= len(pool):
                return sets
            taken.append(pool[index])
            used[type_name] = index + 1
        for type_name, count in used.items():
            del waiting[type_name][:count]
        sets.append(tuple(taken))


def run_for(parts: Sequence[GroupPart], at: datetime) -> Run:
    """The run a complete set makes: in the first part's correlation (and counted as
    pending in every other one its parts came from), as its first part's principal."""
    first = parts[0]
    run = Run.new(
        first.agent,
        first.correlation_id,
        [p.artifact_id for p in parts],
        max_attempts=first.max_attempts,
        principal=first.principal,
        at=at,
    )
    others = dict.fromkeys(
        p.correlation_id for p in parts if p.correlation_id != run.correlation_id
    )
    run.linked = tuple(others)
    return run


def flushable(parts: Sequence[GroupPart], now: datetime) -> list[tuple[GroupPart, ...]]:
    """A batch group whose earliest deadline came (its oldest part's timeout, unless the
    timeout changed between releases): all its parts, in runs of at most `size`, oldest
    first. Empty if the group is not due."""
    ordered = sorted(parts, key=lambda p: p.order)
    due = min((p.deadline for p in ordered if p.deadline is not None), default=None)
    if due is None or due > now:
        return []
    size = max(ordered[0].size, 1)
    return [tuple(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def expiry_error(part: GroupPart, at: datetime) -> AgentError:
    """The error of its correlation that records a join part dropped past its window."""
    how = "in time"
    if part.deadline is not None:
        how = f"within {(part.deadline - part.arrived_at).total_seconds():g} s"
    message = (
        f"{part.type_name} {part.artifact_id} waited for a join ({', '.join(part.need)}) of "
        f"agent {part.agent!r} that was not complete {how}; it was dropped"
    )
    return AgentError(part.agent, part.artifact_id, message, part.correlation_id, at)


@dataclass(slots=True)
class Settled:
    """What settling one due group does: the parts that leave it, the runs they make (a
    batch's), and the errors of the dropped ones (a join's parts past their window)."""

    taken: list[GroupPart] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    errors: list[AgentError] = field(default_factory=list)


def settle(group: Sequence[GroupPart], now: datetime) -> Settled:
    """What one group becomes at `now` (nothing when it is not due): every store's
    `flush_groups` applies this to the groups whose deadline came."""
    if not group:
        return Settled()
    if group[0].kind == "batch":
        batches = flushable(group, now)
        return Settled([p for b in batches for p in b], [run_for(b, now) for b in batches])
    expired = [p for p in group if p.deadline is not None and p.deadline <= now]
    return Settled(expired, [], [expiry_error(p, now) for p in expired])


@dataclass(slots=True)
class GroupFlush:
    """What `flush_groups` did: the correlations it changed (runs created, parts dropped)
    and when the next open group falls due (None: no group has a deadline)."""

    correlation_ids: set[str] = field(default_factory=set)
    runs_created: int = 0
    next_deadline: datetime | None = None


def correlations_of(parts: Iterable[GroupPart]) -> set[str]:
    return {p.correlation_id for p in parts}


__all__ = [
    "BatchSpec",
    "GroupFlush",
    "GroupKind",
    "GroupPart",
    "JoinSpec",
    "Settled",
    "assemble",
    "correlations_of",
    "deadline_after",
    "expiry_error",
    "flushable",
    "group_name",
    "run_for",
    "settle",
]
