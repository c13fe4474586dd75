"""Waiting in tests: always polling with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def poll_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    seconds: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Call `check` until it returns something other than None/False; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds:g} s waiting for {what}")
        await asyncio.sleep(interval)
