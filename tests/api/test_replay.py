"""Replays of stored sync answers: a completed answer is served as stored, byte for byte."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Flock, flock_type
from flock.api.routes.artifacts import answer_completed

_SUFFIX = uuid.uuid4().hex[:8]
JOB = f"ReplayJob_{_SUFFIX}"
STATUS = f"ReplayStatus_{_SUFFIX}"


@flock_type(name=JOB)
class Job(BaseModel):
    completed: bool  # the same name as the sync answer's own field


@flock_type(name=STATUS)
class Status(BaseModel):
    completed: bool
    duration_ms: float


def check(job: Job) -> Status:
    return Status(completed=not job.completed, duration_ms=1.0)


@pytest.mark.parametrize("completed", [True, False])
def test_answer_completed_reads_the_answers_own_field(completed: bool) -> None:
    answer = {
        "correlation_id": "c",
        "artifacts": [{"payload": {"completed": not completed, "duration_ms": 1}}],
        "completed": completed,
        "duration_ms": 2.5,
        "errors": [{"agent": "a", "artifact_id": None, "message": '"completed":true', "at": "t"}],
        "truncated": False,
    }
    compact = json.dumps(answer, separators=(",", ":")).encode()
    assert answer_completed(compact) is completed
    assert answer_completed(json.dumps(answer, indent=2).encode()) is completed
    assert answer_completed(b'{"correlation_id": "c"}') is True  # no such field: final


async def test_a_completed_answer_about_completed_payloads_is_replayed_as_stored(
    api_client: Any,
) -> None:
    flock = Flock()
    flock.agent("checker").consumes(Job).publishes(Status).with_engines(check)
    client = await api_client(flock)
    headers = {"Idempotency-Key": f"replay-{_SUFFIX}"}
    body = {"type": JOB, "payload": {"completed": False}}

    first = await client.post("/api/v1/artifacts/sync", json=body, headers=headers)
    again = await client.post("/api/v1/artifacts/sync", json=body, headers=headers)

    assert first.status_code == again.status_code == 200
    assert first.json()["completed"] is True
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # not re-attached: the stored bytes
