"""The benchmark app: a 3-stage cascade, and a slow workflow for the isolation scenario.

    BenchStart --stage1--> BenchStage1 --stage2--> BenchStage2 --stage3--> BenchStage3
    BenchSlow  --sleeper (3 s)--> BenchSlept
    BenchNote  (no agent consumes it: publishing it only stores it)

Served with `flock serve benchmarks/apps/cascade.py --store ... --idempotency ...`. The
engines are trivial on purpose: the figures measure Flock, not the agents' work.
"""

from __future__ import annotations

import asyncio
import gc
import os

from pydantic import BaseModel

from flock import Flock, flock_type

# Each stage's `max_concurrency` (a cap across every worker): none by default, as agents
# have none unless told; `FLOCK_BENCH_STAGE_CAP=64` caps each stage (the scale-out scenario
# measures both: a capped agent's runs are always claimed, under the cap, and on
# PostgreSQL that claim takes a lock, one claimer at a time; an uncapped agent's next run
# is claimed by the commit that creates it while its worker has a slot free).
_CAP = os.environ.get("FLOCK_BENCH_STAGE_CAP", "none")
STAGE_CONCURRENCY = None if _CAP == "none" else int(_CAP)
SLOW_SECONDS = float(os.environ.get("FLOCK_BENCH_SLOW_SECONDS", "3"))

if os.environ.get("FLOCK_BENCH_GC") == "off":
    # A diagnostic only (the http scenario's "collector off" case): how much of a request's
    # cost is the garbage collector's, with the memory store keeping every artifact.
    gc.disable()


@flock_type(name="BenchStart")
class Start(BaseModel):
    n: int = 0


@flock_type(name="BenchStage1")
class Stage1(BaseModel):
    n: int


@flock_type(name="BenchStage2")
class Stage2(BaseModel):
    n: int


@flock_type(name="BenchStage3")
class Stage3(BaseModel):
    n: int


@flock_type(name="BenchSlow")
class Slow(BaseModel):
    n: int = 0


@flock_type(name="BenchSlept")
class Slept(BaseModel):
    n: int


@flock_type(name="BenchNote")
class Note(BaseModel):
    text: str = ""


def first(item: Start) -> Stage1:
    return Stage1(n=item.n + 1)


def second(item: Stage1) -> Stage2:
    return Stage2(n=item.n + 1)


def third(item: Stage2) -> Stage3:
    return Stage3(n=item.n + 1)


async def sleep_on_it(item: Slow) -> Slept:
    await asyncio.sleep(SLOW_SECONDS)
    return Slept(n=item.n)


def build(store: object | None = None) -> Flock:
    flock = Flock("bench", store=store)  # type: ignore[arg-type]
    for name, consumes, publishes, engine in (
        ("stage1", Start, Stage1, first),
        ("stage2", Stage1, Stage2, second),
        ("stage3", Stage2, Stage3, third),
    ):
        stage = flock.agent(name).consumes(consumes).publishes(publishes).with_engines(engine)
        if STAGE_CONCURRENCY is not None:
            stage.max_concurrency(STAGE_CONCURRENCY)
    flock.agent("sleeper").consumes(Slow).publishes(Slept).with_engines(
        sleep_on_it
    ).max_concurrency(1000)
    return flock


flock = build()
