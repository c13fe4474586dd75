"""Prometheus metrics, one registry per service (two apps in a process never share one)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from flock.core.stats import RUN_BUCKETS, FlockStats

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _StatsCollector(Collector):
    """Reads the orchestrator's counters at scrape time: nothing is paid per event."""

    def __init__(self, stats: FlockStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for name, doc, value in (
            ("flock_artifacts_published", "Artifacts published", self._stats.artifacts_published),
            ("flock_agent_runs", "Agent runs finished", self._stats.agent_runs),
            ("flock_agent_failures", "Agent runs that raised", self._stats.agent_failures),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        tokens = CounterMetricFamily(
            "flock_llm_tokens", "Model tokens spent by agent and kind", labels=("agent", "kind")
        )
        for (agent, kind), value in sorted(self._stats.llm_tokens.items()):
            tokens.add_metric((agent, kind), value)
        yield tokens
        requests = CounterMetricFamily(
            "flock_llm_requests",
            "Model requests sent by agent and outcome",
            labels=("agent", "outcome"),
        )
        for (agent, outcome), value in sorted(self._stats.llm_requests.items()):
            requests.add_metric((agent, outcome), value)
        yield requests
        yield from self._runs()

    def _runs(self) -> Iterator[Metric]:
        stats = self._stats
        runs = CounterMetricFamily(
            "flock_runs", "Run attempts ended, by agent and outcome", labels=("agent", "outcome")
        )
        for (agent, outcome), value in sorted(stats.run_outcomes.items()):
            runs.add_metric((agent, outcome), value)
        yield runs
        queued = GaugeMetricFamily(
            "flock_runs_queued", "Runs waiting to be claimed, per agent", labels=("agent",)
        )
        for agent, count in sorted(stats.runs_queued.items()):
            queued.add_metric((agent,), count)
        yield queued
        groups = GaugeMetricFamily(
            "flock_open_groups",
            "Open AND-gate, join and batch groups waiting for parts, per agent",
            labels=("agent",),
        )
        for agent, count in sorted(stats.open_groups.items()):
            groups.add_metric((agent,), count)
        yield groups
        yield CounterMetricFamily(
            "flock_runs_fenced", "Run results dropped: the lease was lost", value=stats.runs_fenced
        )
        yield CounterMetricFamily(
            "flock_runs_recovered",
            "Runs taken over after their worker's lease ran out",
            value=stats.runs_recovered,
        )
        for name, doc, histograms in (
            ("flock_run_duration_seconds", "Run attempt durations", stats.run_durations),
            (
                "flock_run_queue_seconds",
                "Runs' waits before starting",
                stats.run_queue_waits,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=("agent",))
            for agent, histogram in sorted(histograms.items()):
                buckets = [
                    (repr(bound), count)
                    for bound, count in zip(RUN_BUCKETS, histogram.buckets, strict=True)
                ]
                buckets.append(("+Inf", histogram.count))
                family.add_metric((agent,), buckets, histogram.total)
            yield family


class _OutcomesCollector(Collector):
    def __init__(self, outcomes: dict[str, int]) -> None:
        self._outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "flock_idempotency_requests", "Keyed requests by outcome", labels=("outcome",)
        )
        for outcome, value in sorted(self._outcomes.items()):
            family.add_metric((outcome,), value)
        yield family


def register_flock_metrics(registry: CollectorRegistry, stats: FlockStats) -> None:
    """What every process exports: the flock's counters, and prometheus-client's default
    collectors (process CPU/memory/fds, GC, Python), stateless readers of this process, so
    sharing them across registries is safe."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(_StatsCollector(stats))


class ServiceMetrics:
    """HTTP, sync-publish and idempotency metrics of one service."""

    def __init__(self, stats: FlockStats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        register_flock_metrics(self.registry, stats)
        self.requests = Counter(
            "flock_http_requests",
            "HTTP requests by route and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "flock_http_request_duration_seconds",
            "HTTP request latency by route and status",
            ("method", "route", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.sync_outcomes = Counter(
            "flock_sync_requests",
            "Sync publish outcomes (completed or timeout)",
            ("outcome",),
            registry=self.registry,
        )
        self._sync_children: dict[bool, Counter] = {}  # labelled on first use, as exported
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def watch_idempotency(self, outcomes: dict[str, int]) -> None:
        """Export the guard's outcome counts (executed, replayed, conflict, ...)."""
        self.registry.register(_OutcomesCollector(outcomes))

    def count_sync(self, completed: bool) -> None:
        """One sync publish answered: its cascade completed, or the wait timed out."""
        child = self._sync_children.get(completed)
        if child is None:
            child = self.sync_outcomes.labels("completed" if completed else "timeout")
            self._sync_children[completed] = child
        child.inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


__all__ = ["ServiceMetrics", "register_flock_metrics"]
