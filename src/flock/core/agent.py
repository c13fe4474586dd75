"""Agents and the fluent builder that declares them."""

from __future__ import annotations

import contextvars
import inspect
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

from flock.core.artifacts import Artifact
from flock.core.groups import BatchSpec, JoinSpec
from flock.core.runs import RetryPolicy, Usage
from flock.core.visibility import PUBLIC, AnyVisibility, Identity, may_consume
from flock.registry import type_registry

if TYPE_CHECKING:
    from flock.core.orchestrator import Flock

Predicate = Callable[[Any], bool]


class AgentConfigError(ValueError):
    """An agent is declared wrongly (no engine, duplicate name, bad argument)."""


class AgentOutputError(TypeError):
    """An agent's engine returned something it did not declare in `publishes`."""


@dataclass(slots=True)
class RunContext:
    """What an engine is told about the run it serves.

    `run_id` is stable across the run's attempts: key side effects on it to make them
    idempotent. `attempt` is 1-based. Engines that call models add what they spent to
    `usage`; it is stored with the run.
    """

    agent: str
    correlation_id: str
    artifacts: tuple[Artifact, ...]
    flock: Flock
    run_id: str = ""
    attempt: int = 1
    usage: Usage = field(default_factory=Usage)
    batch: bool = False  # the run is a batch: a callable engine gets its inputs as a list

    @property
    def inputs(self) -> tuple[Artifact, ...]:
        """The input artifacts, in the order the engine receives their models."""
        return self.artifacts


@runtime_checkable
class Engine(Protocol):
    """An object engine: `await engine.evaluate(ctx, inputs)` returns model(s) or None."""

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any: ...


@dataclass(frozen=True, slots=True)
class Subscription:
    """One `consumes(...)` clause.

    `types` are the declared type names in order (a type may repeat): one type is a plain
    subscription, several an AND gate (section 7); `join` and `batch` shape the group.
    """

    type_names: frozenset[str]
    where: tuple[Predicate, ...] = ()
    from_agents: frozenset[str] | None = None
    channels: frozenset[str] | None = None
    types: tuple[str, ...] = ()
    join: JoinSpec | None = None
    batch: BatchSpec | None = None

    @property
    def grouped(self) -> bool:
        """Its artifacts wait in groups instead of starting a run each."""
        return self.batch is not None or self.join is not None or len(self.types) > 1

    def accepts(self, artifact: Artifact) -> bool:
        if artifact.type not in self.type_names:
            return False
        if self.from_agents is not None and artifact.produced_by not in self.from_agents:
            return False
        if self.channels is not None and not (self.channels & artifact.tags):
            return False
        if self.where:
            model = artifact.model()
            return all(predicate(model) for predicate in self.where)
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "types": list(self.types) or sorted(self.type_names),
            "mode": "batch"
            if self.batch
            else "join"
            if self.join
            else ("and" if len(self.types) > 1 else "single"),
            "from_agents": sorted(self.from_agents) if self.from_agents is not None else None,
            "channels": sorted(self.channels) if self.channels is not None else None,
            "has_where": bool(self.where),
            "join": {"within": self.join.within} if self.join else None,
            "batch": (
                {"size": self.batch.size, "timeout": self.batch.timeout} if self.batch else None
            ),
        }


@dataclass(frozen=True, slots=True)
class Output:
    """One `publishes(...)` clause: a model and the visibility its artifacts get."""

    model: type[BaseModel]
    type_name: str
    visibility: AnyVisibility = PUBLIC


class _CallableEngine:
    """Adapts a plain (sync or async) function to the engine protocol."""

    __slots__ = ("_fn", "_is_async")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        )

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        # One argument per input, in declared order (an AND gate gets several); a batch
        # gets one list.
        args: tuple[Any, ...] = (list(inputs),) if ctx.batch else tuple(inputs)
        if self._is_async:
            return await self._fn(*args)
        # A plain function may block: it runs on the flock's engine threads, never the loop,
        # in a copy of this context (so its log records name the run, as an async one's do).
        result = await ctx.flock.engine_threads.run(contextvars.copy_context().run, self._fn, *args)
        if inspect.isawaitable(result):
            return await result
        return result


@dataclass(eq=False)
class Agent:
    """A declared agent. Build one with `flock.agent(name)`."""

    name: str
    description: str = ""
    subscriptions: list[Subscription] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    engines: list[Engine] = field(default_factory=list)
    max_concurrency: int | None = None  # runs at once across every worker; None: no cap
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None  # seconds per attempt; None: the flock's default
    prevent_self_trigger: bool = True
    labels: frozenset[str] = frozenset()
    tenant: str | None = None
    _identity: Identity | None = field(default=None, repr=False)

    @property
    def identity(self) -> Identity:
        # Asked for every artifact the agent might consume: built once, rebuilt if changed.
        cached = self._identity
        if (
            cached is None
            or cached.name != self.name
            or cached.labels != self.labels
            or cached.tenant != self.tenant
        ):
            cached = self._identity = Identity(self.name, self.labels, self.tenant)
        return cached

    def may_take(self, artifact: Artifact) -> bool:
        """It may consume the artifact: it can see it, and did not publish it itself
        (unless self-triggering is allowed)."""
        if self.prevent_self_trigger and artifact.produced_by == self.name:
            return False
        return may_consume(self.identity, artifact.visibility)

    def subscribes_to(self, artifact: Artifact) -> bool:
        return self.may_take(artifact) and any(sub.accepts(artifact) for sub in self.subscriptions)

    def takes_list(self, inputs: Sequence[Artifact]) -> bool:
        """Whether a callable engine gets these inputs as one list: a batch subscription's
        run (declarations never leave that ambiguous, see `consumes`), or several inputs
        no AND gate of the agent takes one by one (a direct run). Otherwise it gets one
        positional argument per input."""
        kinds = {a.type for a in inputs}
        if any(sub.batch is not None and kinds <= sub.type_names for sub in self.subscriptions):
            return True
        return len(inputs) > 1 and not any(
            sub.batch is None and len(sub.types) == len(inputs) for sub in self.subscriptions
        )

    def fits(self, inputs: Sequence[Artifact]) -> bool:
        """The inputs are what one of its subscriptions runs on: artifacts of a one-type or
        batch subscription's types, or exactly an AND gate's types."""
        if len(inputs) == 1:  # the common case, without counting
            kind = inputs[0].type
            for sub in self.subscriptions:
                if kind in sub.type_names and (sub.batch is not None or len(sub.types) <= 1):
                    return True
            return False
        types = Counter(a.type for a in inputs)
        for sub in self.subscriptions:
            if sub.batch is not None or len(sub.types) <= 1:
                if inputs and all(t in sub.type_names for t in types):
                    return True
            elif Counter(sub.types) == types:
                return True
        return False

    def in_declared_order(self, inputs: Sequence[Artifact]) -> list[Artifact]:
        """The inputs in the order of the AND gate whose types they are (as given when they
        fit no gate): a direct run's engine gets them as a triggered run's would."""
        types = Counter(a.type for a in inputs)
        for sub in self.subscriptions:
            if sub.batch is None and len(sub.types) > 1 and Counter(sub.types) == types:
                pool = list(inputs)
                ordered = []
                for type_name in sub.types:
                    item = next(a for a in pool if a.type == type_name)
                    pool.remove(item)
                    ordered.append(item)
                return ordered
        return list(inputs)

    def output_for(self, value: BaseModel) -> Output:
        for output in self.outputs:
            if type(value) is output.model:
                return output
        for output in self.outputs:
            if isinstance(value, output.model):
                return output
        declared = ", ".join(o.type_name for o in self.outputs) or "nothing"
        raise AgentOutputError(
            f"agent {self.name!r} returned {type(value).__name__}, which it does not publish "
            f"(declared: {declared})"
        )

    def validate(self) -> None:
        if not self.engines:
            raise AgentConfigError(
                f"agent {self.name!r} has no engine; call .with_engines(fn) before using the flock"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "subscriptions": [s.describe() for s in self.subscriptions],
            "outputs": [
                {"type": o.type_name, "visibility": o.visibility.kind} for o in self.outputs
            ],
            "max_concurrency": self.max_concurrency,
            "max_attempts": self.retry_policy.max_attempts,
            "timeout": self.timeout,
            "labels": sorted(self.labels),
            "tenant": self.tenant,
        }


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(t: type[BaseModel] | str) -> str:
    if isinstance(t, str):
        type_registry.resolve(t)
        return t
    return type_registry.name_for(t)


def _names(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset((value,))
    return frozenset(value)


class AgentBuilder:
    """The fluent declaration API returned by `Flock.agent(name)`; every method returns self."""

    def __init__(self, flock: Flock, agent: Agent) -> None:
        self._flock = flock
        self.agent = agent

    @property
    def name(self) -> str:
        return self.agent.name

    def description(self, text: str) -> AgentBuilder:
        self.agent.description = text
        return self

    def consumes(
        self,
        *types: type[BaseModel] | str,
        where: Predicate | Sequence[Predicate] | None = None,
        from_agents: str | Iterable[str] | None = None,
        channels: str | Iterable[str] | None = None,
        join: JoinSpec | None = None,
        batch: BatchSpec | None = None,
    ) -> AgentBuilder:
        """Subscribe to artifacts. One type: a run per artifact. Several types in one call:
        an AND gate, one run once the correlation holds one of each (`join=` groups by a
        key across correlations instead). `batch=`: one run per batch of one type's
        artifacts. Chained calls are an OR: each one triggers runs on its own."""
        name = self.agent.name
        if not types:
            raise AgentConfigError(f"agent {name!r}: consumes() needs at least one type")
        if where is None:
            predicates: tuple[Predicate, ...] = ()
        elif callable(where):
            predicates = (where,)
        else:
            predicates = tuple(where)
        for predicate in predicates:
            if not callable(predicate):
                raise AgentConfigError(f"agent {name!r}: where= takes callables, got {predicate!r}")
        if join is not None and not isinstance(join, JoinSpec):
            raise AgentConfigError(f"agent {name!r}: join= takes a JoinSpec, got {join!r}")
        if batch is not None and not isinstance(batch, BatchSpec):
            raise AgentConfigError(f"agent {name!r}: batch= takes a BatchSpec, got {batch!r}")
        ordered = tuple(_type_name(t) for t in types)
        if batch is not None and (join is not None or len(set(ordered)) > 1):
            raise AgentConfigError(
                f"agent {name!r}: batch= gathers artifacts of one type; it takes no join= "
                "and no other type"
            )
        if batch is not None:
            ordered = ordered[:1]
        if join is not None and len(ordered) < 2:
            raise AgentConfigError(f"agent {name!r}: join= needs two or more types to join")
        subscription = Subscription(
            frozenset(ordered),
            predicates,
            _names(from_agents),
            _names(channels),
            ordered,
            join,
            batch,
        )
        for other in self.agent.subscriptions:
            clash = other.type_names & subscription.type_names
            if clash and (other.batch is not None) != (batch is not None):
                raise AgentConfigError(
                    f"agent {name!r}: {', '.join(sorted(clash))} would reach it both in "
                    "batches and one by one; declare the batch on an agent of its own"
                )
        self.agent.subscriptions.append(subscription)
        self._flock._agents_changed()
        return self

    def publishes(
        self, *types: type[BaseModel], visibility: AnyVisibility | None = None
    ) -> AgentBuilder:
        if not types:
            raise AgentConfigError(
                f"agent {self.agent.name!r}: publishes() needs at least one type"
            )
        for model in types:
            self.agent.outputs.append(
                Output(model, type_registry.name_for(model), visibility or PUBLIC)
            )
        return self

    def with_engines(
        self, *engines: Engine | Callable[..., Any] | Callable[..., Awaitable[Any]]
    ) -> AgentBuilder:
        if not engines:
            raise AgentConfigError(f"agent {self.agent.name!r}: with_engines() needs an engine")
        for engine in engines:
            if isinstance(engine, Engine) and not inspect.isfunction(engine):
                self.agent.engines.append(engine)
            elif callable(engine):
                self.agent.engines.append(_CallableEngine(engine))
            else:
                raise AgentConfigError(
                    f"agent {self.agent.name!r}: an engine is a callable or has evaluate(), "
                    f"got {engine!r}"
                )
        return self

    def max_concurrency(self, n: int) -> AgentBuilder:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise AgentConfigError(
                f"agent {self.agent.name!r}: max_concurrency must be an int >= 1, got {n!r}"
            )
        self.agent.max_concurrency = n
        return self

    def retry(
        self,
        max_attempts: int = 3,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        backoff: float = 2.0,
        non_retryable: Iterable[type[BaseException]] = (),
    ) -> AgentBuilder:
        """How a failed run is retried: up to `max_attempts` attempts in all, waiting a
        jittered `initial_delay * backoff**n` (at most `max_delay`) seconds in between;
        exceptions of a `non_retryable` type end the run at once."""
        name = self.agent.name
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise AgentConfigError(f"agent {name!r}: max_attempts must be an int >= 1")
        for label, value in (("initial_delay", initial_delay), ("max_delay", max_delay)):
            if not _finite(value) or value < 0:
                raise AgentConfigError(f"agent {name!r}: {label} must be a number >= 0")
        if not _finite(backoff) or backoff < 1:
            raise AgentConfigError(f"agent {name!r}: backoff must be a number >= 1")
        kinds = tuple(non_retryable)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise AgentConfigError(f"agent {name!r}: non_retryable takes exception types")
        self.agent.retry_policy = RetryPolicy(
            max_attempts, float(initial_delay), float(max_delay), float(backoff), kinds
        )
        return self

    def timeout(self, seconds: float | None) -> AgentBuilder:
        """Bound one attempt to `seconds`; past it the engine is cancelled and the attempt
        fails (retryably). None: the flock's default (`FLOCK_RUN_TIMEOUT`, 600 s)."""
        if seconds is not None and (not _finite(seconds) or seconds <= 0):
            raise AgentConfigError(
                f"agent {self.agent.name!r}: timeout must be a number of seconds > 0"
            )
        self.agent.timeout = None if seconds is None else float(seconds)
        return self

    def prevent_self_trigger(self, enabled: bool = True) -> AgentBuilder:
        self.agent.prevent_self_trigger = enabled
        return self

    def labels(self, *labels: str) -> AgentBuilder:
        self.agent.labels = self.agent.labels | frozenset(labels)
        return self

    def tenant(self, tenant_id: str | None) -> AgentBuilder:
        self.agent.tenant = tenant_id
        return self


__all__ = [
    "Agent",
    "AgentBuilder",
    "AgentConfigError",
    "AgentOutputError",
    "Engine",
    "Output",
    "RunContext",
    "Subscription",
]
