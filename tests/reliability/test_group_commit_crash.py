"""SIGKILL in the middle of group commits (SQLite): nothing answered is lost, nothing doubles.

`flock serve` on SQLite files gathers the writes that are ready together into one
transaction. Sixteen callers at a time send keyed sync calls of a 3-stage cascade; the
server is killed while groups are being written. Every call answered 200 before the kill
must find its four artifacts after a restart; every call, answered or not, retried with
its key, completes with exactly one artifact of each stage: no group was half written, and
no write was applied twice.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.apps import write_app
from support.polling import poll_until
from support.serve import ServerFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

_SUFFIX = uuid.uuid4().hex[:8]
TYPES = [f"GcStart{_SUFFIX}", f"GcOne{_SUFFIX}", f"GcTwo{_SUFFIX}", f"GcThree{_SUFFIX}"]
APP = f'''
from pydantic import BaseModel

from flock import Flock, flock_type


@flock_type(name="{TYPES[0]}")
class Start(BaseModel):
    n: int


@flock_type(name="{TYPES[1]}")
class One(BaseModel):
    n: int


@flock_type(name="{TYPES[2]}")
class Two(BaseModel):
    n: int


@flock_type(name="{TYPES[3]}")
class Three(BaseModel):
    n: int


async def one(item: Start) -> One:
    return One(n=item.n + 1)


async def two(item: One) -> Two:
    return Two(n=item.n + 1)


async def three(item: Two) -> Three:
    return Three(n=item.n + 1)


flock = Flock()
flock.agent("one").consumes(Start).publishes(One).with_engines(one)
flock.agent("two").consumes(One).publishes(Two).with_engines(two)
flock.agent("three").consumes(Two).publishes(Three).with_engines(three)
'''

CALLS = 400
AT_ONCE = 16
ANSWERED_BEFORE_KILL = 40


async def test_a_kill_during_group_commits_loses_nothing_answered(
    serve: ServerFactory, tmp_path: Path
) -> None:
    app = write_app(tmp_path, "group_app.py", APP)
    store = f"sqlite:///{tmp_path / 'blackboard.db'}"
    idempotency = f"sqlite:///{tmp_path / 'idempotency.db'}"
    env = {"FLOCK_IDEMPOTENCY_LEASE": "1", "FLOCK_RUN_LEASE": "2"}
    keys = [f"gc-{uuid.uuid4().hex}" for _ in range(CALLS)]

    def body(n: int) -> dict[str, Any]:
        return {"type": TYPES[0], "payload": {"n": n * 10}, "timeout": 60}

    doomed = serve(app, store=store, idempotency=idempotency, **env)
    await doomed.wait_healthy()
    answered: dict[int, dict[str, Any]] = {}
    gate = asyncio.Semaphore(AT_ONCE)
    limits = httpx.Limits(max_connections=AT_ONCE * 2)
    async with httpx.AsyncClient(timeout=90, limits=limits) as client:

        async def call(n: int) -> None:
            async with gate:
                try:
                    response = await client.post(
                        f"{doomed.url}/api/v1/artifacts/sync",
                        json=body(n),
                        headers={"Idempotency-Key": keys[n]},
                    )
                except httpx.TransportError:
                    return  # killed under it
            if response.status_code == 200:
                answered[n] = response.json()

        calls = [asyncio.ensure_future(call(n)) for n in range(CALLS)]

        async def enough() -> bool | None:
            return True if len(answered) >= ANSWERED_BEFORE_KILL else None

        await poll_until(enough, seconds=60, what=f"{ANSWERED_BEFORE_KILL} answers")
        doomed.kill()  # mid-load: groups of writes are being gathered and committed
        await asyncio.gather(*calls)
        assert ANSWERED_BEFORE_KILL <= len(answered) < CALLS, "the kill came too late"
        before_kill = dict(answered)

        restarted = serve(app, store=store, idempotency=idempotency, **env)
        await restarted.wait_healthy()
        base = restarted.url
        for result in before_kill.values():  # every answer is on disk, as answered
            assert result["completed"] is True, result
            assert [a["type"] for a in result["artifacts"]] == TYPES
            for artifact in result["artifacts"]:
                found = await client.get(f"{base}/api/v1/artifacts/{artifact['id']}")
                assert found.status_code == 200, f"answered artifact {artifact['id']} lost"
                assert found.json()["payload"] == artifact["payload"]

        async def retry(n: int) -> httpx.Response:
            async with gate:
                return await client.post(
                    f"{base}/api/v1/artifacts/sync",
                    json=body(n),
                    headers={"Idempotency-Key": keys[n]},
                )

        retried = await asyncio.gather(*(retry(n) for n in range(CALLS)))
        counts: dict[str, int] = {}
        for kind in TYPES:
            listed = await client.get(f"{base}/api/v1/artifacts", params={"type": kind, "limit": 1})
            assert listed.status_code == 200, listed.text
            counts[kind] = listed.json()["pagination"]["total"]

    for n, response in enumerate(retried):
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["completed"] is True, result
        assert [a["payload"]["n"] for a in result["artifacts"]] == [n * 10 + i for i in range(4)]
        if n in before_kill:  # replayed as answered before the kill
            assert response.headers["idempotent-replayed"] == "true"
            assert result["artifacts"] == before_kill[n]["artifacts"]
    assert counts == dict.fromkeys(TYPES, CALLS)  # one of each per call: nothing doubled
