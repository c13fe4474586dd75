"""What an artifact triggers: the runs of every agent whose subscription it matches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from flock.core.agent import Agent
from flock.core.artifacts import Artifact
from flock.core.failures import describe_failure
from flock.core.runs import Run, RunState


def runs_for(
    by_type: Mapping[str, Sequence[Agent]],
    artifact: Artifact,
    *,
    principal: str | None,
    at: datetime,
) -> list[Run]:
    """The runs `artifact` triggers, one per subscribed agent, queued.

    A `where` predicate that raises fails its agent alone: that run is created `dead`, with
    the error, so it shows in the correlation's errors (and can be retried by hand).
    """
    runs: list[Run] = []
    for agent in by_type.get(artifact.type, ()):
        try:
            if not agent.subscribes_to(artifact):
                continue
            state, error = RunState.QUEUED, None
        except Exception as exc:
            state = RunState.DEAD
            error = f"its `where` predicate raised {describe_failure(exc)}"
        runs.append(
            Run.new(
                agent.name,
                artifact.correlation_id,
                (artifact.id,),
                max_attempts=agent.retry_policy.max_attempts,
                principal=principal,
                at=at,
                state=state,
                error=error,
            )
        )
    return runs


__all__ = ["runs_for"]
