"""The threads plain `def` engines run on: one queue, threads started as needed up to a cap.

`loop.run_in_executor` on a `ThreadPoolExecutor` hands a call over through a
`concurrent.futures.Future` chained to an asyncio future (locks, callbacks and a state copy
on both sides). Here a call is one queue put, and its result one `call_soon_threadsafe`
that sets the awaited future: half the CPU per hand-off, which every `def` engine call pays.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class EngineThreads:
    """Runs blocking calls off the event loop, on at most `max_threads` threads."""

    def __init__(self, max_threads: int, name: str = "flock-engine") -> None:
        self._max = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # One token per thread waiting for a job (a C queue: cheaper than a Semaphore).
        self._idle: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on one of the threads; its result or exception."""
        if self._closed:
            raise RuntimeError("the engine threads are shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        try:
            self._idle.get_nowait()
        except queue.Empty:
            self._start_thread()
        return await future

    def _start_thread(self) -> None:
        with self._lock:
            if len(self._threads) >= self._max or self._closed:
                return  # a busy thread takes the job when it is done
            thread = threading.Thread(
                target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, fn, args = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, as an executor would
                error = exc
            del job, fn, args
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)
            del future, result, error
            self._idle.put(None)

    def shutdown(self) -> None:
        """Queued calls are dropped (their callers get CancelledError); running ones finish
        on their threads, which then end."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                loop, future = job[0], job[1]
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(future.cancel)
        for _ in range(threads):
            self._jobs.put(None)


__all__ = ["EngineThreads"]
