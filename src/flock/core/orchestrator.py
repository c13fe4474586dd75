"""Flock: publishes artifacts, schedules the agents that consume them, tracks correlations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from flock.core.agent import Agent, AgentBuilder, AgentConfigError, RunContext
from flock.core.artifacts import AgentError, Artifact, ConsumptionRecord, new_id
from flock.core.failures import describe_failure
from flock.core.stats import FlockStats
from flock.core.store.memory import InMemoryBlackboardStore
from flock.core.store.protocol import BlackboardStore, FilterConfig
from flock.core.tracking import Correlation, CorrelationStatus, CorrelationTracker
from flock.core.validation import validate_artifact
from flock.core.visibility import PUBLIC, AnyVisibility, inherit_visibility, require_consumable
from flock.registry import type_registry

if TYPE_CHECKING:
    from flock.api.auth import APIKeyring
    from flock.api.idempotency import IdempotencyStore

logger = logging.getLogger("flock.orchestrator")


class Flock:
    """The blackboard orchestrator. See SPEC section 1."""

    def __init__(
        self,
        name: str = "flock",
        *,
        store: BlackboardStore | None = None,
        max_runs_per_correlation: int = 1000,
    ) -> None:
        if max_runs_per_correlation < 1:
            raise ValueError("max_runs_per_correlation must be >= 1")
        self.name = name
        self._store: BlackboardStore = store if store is not None else InMemoryBlackboardStore()
        self.store_is_default = store is None
        self.max_runs_per_correlation = max_runs_per_correlation
        self.stats = FlockStats()
        self._declared: list[Agent] = []
        self._agents: dict[str, Agent] = {}
        self._by_type: dict[str, list[Agent]] = {}
        self._ready = False
        self._tracker = CorrelationTracker()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- declaration ------------------------------------------------------------------------

    @property
    def store(self) -> BlackboardStore:
        return self._store

    @store.setter
    def store(self, store: BlackboardStore) -> None:
        if self.stats.artifacts_published or self._tracker.total_pending:
            raise RuntimeError("the store can only be replaced before anything is published")
        self._store = store
        self.store_is_default = False

    def agent(self, name: str) -> AgentBuilder:
        """Declare an agent; configure it through the returned fluent builder."""
        if not isinstance(name, str) or not name.strip():
            raise AgentConfigError("an agent needs a non-empty name")
        agent = Agent(name=name)
        self._declared.append(agent)
        self._agents_changed()
        return AgentBuilder(self, agent)

    @property
    def agents(self) -> list[Agent]:
        self._ensure_ready()
        return list(self._agents.values())

    def get_agent(self, name: str) -> Agent:
        self._ensure_ready()
        try:
            return self._agents[name]
        except KeyError:
            raise KeyError(f"no agent named {name!r}") from None

    def _agents_changed(self) -> None:
        self._ready = False

    def _ensure_ready(self) -> None:
        """Validate the declared agents once (and again after any change)."""
        if self._ready:
            return
        agents: dict[str, Agent] = {}
        for agent in self._declared:
            if agent.name in agents:
                raise AgentConfigError(f"two agents are named {agent.name!r}; names must be unique")
            agent.validate()
            agents[agent.name] = agent
        by_type: dict[str, list[Agent]] = {}
        for agent in agents.values():
            for type_name in {t for sub in agent.subscriptions for t in sub.type_names}:
                by_type.setdefault(type_name, []).append(agent)
        self._agents, self._by_type, self._ready = agents, by_type, True

    # -- publishing -------------------------------------------------------------------------

    async def publish(
        self,
        obj: BaseModel | Mapping[str, Any] | Artifact,
        *,
        correlation_id: str | None = None,
        tags: Iterable[str] | None = None,
        partition_key: str | None = None,
        visibility: AnyVisibility | None = None,
        produced_by: str = "external",
    ) -> Artifact:
        """Validate and store an artifact, then schedule every agent that consumes it."""
        self._ensure_ready()
        if isinstance(obj, Artifact):
            obj.model()  # validates the payload; raises RegistryError / ValidationError
            artifact = obj
        else:
            artifact = self._to_artifact(obj, produced_by)
            artifact.correlation_id = correlation_id or artifact.correlation_id
            if tags is not None:
                artifact.tags = frozenset(tags)
            artifact.partition_key = partition_key
            artifact.visibility = visibility or PUBLIC
        validate_artifact(artifact)  # ArtifactValidationError: nothing is stored
        await self._store.publish(artifact)
        self.stats.artifacts_published += 1
        await self._schedule(artifact)
        return artifact

    @staticmethod
    def _to_artifact(obj: BaseModel | Mapping[str, Any], produced_by: str) -> Artifact:
        if isinstance(obj, BaseModel):
            type_name = type_registry.name_for(obj)
            model = obj
        elif isinstance(obj, Mapping):
            fields = dict(obj)
            type_name = fields.pop("type", None)
            if not isinstance(type_name, str):
                raise TypeError('a dict artifact needs a string "type" key')
            model = type_registry.resolve(type_name).model_validate(fields)
        else:
            raise TypeError(f"cannot publish {type(obj).__name__}; pass a model, dict or Artifact")
        return Artifact(
            type=type_name,
            payload=model.model_dump(mode="json"),
            produced_by=produced_by,
            _model=model,
        )

    async def _schedule(self, artifact: Artifact) -> None:
        tracker = self._tracker
        corr = tracker.touch(artifact.correlation_id, artifact.created_at)
        corr.artifact_count += 1
        candidates = self._by_type.get(artifact.type)
        if not candidates:
            return
        agents = []
        for agent in candidates:
            try:
                if agent.subscribes_to(artifact):
                    agents.append(agent)
            except Exception as exc:  # a `where` predicate that raises fails its agent alone
                await self._record_error(
                    corr,
                    AgentError(
                        agent.name,
                        artifact.id,
                        f"its `where` predicate raised {describe_exception(exc)}",
                        artifact.correlation_id,
                    ),
                )
        if not agents:
            return
        room = self.max_runs_per_correlation - corr.runs
        if len(agents) > room:
            agents = agents[: max(room, 0)]
            if not corr.limit_reported:
                corr.limit_reported = True
                await self._record_error(
                    corr,
                    AgentError(
                        "flock",
                        artifact.id,
                        f"correlation reached the limit of {self.max_runs_per_correlation} "
                        "agent runs; further runs were not scheduled (a loop of agents?)",
                        artifact.correlation_id,
                    ),
                )
            if not agents:
                return
        if tracker.started(corr, len(agents)):
            await self._mark_running(corr)
        for agent in agents:
            self._spawn(agent, artifact, corr)

    def _spawn(self, agent: Agent, artifact: Artifact, corr: Correlation) -> None:
        """Start one counted run as its own task, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(self._run(agent, artifact, corr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, agent: Agent, artifact: Artifact, corr: Correlation) -> None:
        outputs: list[Artifact] = []
        try:
            async with agent.semaphore:
                try:
                    outputs = await self._execute(agent, [artifact], artifact.correlation_id)
                except Exception as exc:  # an agent's failure is data, not a crash
                    self.stats.agent_failures += 1
                    logger.warning(
                        "agent %s failed on %s (correlation %s): %s",
                        agent.name,
                        artifact.id,
                        artifact.correlation_id,
                        exc,
                    )
                    await self._record_error(
                        corr,
                        AgentError(
                            agent.name, artifact.id, describe_exception(exc), corr.correlation_id
                        ),
                    )
                self.stats.agent_runs += 1
                consumed = ConsumptionRecord(artifact.id, agent.name, artifact.correlation_id)
                await self._store.commit_run(outputs, (consumed,))
                self.stats.artifacts_published += len(outputs)
                for output in outputs:
                    await self._schedule(output)
        except Exception:  # the store failed: record it and keep the scheduler consistent
            logger.exception("run of agent %s on %s could not be recorded", agent.name, artifact.id)
            corr.errors.append(
                AgentError(
                    agent.name,
                    artifact.id,
                    "the run's outputs could not be stored",
                    corr.correlation_id,
                )
            )
        finally:
            try:
                if self._tracker.finished(corr):
                    await self._mark_idle(corr)
            finally:
                self._tracker.settled(corr)

    async def _mark_running(self, corr: Correlation) -> None:
        # A store failure here must not escape: the runs are already counted as pending, and
        # without their tasks the correlation would never become idle.
        try:
            await self._store.set_correlation_state(
                corr.correlation_id, "running", self._tracker.next_seq(), corr.updated_at
            )
        except Exception:
            logger.exception("could not record correlation %s as running", corr.correlation_id)

    async def _mark_idle(self, corr: Correlation) -> None:
        try:
            await self._store.set_correlation_state(
                corr.correlation_id, "idle", self._tracker.next_seq(), corr.updated_at
            )
        except Exception:
            logger.exception("could not record correlation %s as idle", corr.correlation_id)

    async def _execute(
        self, agent: Agent, inputs: Sequence[Artifact], correlation_id: str
    ) -> list[Artifact]:
        """Run the agent's engines on the inputs; return its validated output artifacts."""
        models = [a.model() for a in inputs]
        ctx = RunContext(agent.name, correlation_id, tuple(inputs), self)
        partition_key = inputs[0].partition_key if inputs else None
        outputs: list[Artifact] = []
        for engine in agent.engines:
            result = await engine.evaluate(ctx, models)
            for value in _as_list(result):
                if not isinstance(value, BaseModel):
                    raise TypeError(
                        f"agent {agent.name!r} returned {type(value).__name__}; engines return "
                        "models, lists of models, or None"
                    )
                output = agent.output_for(value)
                outputs.append(
                    Artifact(
                        type=output.type_name,
                        payload=value.model_dump(mode="json"),
                        produced_by=agent.name,
                        correlation_id=correlation_id,
                        partition_key=partition_key,
                        visibility=inherit_visibility(output.visibility, inputs),
                        _model=value,
                    )
                )
        return [validate_artifact(o) for o in outputs]  # a bad output fails the run

    async def _record_error(self, corr: Correlation, error: AgentError) -> None:
        corr.errors.append(error)
        await self._store.record_error(error)

    # -- waiting and status -----------------------------------------------------------------

    async def run_until_idle(
        self, correlation_id: str | None = None, *, timeout: float | None = None
    ) -> None:
        """Wait until no run (of `correlation_id`, or of anything) is queued or running.

        Raises TimeoutError after `timeout` seconds; the agents' work is never cancelled.
        """
        if timeout is None:
            await self._tracker.wait(correlation_id)
        else:
            async with asyncio.timeout(timeout):
                await self._tracker.wait(correlation_id)

    async def wait_for_correlation(self, correlation_id: str, timeout: float) -> bool:
        """True once the correlation is idle, False if `timeout` seconds passed first."""
        corr = self._tracker.get(correlation_id)
        if corr is None or not corr.busy:
            return True
        try:
            await self.run_until_idle(correlation_id, timeout=timeout)
        except TimeoutError:
            return False
        return True

    def is_running(self, correlation_id: str) -> bool:
        corr = self._tracker.get(correlation_id)
        return corr is not None and corr.busy

    async def correlation_status(self, correlation_id: str) -> CorrelationStatus | None:
        """This process's live record if it has one, else what the store remembers."""
        corr = self._tracker.get(correlation_id)
        if corr is not None:
            return corr.status()
        record = await self._store.get_correlation(correlation_id)
        if record is None:
            return None
        return CorrelationStatus(
            correlation_id,
            record.state,
            0,
            record.artifact_count,
            record.errors,
            record.started_at,
            record.updated_at,
        )

    async def resume(self, correlation_id: str) -> int:
        """Schedule the runs a crashed process left undone in a correlation; return how many.

        An artifact an agent subscribes to but has no consumption record for is run again.
        """
        self._ensure_ready()
        if self.is_running(correlation_id):
            return 0
        items, total = await self._store.query_artifacts(
            FilterConfig(correlation_id=correlation_id), limit=-1, embed_meta=True
        )
        if items and self._tracker.get(correlation_id) is None:
            # New to this process: seed the live record from the store, so the status after
            # the resumed runs counts the earlier artifacts and keeps the earlier errors.
            first = items[0].artifact  # type: ignore[union-attr]
            corr = self._tracker.touch(correlation_id, first.created_at)
            corr.artifact_count = total
            record = await self._store.get_correlation(correlation_id)
            if record is not None:
                corr.errors.extend(record.errors)
        scheduled = 0
        for envelope in items:
            artifact = envelope.artifact  # type: ignore[union-attr]
            done = {c.consumer for c in envelope.consumptions}  # type: ignore[union-attr]
            corr = self._tracker.touch(correlation_id, artifact.created_at)
            for agent in self._by_type.get(artifact.type, ()):
                if agent.name in done or not agent.subscribes_to(artifact):
                    continue
                if self._tracker.started(corr, 1):
                    await self._mark_running(corr)
                self._spawn(agent, artifact, corr)
                scheduled += 1
        return scheduled

    # -- direct runs ------------------------------------------------------------------------

    async def direct_invoke(
        self, agent: str | Agent | AgentBuilder, inputs: Sequence[BaseModel | Artifact]
    ) -> list[Artifact]:
        """Run one agent on the inputs, store its outputs, and trigger no other agent."""
        self._ensure_ready()
        if isinstance(agent, AgentBuilder):
            agent = agent.agent
        target = self.get_agent(agent) if isinstance(agent, str) else agent
        correlation_id = new_id()
        artifacts = [
            item if isinstance(item, Artifact) else self._to_artifact(item, "external")
            for item in inputs
        ]
        require_consumable(target.identity, artifacts)
        async with target.semaphore:
            try:
                outputs = await self._execute(target, artifacts, correlation_id)
            except Exception:
                self.stats.agent_failures += 1
                raise
            finally:
                self.stats.agent_runs += 1
        await self._store.commit_run(outputs, ())
        self.stats.artifacts_published += len(outputs)
        return outputs

    # -- lifecycle --------------------------------------------------------------------------

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8344,
        *,
        idempotency: IdempotencyStore | None = None,
        api_keys: APIKeyring | None = None,
        shutdown_grace: float | None = None,
        **uvicorn_options: Any,
    ) -> None:
        """Serve the REST API with uvicorn (blocks until the server stops).

        It stops as `flock serve` does: SIGTERM/SIGINT first drain (new requests 503, those
        in flight finish, for up to `shutdown_grace` seconds, default 30), then it returns.
        """
        import uvicorn

        # The one place core reaches up: the HTTP layer is optional for library users.
        from flock.api.service import BlackboardHTTPService
        from flock.server import DEFAULT_GRACE_SECONDS, DrainingServer

        service = BlackboardHTTPService(self, idempotency=idempotency, api_keys=api_keys)
        config = uvicorn.Config(service.app, host=host, port=port, **uvicorn_options)
        grace = DEFAULT_GRACE_SECONDS if shutdown_grace is None else shutdown_grace
        DrainingServer(config, service, grace).run()

    async def close(self) -> None:
        await self._store.close()


def _as_list(result: Any) -> list[Any]:
    if result is None:
        return []
    if isinstance(result, list | tuple):
        return list(result)
    return [result]


def describe_exception(exc: BaseException) -> str:
    """How an agent's failure is recorded: the exception type and its message."""
    return describe_failure(exc)


__all__ = ["Flock", "FlockStats"]
