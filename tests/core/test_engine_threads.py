"""The engine threads: `def` engines off the loop, at most N threads, errors handed back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flock.core.engine_threads import EngineThreads


async def test_a_call_runs_off_the_loop_and_returns_its_result() -> None:
    threads = EngineThreads(4)
    try:
        name = await threads.run(lambda: threading.current_thread().name)
        assert name != threading.current_thread().name and name.startswith("flock-engine")
        assert await threads.run(pow, 2, 10) == 1024
    finally:
        threads.shutdown()


async def test_an_exception_reaches_the_caller() -> None:
    threads = EngineThreads(1)

    def boom() -> None:
        raise ValueError("engine failed")

    try:
        with pytest.raises(ValueError, match="engine failed"):
            await threads.run(boom)
        assert await threads.run(lambda: "still serving") == "still serving"
    finally:
        threads.shutdown()


async def test_no_more_threads_than_the_cap_and_queued_calls_wait_for_one() -> None:
    threads = EngineThreads(2)
    release = threading.Event()
    started = threading.Semaphore(0)
    names: set[str] = set()

    def blocking(n: int) -> int:
        names.add(threading.current_thread().name)
        started.release()
        release.wait(30)
        return n

    try:
        calls = [asyncio.ensure_future(threads.run(blocking, n)) for n in range(5)]
        for _ in range(2):  # two start at once ...
            assert await asyncio.to_thread(started.acquire, True, 30)
        assert not any(call.done() for call in calls)  # ... the other three wait their turn
        release.set()
        assert await asyncio.gather(*calls) == [0, 1, 2, 3, 4]
        assert len(names) == 2
    finally:
        release.set()
        threads.shutdown()


async def test_shutdown_cancels_what_is_queued_and_refuses_new_calls() -> None:
    threads = EngineThreads(1)
    release = threading.Event()
    running = threading.Event()

    def first() -> str:
        running.set()
        release.wait(30)
        return "first"

    busy = asyncio.ensure_future(threads.run(first))
    assert await asyncio.to_thread(running.wait, 30)
    queued = asyncio.ensure_future(threads.run(lambda: "never"))
    await asyncio.sleep(0)  # the queued call is in the queue
    threads.shutdown()
    release.set()
    assert await busy == "first"  # a running call finishes
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError, match="shut down"):
        await threads.run(lambda: None)
