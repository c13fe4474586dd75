"""The run half of the store contract, on every backend: claims, leases, fences, retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from flock.core.artifacts import Artifact
from flock.core.runs import Run, RunState, Usage, output_id_for
from flock.core.store import BlackboardStore
from flock.core.store.protocol import InvalidRunStateError, RunFilter
from flock.core.visibility import Identity, PrivateVisibility


def now() -> datetime:
    return datetime.now(UTC)


def job(n: int, correlation_id: str = "corr-a", **fields: object) -> Artifact:
    return Artifact(type="Job", payload={"n": n}, id=f"job-{n}", correlation_id=correlation_id,
                    **fields)  # type: ignore[arg-type]  # fmt: skip


def run_of(agent: str, artifact: Artifact, *, attempts: int = 3) -> Run:
    return Run.new(agent, artifact.correlation_id, [artifact.id], max_attempts=attempts,
                   principal="alice", at=now())  # fmt: skip


async def test_publish_creates_the_runs_with_the_artifact_once(store: BlackboardStore) -> None:
    artifact = job(1)
    run = run_of("worker", artifact)

    assert await store.publish(artifact, [run]) is artifact
    again = Artifact(type="Job", payload={"n": 99}, id="job-1", correlation_id="corr-a")
    stored = await store.publish(again, [run_of("other", again)])  # a re-delivery

    assert stored.payload == {"n": 1}  # the stored artifact, not the new one
    runs, total = await store.query_runs()
    assert total == 1 and runs[0].id == run.id and runs[0].state == RunState.QUEUED
    assert runs[0].principal == "alice" and runs[0].input_ids == ("job-1",)
    assert (await store.progress("corr-a")).pending == 1
    record = await store.get_correlation("corr-a")
    assert record is not None and (record.state, record.pending_runs) == ("running", 1)
    progress = await store.progress("corr-a")  # what waiters read, from either
    assert (record.progress.pending, record.progress.cancelled) == (progress.pending, False)


async def test_a_claim_holds_the_run_until_its_lease_runs_out(store: BlackboardStore) -> None:
    artifact = job(1)
    run = run_of("worker", artifact)
    await store.publish(artifact, [run])

    (first,) = await store.claim_runs("w1", 10, 0.3, {})
    assert (first.run.state, first.run.attempt, first.run.worker) == (RunState.RUNNING, 1, "w1")
    assert [a.id for a in first.inputs] == ["job-1"] and not first.recovered
    assert await store.claim_runs("w2", 10, 30, {}) == []  # held
    assert await store.renew_lease(run.id, first.run.fence, 0.3)

    await asyncio.sleep(0.45)  # the holder stopped renewing
    (second,) = await store.claim_runs("w2", 10, 30, {})
    assert second.recovered and second.run.attempt == 2 and second.run.fence > first.run.fence

    output = Artifact(type="Done", payload={}, id=output_id_for(run.id, 0), correlation_id="corr-a")
    assert not await store.renew_lease(run.id, first.run.fence, 30)
    assert not await store.complete_run(run.id, first.run.fence, [output], [])  # fenced
    assert await store.get(output.id) is None
    assert await store.complete_run(run.id, second.run.fence, [output], [], usage=Usage(1, 2, 3))
    assert not await store.complete_run(run.id, second.run.fence, [output], [])  # done already

    done = await store.get_run(run.id)
    assert done is not None and done.state == RunState.SUCCEEDED and done.output_ids == (output.id,)
    assert done.usage == Usage(1, 2, 3) and done.error is None
    assert [c.consumer for c in await store.get_consumptions("job-1")] == ["worker"]
    assert (await store.progress("corr-a")).pending == 0
    assert await store.next_due() is None


async def test_concurrent_claims_take_each_run_once(store: BlackboardStore) -> None:
    # Ten rounds: on PostgreSQL a claimer that finds a row another one just claimed must
    # skip it (that race showed in about one round in four before it was mended).
    for round_ in range(10):
        for n in range(5):
            artifact = job(round_ * 10 + n)
            await store.publish(artifact, [run_of("worker", artifact)])

        batches = await asyncio.gather(*(store.claim_runs(f"w{i}", 2, 30, {}) for i in range(8)))

        claimed = [c.run.id for batch in batches for c in batch]
        assert len(claimed) == len(set(claimed)) == 5, f"round {round_}"


async def test_a_commit_creates_the_triggered_runs_and_the_run_bound_holds(
    store: BlackboardStore,
) -> None:
    artifact = job(1)
    run = run_of("worker", artifact)
    await store.publish(artifact, [run])
    (claimed,) = await store.claim_runs("w", 1, 30, {})
    outputs = [
        Artifact(
            type="Done", payload={"i": i}, id=output_id_for(run.id, i), correlation_id="corr-a"
        )
        for i in range(3)
    ]
    triggered = [run_of("next", output) for output in outputs]

    assert await store.complete_run(run.id, claimed.run.fence, outputs, triggered, max_runs=3)

    _, total = await store.query_runs(RunFilter(agent="next"))
    assert total == 2  # the bound: three runs per correlation in all
    record = await store.get_correlation("corr-a")
    assert record is not None and record.pending_runs == 2
    assert [e.agent for e in record.errors] == ["flock"] and "limit of 3" in record.errors[
        0
    ].message


async def test_failed_attempts_retry_later_then_die(store: BlackboardStore) -> None:
    artifact = job(1)
    run = run_of("worker", artifact, attempts=2)
    await store.publish(artifact, [run])
    (first,) = await store.claim_runs("w", 1, 30, {})

    later = now() + timedelta(seconds=0.3)
    assert await store.fail_run(run.id, first.run.fence, "ValueError: no", retry_at=later)
    queued = await store.get_run(run.id)
    assert (
        queued is not None and queued.state == RunState.QUEUED and queued.error == "ValueError: no"
    )
    assert queued.next_attempt_at is not None and abs(queued.next_attempt_at - later) < timedelta(
        milliseconds=1
    )
    assert await store.claim_runs("w", 1, 30, {}) == []  # not due yet
    assert (await store.progress("corr-a")).pending == 1  # a pending retry is pending
    await asyncio.sleep(0.35)
    (second,) = await store.claim_runs("w", 1, 30, {})
    assert second.run.attempt == 2
    assert await store.fail_run(run.id, second.run.fence, "ValueError: no again", retry_at=None)

    dead = await store.get_run(run.id)
    assert dead is not None and dead.state == RunState.DEAD and dead.finished_at is not None
    record = await store.get_correlation("corr-a")
    assert record is not None and record.state == "idle"
    (error,) = record.errors
    assert (error.run_id, error.agent, error.artifact_id) == (run.id, "worker", "job-1")
    assert (error.message, error.attempts) == ("ValueError: no again", 2)

    retried = await store.retry_run(run.id)
    assert retried is not None and retried.state == RunState.QUEUED and retried.attempt == 0
    assert (await store.get_correlation("corr-a")).errors == []  # type: ignore[union-attr]
    with pytest.raises(InvalidRunStateError):
        await store.retry_run(run.id)
    assert await store.retry_run("no-such-run") is None


async def test_release_gives_the_run_back_without_counting_the_attempt(
    store: BlackboardStore,
) -> None:
    artifact = job(1)
    run = run_of("worker", artifact)
    await store.publish(artifact, [run])
    (claimed,) = await store.claim_runs("w", 1, 30, {})

    assert await store.release_run(run.id, claimed.run.fence)

    (again,) = await store.claim_runs("w2", 1, 30, {})
    assert again.run.attempt == 1 and not again.recovered


async def test_cancel_stops_every_pending_run_and_any_future_one(store: BlackboardStore) -> None:
    first, second = job(1), job(2)
    await store.publish(first, [run_of("worker", first)])
    await store.publish(second, [run_of("worker", second)])
    (claimed, _) = await store.claim_runs("w", 2, 30, {})

    assert await store.cancel_correlation("corr-a")
    assert not await store.cancel_correlation("corr-unknown")

    progress = await store.progress("corr-a")
    assert progress.cancelled and progress.pending == 0
    assert not await store.renew_lease(claimed.run.id, claimed.run.fence, 30)
    assert not await store.complete_run(claimed.run.id, claimed.run.fence, [], [])
    late = job(3)
    await store.publish(late, [run_of("worker", late)])
    runs, _ = await store.query_runs(RunFilter(correlation_id="corr-a"))
    assert sorted(r.state.value for r in runs) == ["cancelled", "cancelled"]
    record = await store.get_correlation("corr-a")
    assert record is not None and record.state == "cancelled" and record.errors == []

    retried = await store.retry_run(claimed.run.id)  # resumes the cascade
    assert retried is not None and retried.state == RunState.QUEUED
    assert (await store.get_correlation("corr-a")).state == "running"  # type: ignore[union-attr]


async def test_max_concurrency_caps_are_applied_at_claim_time(store: BlackboardStore) -> None:
    for n in range(4):
        artifact = job(n)
        await store.publish(artifact, [run_of("capped", artifact), run_of("free", artifact)])

    claimed = await store.claim_runs("w", 10, 30, {"capped": 1})
    assert sorted(c.run.agent for c in claimed) == ["capped", "free", "free", "free", "free"]
    assert await store.claim_runs("w2", 10, 30, {"capped": 1}) == []
    (held,) = [c for c in claimed if c.run.agent == "capped"]
    assert await store.complete_run(held.run.id, held.run.fence, [], [])
    (next_one,) = await store.claim_runs("w2", 10, 30, {"capped": 1})
    assert next_one.run.agent == "capped"


async def test_runs_are_listed_by_filter_and_by_what_the_viewer_may_see(
    store: BlackboardStore,
) -> None:
    public, private = job(1), job(2, visibility=PrivateVisibility(agents=frozenset({"bob"})))
    other = job(3, correlation_id="corr-b")
    for artifact in (public, private, other):
        await store.publish(artifact, [run_of("worker", artifact), run_of("critic", artifact)])

    _, total = await store.query_runs()
    assert total == 6
    runs, total = await store.query_runs(RunFilter(correlation_id="corr-a", agent="critic"))
    assert total == 2 and {r.input_ids[0] for r in runs} == {"job-1", "job-2"}
    _, total = await store.query_runs(RunFilter(state=RunState.QUEUED), limit=1, offset=1)
    assert total == 6
    seen, total = await store.query_runs(RunFilter(visible_to=Identity("carol")))
    assert total == 4 and "job-2" not in {r.input_ids[0] for r in seen}
    _, total = await store.query_runs(RunFilter(visible_to=Identity("bob")))
    assert total == 6


async def test_claims_take_turns_across_principals(store: BlackboardStore) -> None:
    for n in range(5):
        artifact = job(n)
        run = run_of("worker", artifact)
        run.principal = "burst"
        await store.publish(artifact, [run])
    late = job(9, correlation_id="corr-b")
    other = run_of("worker", late)
    other.principal = "other"
    await store.publish(late, [other])

    first = await store.claim_runs("w", 2, 30, {})
    assert sorted(str(c.run.principal) for c in first) == ["burst", "other"]
    rest = await store.claim_runs("w", 10, 30, {})
    assert [c.run.input_ids[0] for c in rest] == ["job-1", "job-2", "job-3", "job-4"]
