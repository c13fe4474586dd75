"""Flock: the public face that ties the store, the triggers and the worker together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from flock.core.agent import Agent, AgentBuilder, AgentConfigError, RunContext
from flock.core.artifacts import Artifact, new_id
from flock.core.engine_threads import EngineThreads
from flock.core.runs import Run, output_id_for
from flock.core.stats import FlockStats
from flock.core.store.memory import InMemoryBlackboardStore
from flock.core.store.notifications import EVERYTHING
from flock.core.store.notifications import parse as parse_notification
from flock.core.store.protocol import (
    BlackboardStore,
    CorrelationStatus,
    RunFilter,
    RunQueueFullError,
)
from flock.core.triggers import Triggers, triggers_for, triggers_of
from flock.core.validation import validate_artifact
from flock.core.visibility import PUBLIC, AnyVisibility, inherit_visibility, require_consumable
from flock.core.waiting import CorrelationWatch, WaitOutcome
from flock.core.worker import Worker, WorkerSettings
from flock.registry import type_registry

if TYPE_CHECKING:
    from flock.api.auth import APIKeyring
    from flock.api.idempotency import IdempotencyStore

logger = logging.getLogger("flock.orchestrator")

# How often a waiter re-reads a store other processes may change, at most (until the
# store's notifications wake it).
_SHARED_STORE_POLL = 0.25
_QUEUE_CHECK_SECONDS = 0.1
QUEUE_GAUGE_SECONDS = 5.0


class Flock:
    """The blackboard orchestrator. See SPEC sections 1 and 6.

    Every agent run is a record in the store; the flock's worker claims and executes them
    (`worker=False`, e.g. an HTTP-only server, leaves that to other processes).
    """

    def __init__(
        self,
        name: str = "flock",
        *,
        store: BlackboardStore | None = None,
        max_runs_per_correlation: int = 1000,
        worker: WorkerSettings | bool = True,
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
        self._caps: dict[str, int] = {}
        self._ready = False
        settings = worker if isinstance(worker, WorkerSettings) else WorkerSettings.from_env()
        self.worker_enabled = worker is not False
        self.worker = Worker(self, settings)
        self.watch = CorrelationWatch(poll_seconds=self._poll_for(self._store))
        self.watch.running_here = self.worker.runs_correlation
        self._engine_threads: EngineThreads | None = None
        self._listening: asyncio.Task[None] | None = None
        self._queued, self._queue_checked_at = 0, float("-inf")

    @staticmethod
    def _poll_for(store: BlackboardStore) -> float | None:
        return None if isinstance(store, InMemoryBlackboardStore) else _SHARED_STORE_POLL

    @property
    def engine_threads(self) -> EngineThreads:
        """The threads plain `def` engines run on (as many as the worker runs at once)."""
        if self._engine_threads is None:
            self._engine_threads = EngineThreads(self.worker.settings.concurrency)
        return self._engine_threads

    # -- declaration ------------------------------------------------------------------------

    @property
    def store(self) -> BlackboardStore:
        return self._store

    @store.setter
    def store(self, store: BlackboardStore) -> None:
        if self.stats.artifacts_published or self.worker.active_runs:
            raise RuntimeError("the store can only be replaced before anything is published")
        self._store = store
        self.store_is_default = False
        self.watch.poll_seconds = self._poll_for(store)

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
        self._caps = {a.name: a.max_concurrency for a in agents.values() if a.max_concurrency}

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
        principal: str | None = None,
    ) -> Artifact:
        """Validate and store an artifact together with the runs it triggers.

        Publishing an `Artifact` whose id is stored already returns the stored artifact and
        triggers nothing: a re-delivered input never starts a second cascade. `principal`
        (who published it) is recorded on the runs, for fairness and audit.
        """
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
        found = triggers_for(self._by_type, artifact, principal=principal, at=datetime.now(UTC))
        taken: list[Run] = []
        if found.runs:  # parts are not runs (one may complete a group: the bound is loose)
            await self._check_queue()
            if self._start_worker():
                taken = self.worker.take(found.runs)  # the write is their claim
        write = self._store_and_start(artifact, found, taken)
        if not taken:
            return await write
        # Runs stored claimed by this worker must start (or be released), even if the caller
        # stops waiting: the write goes on without it.
        going = asyncio.ensure_future(write)
        going.add_done_callback(_retrieved)
        return await asyncio.shield(going)

    async def _store_and_start(
        self, artifact: Artifact, found: Triggers, taken: Sequence[Run]
    ) -> Artifact:
        created: set[str] = set()
        try:
            stored = await self._store.publish(
                artifact,
                found.runs,
                parts=found.parts,
                max_runs=self.max_runs_per_correlation,
                created=created,
            )
        finally:
            self.worker.untake(taken)
        if stored is artifact:
            self.stats.artifacts_published += 1
            handed = self.worker.hand_on(taken, created, (artifact,))
            if found.parts or len(handed) < len(created):
                self._runs_queued()  # something waits to be claimed
            elif found:
                self._listen()
            self.worker.note_deadline(found.next_deadline())
        return stored

    async def watch_queue(self, interval: float = QUEUE_GAUGE_SECONDS) -> None:
        """Keep `stats.runs_queued` and `stats.open_groups` (the `flock_runs_queued` and
        `flock_open_groups` gauges) current: the store's queued runs and open groups per
        agent, read every `interval` seconds. Runs until cancelled."""
        while True:
            try:
                queued = await self._store.queued_by_agent()
                groups = await self._store.open_groups()
            except Exception as exc:
                logger.debug("cannot read the queued runs: %s", exc)
            else:
                names = [a.name for a in self.agents]
                self.stats.runs_queued = {name: queued.get(name, 0) for name in names}
                self.stats.open_groups = {name: groups.get(name, 0) for name in names}
            await asyncio.sleep(interval)

    async def _check_queue(self) -> None:
        """Refuse a publish that would queue runs past `max_queued_runs` (backpressure).

        The store's count is read at most every `_QUEUE_CHECK_SECONDS`, so the bound is
        approximate by what is published in that time, and costs no query per publish.
        """
        now = time.monotonic()
        if now - self._queue_checked_at >= _QUEUE_CHECK_SECONDS:
            self._queued = (await self._store.progress()).pending_runs
            self._queue_checked_at = now
        limit = self.worker.settings.max_queued_runs
        if self._queued >= limit:
            raise RunQueueFullError(
                f"{self._queued} runs are queued, the limit is {limit} (FLOCK_MAX_QUEUED_RUNS); "
                "nothing was stored: retry later"
            )
        self._queued += 1

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

    def triggered_by(self, outputs: Sequence[Artifact], *, principal: str | None) -> Triggers:
        """The runs and group parts a run's outputs trigger (stored when the run commits)."""
        self._ensure_ready()
        return triggers_of(self._by_type, outputs, principal=principal, at=datetime.now(UTC))

    def caps(self) -> Mapping[str, int]:
        """`max_concurrency` of every agent that has one."""
        self._ensure_ready()
        return self._caps

    # -- executing --------------------------------------------------------------------------

    def start(self) -> None:
        """Start this flock's worker in the running loop (publishing does it, too), and
        listen for other processes' changes where the store tells of them."""
        self._listen()
        if self.worker_enabled:
            self.watch.reopen()
            self.worker.start()

    def _listen(self) -> None:
        task = self._listening
        loop = asyncio.get_running_loop()
        if task is None or (task.done() and task.get_loop() is not loop):
            self._listening = loop.create_task(self._subscribe())

    async def _subscribe(self) -> None:
        try:
            self.watch.notified = await self._store.subscribe(self._notified)
        except Exception:
            logger.exception("cannot subscribe to the store's notifications; polling")

    def _notified(self, payload: str) -> None:
        """Another process (or this one) changed the store: wake whoever it concerns."""
        runs, correlation_ids = parse_notification(payload)
        if runs and self.worker_enabled and self.worker.running:
            self.worker.wake()
        for correlation_id in correlation_ids:
            if correlation_id == EVERYTHING:
                self.watch.changed_all()
            else:
                self.watch.changed(correlation_id)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop executing runs: running engines get `grace` seconds, then their runs are
        released to other workers; waiters answer at once (not completed)."""
        await self.worker.stop(grace)
        self.watch.close()

    def _start_worker(self) -> bool:
        """Listen, and start this flock's worker if it executes runs; True if it runs."""
        self._listen()
        if not self.worker_enabled:
            return False
        if not self.worker.running and not self.watch.closed and not self.worker.draining:
            self.worker.start()
        return self.worker.running

    def _runs_queued(self) -> None:
        if self._start_worker():
            self.worker.wake()

    async def execute_engines(
        self, agent: Agent, inputs: Sequence[Artifact], ctx: RunContext
    ) -> list[Artifact]:
        """Run the agent's engines on the inputs; return its validated output artifacts,
        with ids derived from the run id and their index."""
        models = [a.model() for a in inputs]
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
                        correlation_id=ctx.correlation_id,
                        id=output_id_for(ctx.run_id, len(outputs)),
                        partition_key=partition_key,
                        visibility=inherit_visibility(output.visibility, inputs),
                        _model=value,
                    )
                )
        return [validate_artifact(o) for o in outputs]  # a bad output fails the run

    # -- waiting and status -----------------------------------------------------------------

    async def run_until_idle(
        self, correlation_id: str | None = None, *, timeout: float | None = None
    ) -> None:
        """Wait until no run (of `correlation_id`, or of anything) is queued or running.

        Raises TimeoutError after `timeout` seconds; the agents' work is never cancelled.
        A cancelled correlation counts as idle.
        """
        # A worker starting claims at once what is due (runs a crashed process left
        # behind too); a running one has claimed it or learns of it as it does of any run.
        self._start_worker()
        outcome = await self.watch.wait(self._store, correlation_id, timeout)
        if outcome is WaitOutcome.TIMEOUT:
            raise TimeoutError(f"still running after {timeout:g} s")

    async def wait_for_correlation(self, correlation_id: str, timeout: float) -> bool:
        """True once the correlation is idle, False if `timeout` seconds passed first (or it
        was cancelled, or this process stopped executing runs)."""
        return (await self.wait_outcome(correlation_id, timeout)).completed

    async def wait_outcome(self, correlation_id: str, timeout: float | None) -> WaitOutcome:
        """How waiting up to `timeout` seconds for the correlation ended."""
        self._listen()
        return await self.watch.wait(self._store, correlation_id, timeout)

    async def wait_status(
        self, correlation_id: str, timeout: float | None
    ) -> tuple[WaitOutcome, CorrelationStatus | None]:
        """How waiting ended, and the correlation's status as read last (current unless
        the wait timed out or this process stopped executing runs)."""
        self._listen()
        return await self.watch.wait_status(self._store, correlation_id, timeout)

    async def correlation_status(self, correlation_id: str) -> CorrelationStatus | None:
        """The correlation as the store derives it from its runs (None if unknown)."""
        return await self._store.get_correlation(correlation_id)

    async def resume(self, correlation_id: str | None = None) -> int:
        """Kept for compatibility: runs are recovered automatically. Makes sure this flock's
        worker looks for due runs now and returns how many runs of it are pending."""
        self._runs_queued()
        return (await self._store.progress(correlation_id)).pending

    async def cancel(self, correlation_id: str) -> CorrelationStatus | None:
        """Cancel a cascade: queued runs are cancelled, running engines get CancelledError
        and their outputs are dropped, no further run starts. None if the id is unknown."""
        if not await self._store.cancel_correlation(correlation_id):
            return None
        self.worker.cancel_local(correlation_id)
        # Every waiter looks again: the cancelled runs of joins and batches were pending
        # work of other correlations too.
        self.watch.changed_all()
        return await self._store.get_correlation(correlation_id)

    # -- runs -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        return await self._store.get_run(run_id)

    async def list_runs(
        self, filters: RunFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[Run], int]:
        return await self._store.query_runs(filters, limit, offset)

    async def retry_run(self, run_id: str) -> Run | None:
        """Queue a dead or cancelled run again with fresh attempts (None if unknown;
        `InvalidRunStateError` for a run in any other state)."""
        run = await self._store.retry_run(run_id)
        if run is not None:
            self._runs_queued()
            self.watch.changed(run.correlation_id)
        return run

    # -- direct runs ------------------------------------------------------------------------

    async def direct_invoke(
        self, agent: str | Agent | AgentBuilder, inputs: Sequence[BaseModel | Artifact]
    ) -> list[Artifact]:
        """Run one agent on the inputs, store its outputs, and trigger no other agent.

        The attempt is bounded by the agent's timeout (`FLOCK_RUN_TIMEOUT` by default).
        """
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
        artifacts = target.in_declared_order(artifacts)
        ctx = RunContext(target.name, correlation_id, tuple(artifacts), self, new_id(), 1)
        ctx.batch = target.takes_list(artifacts)
        timeout = target.timeout or self.worker.settings.run_timeout
        try:
            async with asyncio.timeout(timeout):
                outputs = await self.execute_engines(target, artifacts, ctx)
        except Exception:
            self.stats.agent_failures += 1
            raise
        finally:
            self.stats.agent_runs += 1
        for output in outputs:
            await self._store.publish(output)
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
        in flight finish, for up to `shutdown_grace` seconds, default `FLOCK_SHUTDOWN_GRACE`),
        then it returns.
        """
        import uvicorn

        # The one place core reaches up: the HTTP layer is optional for library users.
        from flock.api.service import BlackboardHTTPService
        from flock.server import GRACEFUL_SHUTDOWN_SECONDS, DrainingServer
        from flock.settings import load_settings

        service = BlackboardHTTPService(self, idempotency=idempotency, api_keys=api_keys)
        uvicorn_options.setdefault("timeout_graceful_shutdown", GRACEFUL_SHUTDOWN_SECONDS)
        config = uvicorn.Config(service.app, host=host, port=port, **uvicorn_options)
        grace = load_settings().shutdown_grace if shutdown_grace is None else shutdown_grace
        DrainingServer(config, service, grace).run()

    async def close(self) -> None:
        """Stop the worker (releasing its runs), then close the store."""
        await self.stop(0.0)
        if self._listening is not None:
            self._listening.cancel()
        if self._engine_threads is not None:
            self._engine_threads.shutdown()
            self._engine_threads = None
        await self._store.close()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Its caller may have gone: an error it raised is the caller's, not a loose end."""
    if not task.cancelled():
        task.exception()


def _as_list(result: Any) -> list[Any]:
    if result is None:
        return []
    if isinstance(result, list | tuple):
        return list(result)
    return [result]


__all__ = ["Flock", "FlockStats"]
