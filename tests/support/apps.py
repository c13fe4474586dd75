"""App files for `flock serve`: one agent that turns a Job into a Done.

The process tests all serve the same small app and vary only in the type names, the agent's
name and what its engine does (adds one, sleeps, blocks until a marker file exists).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_JOB_APP = """\
import asyncio
import os

from pydantic import BaseModel

from flock import Flock, flock_type


@flock_type(name="{job}")
class Job(BaseModel):
    n: int


@flock_type(name="{done}")
class Done(BaseModel):
    {done_fields}


{work}

flock = Flock()
flock.agent("{agent}").consumes(Job).publishes(Done).with_engines(work)
"""

ADD_ONE = """
def work(job: Job) -> Done:
    return Done(n=job.n + 1)
"""


def work_after_marker(result: str) -> str:
    """An engine that blocks until the file named by $RELIABILITY_MARKER exists.

    The test creates that file to let the agent go; it then returns `Done(n=<result>)`,
    `result` being an expression of `job`.
    """
    return f"""
MARKER = os.environ["RELIABILITY_MARKER"]


async def work(job: Job) -> Done:
    while not os.path.exists(MARKER):  # blocks until the test lets it go
        await asyncio.sleep(0.02)
    return Done(n={result})
"""


def job_app(
    *,
    job: str,
    done: str,
    work: str = ADD_ONE,
    agent: str = "worker",
    done_fields: Sequence[str] = ("n: int",),
) -> str:
    """The source of an app whose agent `agent` consumes `Job(n: int)` and publishes `Done`.

    `job` and `done` are the registered type names; `work` is source that defines the engine
    `work(job: Job) -> Done` (`asyncio` and `os` are imported for it); by default it adds one.
    """
    return _JOB_APP.format(
        job=job,
        done=done,
        done_fields="\n    ".join(done_fields),
        work=work.strip() + "\n",
        agent=agent,
    )


def write_app(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(source)
    return path
