"""The worker: claims due runs under a lease, executes their engines, commits fenced results.

One worker runs inside every `Flock` that executes runs (the library, `flock serve`). It
holds at most `concurrency` runs at once; each run's lease is renewed while its engine runs,
and every write about the run names the fence its claim returned, so a worker that lost the
lease (it froze, or the store was out of reach) can neither commit nor fail the run: the
worker that took the run over does. Nothing here is the source of truth: the store is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from flock import logs
from flock.core.agent import AgentOutputError, RunContext
from flock.core.failures import describe_failure
from flock.core.runs import NonRetryableError, Run, RunState
from flock.core.store.protocol import ClaimedRun, StoreUnavailableError
from flock.core.store.shared import LEASE_LOST, start_attempt
from flock.core.validation import ArtifactValidationError
from flock.core.visibility import VisibilityError

if TYPE_CHECKING:
    from flock.core.artifacts import Artifact
    from flock.core.orchestrator import Flock

logger = logging.getLogger("flock.worker")

StopReason = Literal["cancelled", "lost", "shutdown"]
# How often a worker looks for open groups (joins, batches) whose deadline came, at most:
# any live worker settles them, whoever saw their first part. Its own parts' deadlines
# wake it on time.
GROUP_CHECK_SECONDS = 2.0
# How long a stop waits for the claim loop to end by itself before cancelling it.
LOOP_END_SECONDS = 10.0
# What a run's outputs got wrong: another attempt of the same engine would repeat it.
_BAD_OUTPUT = (AgentOutputError, ArtifactValidationError, VisibilityError)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker runs runs.

    - concurrency (`FLOCK_WORKER_CONCURRENCY`, 64): runs this process executes at once.
    - lease_seconds (`FLOCK_RUN_LEASE`, 30): how long a claim holds without renewal; a run
      whose worker died is taken over by another one this long after its last renewal.
    - run_timeout (`FLOCK_RUN_TIMEOUT`, 600): seconds per attempt unless `agent.timeout()`.
    - poll_seconds (`FLOCK_WORKER_POLL`, 1): how often an idle worker looks for runs queued
      by other processes (a fallback; runs of this process wake it at once).
    - max_queued_runs (`FLOCK_MAX_QUEUED_RUNS`, 10,000): past this many pending runs in
      the store, publishing refuses (503) and stores nothing.
    """

    concurrency: int = 64
    lease_seconds: float = 30.0
    run_timeout: float = 600.0
    poll_seconds: float = 1.0
    max_queued_runs: int = 10_000

    @classmethod
    def from_env(cls) -> WorkerSettings:
        """The `FLOCK_*` values (see `flock.settings`)."""
        from flock.settings import load_settings

        settings = load_settings()
        return cls(
            concurrency=settings.worker_concurrency,
            lease_seconds=settings.run_lease,
            run_timeout=settings.run_timeout,
            poll_seconds=settings.worker_poll,
            max_queued_runs=settings.max_queued_runs,
        )


@dataclass(eq=False, slots=True)
class _Active:
    """A run this worker executes: its task, the fence of its claim, why it was stopped."""

    claimed: ClaimedRun
    task: asyncio.Task[None] | None = None
    reason: StopReason | None = None
    started: float = 0.0  # time.monotonic() when the attempt began
    # time.monotonic() of the claim or of the last lease renewal
    renewed: float = field(default_factory=time.monotonic)
    ending: bool = False  # its result is being written: a renewal that fails now is moot
    handed_on: bool = False  # its commit gave this worker a run it triggered
    # Its end frees nothing the claim loop waits for (see `_spawn`): it committed, its
    # agent is uncapped, and every run its commit created was handed on to this worker.
    quiet: bool = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def fence(self) -> int:
        return self.claimed.run.fence

    def stop(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        # A run whose result is being written is left to finish: the write may land (it
        # is fenced, so a run cancelled or taken over meanwhile writes nothing), and runs
        # it creates claimed by this worker must be started or released, not stranded.
        if self.task is not None and not self.ending:
            self.task.cancel()


@dataclass(eq=False)
class Worker:
    """Claims and executes the runs of one Flock's store (see the module docstring)."""

    flock: Flock
    settings: WorkerSettings
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _active: dict[str, _Active] = field(default_factory=dict)
    _loop_task: asyncio.Task[None] | None = None
    _keeper: asyncio.Task[None] | None = None  # renews the leases of every run it executes
    _releasing: set[asyncio.Task[None]] = field(default_factory=set)
    _wake: asyncio.Event | None = None
    _claiming: bool = True
    _groups_due: float = 0.0  # loop time of the next look at open groups' deadlines
    _reserved: int = 0  # slots held for runs being committed already claimed (`take`)
    # Stopped claiming on purpose (shutdown): not started again by a publish, only by
    # `start()` itself (`Flock.start`).
    draining: bool = False

    @property
    def running(self) -> bool:
        task = self._loop_task
        return task is not None and not task.done()

    @property
    def active_runs(self) -> int:
        return len(self._active)

    def start(self) -> None:
        """Start claiming in the running event loop (again after a stop, or in a new loop)."""
        loop = asyncio.get_running_loop()
        task = self._loop_task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        keeper = self._keeper
        if keeper is None or keeper.done() or keeper.get_loop() is not loop:
            # A new loop: what ran in the old one is gone with it.
            self._active = {}
            self._reserved = 0
            self._keeper = loop.create_task(self._keep_leases(), name=f"flock-leases {self.name}")
        self._wake = asyncio.Event()
        self._claiming = True
        self.draining = False
        self._groups_due = 0.0  # at once: groups a stopped process left may be due
        self._loop_task = loop.create_task(self._claim_loop(), name=f"flock-worker {self.name}")

    def wake(self) -> None:
        """Something may be due: look for runs now."""
        if self._wake is not None:
            self._wake.set()

    def note_deadline(self, deadline: datetime | None) -> None:
        """An open group of this process's making falls due at `deadline`: settle it then."""
        if deadline is None or self._wake is None:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + (deadline - datetime.now(UTC)).total_seconds()
        if due < self._groups_due:
            self._groups_due = due
            self._wake.set()

    async def _settle_groups(self) -> None:
        """Settle the open groups whose deadline came (a batch runs with what it gathered,
        a join part past its window is dropped), and plan the next look."""
        loop = asyncio.get_running_loop()
        next_look = loop.time() + GROUP_CHECK_SECONDS
        try:
            flush = await self.flock.store.flush_groups()
        except Exception as exc:
            logger.warning("cannot settle open groups, retrying: %s", exc)
            self._groups_due = next_look
            return
        for correlation_id in flush.correlation_ids:
            self.flock.watch.changed(correlation_id)
        if flush.next_deadline is not None:
            wait = (flush.next_deadline - datetime.now(UTC)).total_seconds()
            # Never sooner than 50 ms: a due group is settled by now, whatever it said.
            next_look = min(next_look, loop.time() + max(wait, 0.05))
        self._groups_due = next_look

    def stop_claiming(self) -> None:
        self._claiming = False
        self.draining = True
        self.wake()

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running engines `grace` seconds, then release what is left
        (queued again at once, the attempt not counted) for another worker to take."""
        self.stop_claiming()
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        left = [a for a in self._active.values() if a.task is not None and not a.task.done()]
        for active in left:
            active.stop("shutdown")
        if left:
            logger.info("shutdown: releasing %d run(s) still running", len(left))
            await asyncio.gather(*(a.task for a in left if a.task), return_exceptions=True)
        claiming = self._loop_task
        if (
            claiming is not None
            and not claiming.done()
            and claiming.get_loop() is asyncio.get_running_loop()
        ):
            # It ends by itself once it sees the stop (a claim in flight is released, not
            # cut off with its runs claimed); its store calls are bounded by deadlines.
            await asyncio.wait([claiming], timeout=LOOP_END_SECONDS)
        while self._releasing:  # runs that never began, handed back before the store closes
            await asyncio.gather(*self._releasing, return_exceptions=True)
        tasks = [t for t in (self._loop_task, self._keeper) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def runs_correlation(self, correlation_id: str) -> bool:
        """True while a run of the correlation executes here, not stopped, and has not
        ended: its end (in `_execute`) wakes the correlation's waiters, or leaves it a
        pending run. A stopped run (cancelled, lost, shutdown) may end without a look at
        the store's state, or never start: it does not count."""
        for active in self._active.values():
            task = active.task
            if (
                task is not None
                and active.reason is None
                and not task.done()
                and active.claimed.run.correlation_id == correlation_id
            ):
                return True
        return False

    def cancel_local(self, correlation_id: str) -> None:
        """Cancel the engines this worker runs for the correlation (it was cancelled)."""
        for active in list(self._active.values()):
            if active.claimed.run.correlation_id == correlation_id:
                active.stop("cancelled")

    # -- the claim loop ---------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self._wake is not None
        wake, settings = self._wake, self.settings
        failures = 0
        loop = asyncio.get_running_loop()
        while self._claiming:
            wake.clear()
            if loop.time() >= self._groups_due:
                await self._settle_groups()
            delay = min(settings.poll_seconds, max(self._groups_due - loop.time(), 0.0))
            free = settings.concurrency - len(self._active) - self._reserved
            if free > 0:
                try:
                    claimed = await self.flock.store.claim_runs(
                        self.name, free, settings.lease_seconds, self.flock.caps()
                    )
                    failures = 0
                    if not self._claiming:  # stopped meanwhile: another worker's now
                        self._release_later([item.run for item in claimed])
                        break
                    for item in claimed:
                        self._spawn(item)
                    if len(claimed) == free:
                        continue  # perhaps more are due; free slots wake us
                    # Nothing more is due now. With runs started, their ends wake us (a
                    # retry falling due meanwhile waits at most the poll); idle, sleep until
                    # the next run falls due (one due already is held back by a cap).
                    due = None if claimed else await self.flock.store.next_due()
                    if due is not None:
                        wait = (due - datetime.now(UTC)).total_seconds()
                        if wait > 0:
                            delay = min(delay, wait)
                except StoreUnavailableError as exc:
                    failures += 1
                    if failures == 1:  # once per outage, not on every retry
                        logger.warning("cannot claim runs, retrying until it can: %s", exc)
                    delay = min(0.05 * 2**failures, settings.poll_seconds)
                except Exception:
                    failures += 1
                    logger.exception("could not claim runs (attempt %d); retrying", failures)
                    delay = min(0.05 * 2**failures, settings.poll_seconds)
            if not self._claiming:
                break
            if delay > 0:
                timer = loop.call_later(delay, wake.set)
                await wake.wait()
                timer.cancel()

    def _spawn(self, claimed: ClaimedRun) -> None:
        active = _Active(claimed)
        run_id = claimed.run.id
        self._active[run_id] = active
        task = asyncio.get_running_loop().create_task(self._execute(active))
        active.task = task

        def done(finished: asyncio.Task[None]) -> None:
            full = len(self._active) + self._reserved >= self.settings.concurrency
            if self._active.get(run_id) is active:
                del self._active[run_id]
            if finished.cancelled():
                # Cancelled before it began, `_execute` (whose end wakes the waiters and
                # releases a run stopped by a shutdown) never ran: done here instead.
                if active.reason == "shutdown":
                    self._release_later([claimed.run])
                self.flock.watch.changed(claimed.run.correlation_id)
            if active.quiet and (active.handed_on or not full):
                # Its commit left nothing to claim, and it frees no cap room: either the run
                # it handed on holds its slot, or the loop was not waiting for one.
                return
            self.wake()

        task.add_done_callback(done)

    # -- one run ----------------------------------------------------------------------------

    async def _execute(self, active: _Active) -> None:
        flock, store, stats = self.flock, self.flock.store, self.flock.stats
        claimed = active.claimed
        run = claimed.run
        # This task's log records name the run (its own context: nothing leaks elsewhere).
        logs.bind({"correlation_id": run.correlation_id, "run_id": run.id, "agent": run.agent})
        if claimed.recovered:
            stats.runs_recovered += 1
        if run.attempt == 1 and run.started_at is not None:
            stats.count_queue_wait(run.agent, (run.started_at - run.created_at).total_seconds())
        active.started = active.renewed = time.monotonic()
        busy = False  # the correlation is known to be still busy after this run's commit
        try:
            failure = self._unrunnable(claimed)
            if failure is not None:
                await self._fail(active, failure, retryable=False)
                return
            agent = flock.get_agent(run.agent)
            ctx = RunContext(
                agent.name, run.correlation_id, claimed.inputs, flock, run.id, run.attempt
            )
            ctx.batch = agent.takes_list(claimed.inputs)
            timeout = agent.timeout or self.settings.run_timeout
            try:
                async with asyncio.timeout(timeout):
                    outputs = await flock.execute_engines(agent, claimed.inputs, ctx)
            except asyncio.CancelledError:
                if active.reason is None:
                    raise  # not ours: the loop is going away
                if active.reason == "shutdown":
                    await self._release([run])
                elif active.reason == "lost":
                    stats.runs_fenced += 1
                    stats.count_run(run.agent, "fenced")
                return
            except TimeoutError:
                stats.agent_failures += 1
                message = f"TimeoutError: the attempt took longer than {timeout:g} s"
                await self._fail(active, message, retryable=True, usage=ctx)
                return
            except Exception as exc:  # an agent's failure is data, not a crash
                stats.agent_failures += 1
                logger.warning(
                    "agent %s failed on %s (run %s, attempt %d of %d, correlation %s): %s",
                    run.agent,
                    ", ".join(run.input_ids),
                    run.id,
                    run.attempt,
                    run.max_attempts,
                    run.correlation_id,
                    describe_failure(exc),
                    exc_info=exc,
                )
                retryable = agent.retry_policy.retryable(exc) and not isinstance(exc, _BAD_OUTPUT)
                await self._fail(active, describe_failure(exc), retryable=retryable, usage=ctx)
                return
            triggered = flock.triggered_by(outputs, principal=run.principal)
            taken = self.take(triggered.runs)
            active.ending = True
            try:
                commit = await store.complete_run(
                    run.id,
                    active.fence,
                    outputs,
                    triggered.runs,
                    parts=triggered.parts,
                    usage=ctx.usage,
                    max_runs=flock.max_runs_per_correlation,
                )
            finally:
                self.untake(taken)
            if commit is not None:
                self.note_deadline(triggered.next_deadline())
                stats.agent_runs += 1
                stats.artifacts_published += len(outputs)
                stats.count_run(run.agent, "succeeded", seconds=active.elapsed())
                own = [r for r in triggered.runs if r.id in commit.created and r.pending]
                # Its correlation got a run: still busy, its waiters need not look.
                busy = any(r.correlation_id == run.correlation_id for r in own)
                handed = self.hand_on(taken, commit.created, outputs)
                active.handed_on = bool(handed)
                active.quiet = run.agent not in flock.caps() and len(handed) == len(commit.created)
            else:
                stats.runs_fenced += 1
                stats.count_run(run.agent, "fenced")
                logger.warning("run %s lost its lease before committing; dropped", run.id)
        except asyncio.CancelledError:
            if active.reason is None:
                raise
        except Exception:
            # The store failed: the lease runs out and the run is taken over, as after a crash.
            logger.exception(
                "run %s could not be recorded; it is retried once its lease ends", run.id
            )
        finally:
            if not busy:
                flock.watch.changed(run.correlation_id)
            for item in claimed.inputs:  # a join's or batch's other correlations
                if item.correlation_id != run.correlation_id:
                    flock.watch.changed(item.correlation_id)

    def take(self, runs: Sequence[Run]) -> list[Run]:
        """Of runs about to be stored, those this worker executes itself: marked claimed by
        it before they are stored, so the write that creates them is their claim and a
        cascade's next stage starts with no claim query and no wait. Only while this worker
        has slots free (one whose slots are all taken leaves runs queued, for the fair claim
        to order against other callers' runs), and only of uncapped agents (a cap counts
        runs across every worker: those are claimed under it). Their slots stay reserved
        until `untake`; `hand_on` then starts the ones the store created."""
        free = self.settings.concurrency - len(self._active) - self._reserved
        if free <= 0 or not runs or not self._claiming or not self.running:
            return []
        caps = self.flock.caps()
        now = datetime.now(UTC)
        taken: list[Run] = []
        for run in runs:
            if len(taken) == free:
                break
            if run.agent in caps or run.attempt or run.state != RunState.QUEUED:
                continue
            start_attempt(run, self.name, now, self.settings.lease_seconds, recovered=False)
            taken.append(run)
        self._reserved += len(taken)
        return taken

    def untake(self, taken: Sequence[Run]) -> None:
        """The write that was to store `taken` is over: their reserved slots are free."""
        self._reserved -= len(taken)

    def hand_on(
        self, taken: Sequence[Run], created: Collection[str], inputs: Sequence[Artifact]
    ) -> list[Run]:
        """Start those of `taken` that the store created (the others it had already, or
        refused: they are not this worker's); `inputs` holds their input artifacts."""
        handed = [run for run in taken if run.id in created]
        if handed and not self._claiming:  # it stopped meanwhile: another worker's now
            self._release_later(handed)
            return []
        by_id = {a.id: a for a in inputs}
        for run in handed:
            found = tuple(by_id[i] for i in run.input_ids if i in by_id)
            self._spawn(ClaimedRun(run.copy(), found))
        return handed

    def _release_later(self, runs: Sequence[Run]) -> None:
        """Give `runs` back to the queue in a task of their own (`stop` waits for it)."""
        task = asyncio.get_running_loop().create_task(self._release(runs))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, runs: Sequence[Run]) -> None:
        for run in runs:
            try:
                if await self.flock.store.release_run(run.id, run.fence):
                    self.flock.stats.count_run(run.agent, "released")
            except Exception as exc:  # its lease runs out instead
                logger.warning("could not release run %s: %s", run.id, exc)

    def _unrunnable(self, claimed: ClaimedRun) -> str | None:
        run = claimed.run
        if run.attempt > run.max_attempts:
            return f"{LEASE_LOST}; no attempts left ({run.max_attempts} used)"
        try:
            agent = self.flock.get_agent(run.agent)
        except KeyError:
            return f"this app has no agent named {run.agent!r}"
        if len(claimed.inputs) != len(run.input_ids):
            return "an input artifact of the run is missing from the store"
        if not agent.fits(claimed.inputs):
            kinds = ", ".join(a.type for a in claimed.inputs)
            return f"its inputs ({kinds}) fit none of the agent's subscriptions"
        return None

    async def _fail(
        self, active: _Active, message: str, *, retryable: bool, usage: RunContext | None = None
    ) -> None:
        run = active.claimed.run
        retry_at = None
        if retryable and run.attempt < run.max_attempts:
            policy = self.flock.get_agent(run.agent).retry_policy
            retry_at = datetime.now(UTC) + timedelta(seconds=policy.delay(run.attempt))
        active.ending = True
        recorded = await self.flock.store.fail_run(
            run.id,
            active.fence,
            message,
            retry_at=retry_at,
            usage=usage.usage if usage is not None else None,
        )
        stats = self.flock.stats
        stats.agent_runs += 1  # attempts that ended, failed ones included
        if not recorded:
            stats.runs_fenced += 1
            stats.count_run(run.agent, "fenced")
        else:
            outcome = "retried" if retry_at is not None else "dead"
            stats.count_run(run.agent, outcome, seconds=active.elapsed())

    async def _keep_leases(self) -> None:
        """Renew the lease of every run this worker executes about every third of it (at
        most half of it after the last renewal); stop the engine of a run whose lease is
        lost. One task for all runs: a run costs no timer or task of its own."""
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 6)
            now = time.monotonic()
            due = [
                active
                for active in self._active.values()
                if now - active.renewed >= lease / 3 and active.reason is None and not active.ending
            ]
            if due:
                await asyncio.gather(*(self._renew(active) for active in due))

    async def _renew(self, active: _Active) -> None:
        run = active.claimed.run
        active.renewed = time.monotonic()
        try:
            held = await self.flock.store.renew_lease(
                run.id, active.fence, self.settings.lease_seconds
            )
        except Exception as exc:
            logger.warning("could not renew the lease of run %s: %s", run.id, exc)
            return
        if not held and not active.ending and active.reason is None:
            logger.warning("run %s lost its lease (cancelled or taken over); stopping", run.id)
            active.stop("lost")


__all__ = ["NonRetryableError", "Worker", "WorkerSettings"]
