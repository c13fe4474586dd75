"""`POST /artifacts/batch`: publish many items in one call, each with its own outcome.

Items are validated one by one, so a bad item fails alone. Each item may carry its own
idempotency key; a whole-request `Idempotency-Key` replays the whole response. Under a
whole-request key, items without their own key get one derived from it (key + index), so a
batch retried after a crash never publishes an item twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from flock.api.auth import Principal
from flock.api.deps import PrincipalDep, ServiceDep, route_template
from flock.api.errors import (
    APIError,
    ErrorCode,
    error_response_for,
    internal_error_response,
    problem_body,
    validation_details,
)
from flock.api.idempotency.guard import (
    REPLAYED_HEADER,
    KeyedCall,
    fingerprint_of,
    parse_idempotency_key,
    scoped_key,
)
from flock.api.idempotency.protocol import IdempotencyRecord
from flock.api.models import (
    BatchPublishItem,
    BatchPublishRequest,
    BatchPublishResponse,
    PublishRequest,
)
from flock.api.routes.artifacts import (
    json_response,
    publish_once,
    published_before_failing,
    run_keyed,
)
from flock.api.routing import JSONBodyRoute

router = APIRouter(prefix="/api/v1", tags=["artifacts"], route_class=JSONBodyRoute)
logger = logging.getLogger("flock.api")

ItemStatus = Literal["accepted", "duplicate", "failed"]

# Which field an item error without details points at, by error code.
_ERROR_FIELDS = {
    ErrorCode.NOT_FOUND.value: "type",
    ErrorCode.FORBIDDEN.value: "type",
    ErrorCode.IDEMPOTENCY_CONFLICT.value: "idempotency_key",
    ErrorCode.IDEMPOTENCY_IN_PROGRESS.value: "idempotency_key",
}


@dataclass(slots=True)
class ItemOutcome:
    """One item's line in the batch response."""

    index: int
    status: ItemStatus
    artifact_id: str | None = None
    correlation_id: str | None = None
    error: dict[str, Any] | None = None
    cascade: dict[str, Any] | None = field(default=None)  # artifacts, completed, ... (wait)

    @classmethod
    def failed(cls, index: int, problem: dict[str, Any]) -> ItemOutcome:
        return cls(index, "failed", error=_at_index(problem, index))

    @classmethod
    def from_response(cls, index: int, response: Response) -> ItemOutcome:
        """An item's (possibly replayed) single-publish response -> its outcome."""
        body = json.loads(bytes(response.body))
        if response.status_code >= 300:
            return cls.failed(index, body)
        replayed = response.headers.get(REPLAYED_HEADER) == "true"
        return cls(
            index,
            "duplicate" if replayed else "accepted",
            body["artifact_id"],
            body["correlation_id"],
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemOutcome:
        return cls(
            data["index"],
            data["status"],
            data["artifact_id"],
            data["correlation_id"],
            data.get("error"),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "status": self.status,
            "artifact_id": self.artifact_id,
            "correlation_id": self.correlation_id,
        }
        if self.error is not None:
            data["error"] = self.error
        if self.cascade is not None:
            data.update(self.cascade)
        return data


def _at_index(problem: dict[str, Any], index: int) -> dict[str, Any]:
    """Point an item's problem document at `items[index]` (stored outcomes are index-free)."""
    prefix = f"items[{index}]"
    details = problem.get("details")
    if not details:
        suffix = _ERROR_FIELDS.get(problem.get("code", ""))
        details = [
            {
                "field": f"{prefix}.{suffix}" if suffix else prefix,
                "message": problem.get("message", ""),
                "code": str(problem.get("code", "invalid")).lower(),
            }
        ]
    else:
        details = [
            {**d, "field": f"{prefix}.{d['field']}" if d.get("field") else prefix} for d in details
        ]
    return {**problem, "details": details}


class ItemPublish:
    """One item as an idempotent operation; its stored outcome does not depend on its index."""

    def __init__(self, service: ServiceDep, item: PublishRequest, principal: Principal) -> None:
        self.service, self.item, self.principal = service, item, principal

    async def execute(self, call: KeyedCall | None) -> Response:
        artifact = await publish_once(self.service, self.item, self.principal, call)
        return self._accepted(artifact.id, artifact.correlation_id)

    async def refresh(self, record: IdempotencyRecord) -> Response | None:
        """A 5xx stored after publishing is answered from the artifact that was published."""
        published = await published_before_failing(self.service, record)
        return None if published is None else self._accepted(*published)

    @staticmethod
    def _accepted(artifact_id: str, correlation_id: str) -> Response:
        return json_response({"artifact_id": artifact_id, "correlation_id": correlation_id})


class BatchPublish:
    """The whole batch: publish every item, then (with `wait`) follow every cascade."""

    def __init__(
        self,
        service: ServiceDep,
        body: BatchPublishRequest,
        principal: Principal,
        request: Request,
        batch_key: str | None,
    ) -> None:
        self.service, self.body, self.principal = service, body, principal
        self.route = route_template(request)
        self.batch_key = batch_key
        self.started = time.perf_counter()

    def remaining(self) -> float:
        return max(self.body.timeout - (time.perf_counter() - self.started), 0.0)

    async def execute(self, call: KeyedCall | None) -> Response:
        outcomes = await asyncio.gather(
            *(self._publish_item(i, raw) for i, raw in enumerate(self.body.items))
        )
        if self.body.wait:
            await self._follow(outcomes)
        return self._respond(outcomes)

    async def refresh(self, record: IdempotencyRecord) -> Response | None:
        """A replayed batch with `wait` re-attaches to the cascades that had not finished."""
        response = record.response
        if not self.body.wait or response is None or response.status_code != 200:
            return None
        stored = json.loads(response.body)["items"]
        if all(item["status"] == "failed" or item.get("completed") for item in stored):
            return None
        outcomes = [ItemOutcome.from_dict(item) for item in stored]
        await self._follow(outcomes)
        return self._respond(outcomes)

    async def _publish_item(self, index: int, raw: Any) -> ItemOutcome:
        try:
            item = BatchPublishItem.model_validate(raw)
        except ValidationError as exc:
            details = validation_details(exc.errors(), prefix=f"items[{index}]")
            problem = problem_body(
                ErrorCode.VALIDATION_ERROR, "the item is invalid", details=details
            )
            return ItemOutcome(index, "failed", error=problem)
        try:
            item = self.principal.scoped(item)
            operation = ItemPublish(self.service, item, self.principal)
            key = self._item_key(index, item)
            if key is None:
                response = await operation.execute(None)
            else:
                body = item.model_dump(mode="json", exclude={"idempotency_key"})
                wait = self.remaining() if self.body.wait else None
                response = await self.service.guard.run(
                    key, fingerprint_of(body), operation, wait_seconds=wait
                )
        except Exception as exc:  # one item's failure is its own; the others go on
            known = error_response_for(exc, None)
            if known is None:
                logger.exception("batch item %d failed", index)
                known = internal_error_response(None)
            response = known
        return ItemOutcome.from_response(index, response)

    def _item_key(self, index: int, item: BatchPublishItem) -> str | None:
        """The scoped idempotency key of an item: its own, one derived from the batch's, or None."""
        scope = self.principal.scope
        if item.idempotency_key is not None:
            try:
                key = parse_idempotency_key({"x-idempotency-key": item.idempotency_key})
            except APIError as exc:
                detail = {"field": "idempotency_key", "message": exc.message, "code": "invalid_key"}
                raise APIError(exc.code, exc.message, status=exc.status, details=[detail]) from None
            assert key is not None
            return scoped_key(scope, "POST", self.route + ":item", key)
        if self.batch_key is not None:
            return scoped_key(scope, "POST", self.route + ":batch", f"{self.batch_key}\x1f{index}")
        return None

    async def _follow(self, outcomes: list[ItemOutcome]) -> None:
        """Wait for every published item's cascade at once, then collect what the caller sees."""
        live = [(o, o.correlation_id) for o in outcomes if o.correlation_id is not None]
        remaining = self.remaining()
        waiter = self.service.waiter
        finished = await asyncio.gather(*(waiter.wait(cid, remaining) for _, cid in live))
        for (outcome, cid), waited in zip(live, finished, strict=True):
            result = await waiter.collect(
                cid,
                self.principal,
                waited=waited,
                started=self.started,
                input_id=outcome.artifact_id,
                filters=self.body.filters,
            )
            outcome.cascade = {
                "artifacts": result.artifacts,
                "completed": waited.completed,
                "errors": result.errors,
                "truncated": result.truncated,
            }

    @staticmethod
    def _respond(outcomes: list[ItemOutcome]) -> Response:
        return json_response({"items": [o.to_dict() for o in outcomes]})


@router.post(
    "/artifacts/batch",
    operation_id="publishArtifactBatch",
    response_model=BatchPublishResponse,
    summary="Publish many artifacts, each with its own outcome",
)
async def publish_batch(
    body: BatchPublishRequest,
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    """Publish 1-100 items; one bad item fails alone. With `wait`, follow every cascade
    (up to `timeout`) and answer each item's artifacts, like a sync publish does."""
    slot = service.sync_slot(principal) if body.wait else contextlib.nullcontext()
    async with slot:
        batch_key = parse_idempotency_key(request.headers)
        operation = BatchPublish(service, body, principal, request, batch_key)
        wait_seconds = body.timeout if body.wait else None
        return await run_keyed(service, request, principal, body, operation, wait_seconds)


__all__ = ["BatchPublish", "ItemOutcome", "ItemPublish", "router"]
