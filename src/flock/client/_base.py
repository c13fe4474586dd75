"""What both clients share: building requests, the retry policy, parsing the answers.

Every call is planned as a generator that yields what to do next (an `httpx.Request` to
send, or a number of seconds to sleep) and is sent what happened (the response, or the
`httpx.TransportError`). `FlockClient` and `AsyncFlockClient` only carry the plan out, so
the two can never disagree about retries, keys or parsing.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict, TypeVar

import httpx
from pydantic import BaseModel

from flock.client.calls import (
    API,
    ArtifactRef,
    BatchItem,
    Call,
    Pager,
    Plan,
    TypeRef,
    VisibilityArg,
    many,
    replayed,
    segment,
    visibility_json,
)
from flock.client.errors import FlockTransportError, error_from_response
from flock.client.results import (
    BatchItemResult,
    BatchResult,
    CorrelationInfo,
    PublishResult,
    RunInfo,
    SyncResult,
    TypeInfo,
)
from flock.client.retry import RetryEvent, RetryPolicy, parse_retry_after
from flock.core.artifacts import Artifact
from flock.registry import TypeRegistry, type_registry

T = TypeVar("T")

WAIT_MARGIN = 10.0  # seconds a waiting call's HTTP timeout exceeds the server-side timeout
VERSION = "0.1.0"


class ClientOptions(TypedDict, total=False):
    """The options both clients take besides `base_url` and `transport` (see `BaseClient`)."""

    api_key: str | None
    timeout: float
    max_retries: int
    backoff_base: float
    backoff_max: float
    max_retry_after: float
    deadline: float | None
    headers: Mapping[str, str] | None
    registry: TypeRegistry | None
    on_retry: Callable[[RetryEvent], None] | None
    rng: random.Random | None
    clock: Callable[[], float]


class ArtifactQuery(TypedDict, total=False):
    """What `list_artifacts` takes: the filters of `GET /api/v1/artifacts`, and paging.

    `type`, `produced_by`, `tag` and `visibility` take one value or several; `start` and
    `end` are the query's `from` and `to`. `page_size` is the number of artifacts fetched
    per request (1-500, default 100); `limit` caps how many are returned in all.
    """

    type: TypeRef | Iterable[TypeRef] | None
    produced_by: str | Iterable[str] | None
    correlation_id: str | None
    tag: str | Iterable[str] | None
    start: datetime | None
    end: datetime | None
    visibility: str | Iterable[str] | None
    page_size: int
    limit: int | None


class BaseClient:
    """Configuration and the sans-IO half of `FlockClient` / `AsyncFlockClient`.

    - api_key: sent as `Authorization: Bearer KEY`.
    - timeout: seconds per HTTP request (waiting calls get their wait plus a margin).
    - max_retries, backoff_base, backoff_max, max_retry_after, deadline: the `RetryPolicy`.
      `deadline` (seconds, None: unbounded) bounds every call, retries included; a call
      that waits on the server (`publish_sync`, `publish_batch(wait=True)`) is bounded by
      its wait plus a margin as well, so a 504 is not retried into several more waits.
    - registry: maps models to type names and back (default: the global `type_registry`).
    - on_retry: called with a `RetryEvent` before each retry (logging, metrics).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8344",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        max_retry_after: float = 60.0,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
        registry: TypeRegistry | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries, backoff_base, backoff_max, max_retry_after, deadline)
        self._clock = clock
        self.registry = registry or type_registry
        self.on_retry = on_retry
        self._rng = rng or random.Random()
        self._headers = {"User-Agent": f"flock-client/{VERSION}", "Accept": "application/json"}
        self._headers.update(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never shows the API key
        return f"{type(self).__name__}({self.base_url!r})"

    # -- the retry plan -------------------------------------------------------------------

    def _plan(self, call: Call[T]) -> Plan[T]:
        attempt = 0
        limits = [d for d in (self.retry.deadline, call.deadline) if d is not None]
        expires = self._clock() + min(limits) if limits else None
        while True:
            remaining = None if expires is None else max(expires - self._clock(), 0.001)
            outcome = yield self._request(call, remaining)
            cause: BaseException | None = None
            if isinstance(outcome, httpx.Response):
                if outcome.is_success:
                    return call.parse(outcome)
                error = error_from_response(outcome)
                retry_after = parse_retry_after(outcome.headers.get("retry-after"))
            else:
                cause = outcome
                error = FlockTransportError(
                    f"{call.method} {call.path}: {type(outcome).__name__}: {outcome}",
                    retryable=not isinstance(outcome, httpx.UnsupportedProtocol),
                )
                retry_after = None
            if not error.retryable or self.retry.gives_up(attempt, retry_after):
                raise error from cause
            delay = self.retry.delay(attempt, retry_after, self._rng)
            if expires is not None and self._clock() + delay + call.attempt_seconds >= expires:
                raise error from cause  # the call's deadline leaves no time for a retry
            attempt += 1
            if self.on_retry is not None:
                self.on_retry(
                    RetryEvent(call.method, call.path, attempt, delay, error, call.idempotency_key)
                )
            yield delay

    def _request(self, call: Call[Any], remaining: float | None = None) -> httpx.Request:
        headers = dict(self._headers)
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        seconds = call.timeout or self.timeout
        timeout = httpx.Timeout(seconds if remaining is None else min(seconds, remaining))
        return httpx.Request(
            call.method,
            self.base_url + call.path,
            params=list(call.params) or None,
            json=call.body,
            headers=headers,
            extensions={"timeout": timeout.as_dict()},
        )

    # -- calls ------------------------------------------------------------------------------

    def _publish_call(
        self,
        artifact: ArtifactRef,
        payload: Mapping[str, Any] | None,
        *,
        tags: Sequence[str] | None,
        partition_key: str | None,
        visibility: VisibilityArg,
        idempotency_key: str | None,
    ) -> Call[PublishResult]:
        key = idempotency_key or str(uuid.uuid4())
        body = self._publish_body(artifact, payload, tags, partition_key, visibility)

        def parse(response: httpx.Response) -> PublishResult:
            data = response.json()
            return PublishResult(
                data["artifact_id"], data["correlation_id"], key, replayed(response)
            )

        return Call("POST", f"{API}/artifacts", parse, body, idempotency_key=key)

    def _publish_sync_call(
        self,
        artifact: ArtifactRef,
        payload: Mapping[str, Any] | None,
        *,
        timeout: float,
        type_names: Iterable[TypeRef] | None,
        produced_by: Iterable[str] | None,
        on_timeout: Literal["partial", "error"],
        tags: Sequence[str] | None,
        partition_key: str | None,
        visibility: VisibilityArg,
        idempotency_key: str | None,
    ) -> Call[SyncResult]:
        key = idempotency_key or str(uuid.uuid4())
        body = self._publish_body(artifact, payload, tags, partition_key, visibility)
        body.update(timeout=timeout, on_timeout=on_timeout)
        filters = self._filters(type_names, produced_by)
        if filters:
            body["filters"] = filters

        def parse(response: httpx.Response) -> SyncResult:
            return SyncResult.from_dict(
                response.json(),
                idempotency_key=key,
                replayed=replayed(response),
                registry=self.registry,
            )

        return Call(
            "POST",
            f"{API}/artifacts/sync",
            parse,
            body,
            idempotency_key=key,
            timeout=max(self.timeout, timeout + WAIT_MARGIN),
            deadline=timeout + WAIT_MARGIN,
            attempt_seconds=timeout,
        )

    def _publish_batch_call(
        self,
        items: Iterable[BatchItem | BaseModel | Mapping[str, Any]],
        *,
        wait: bool,
        timeout: float,
        type_names: Iterable[TypeRef] | None,
        produced_by: Iterable[str] | None,
        idempotency_key: str | None,
    ) -> Call[BatchResult]:
        key = idempotency_key or str(uuid.uuid4())
        body: dict[str, Any] = {"items": [self._batch_item(i) for i in items], "wait": wait}
        if wait:
            body["timeout"] = timeout
            filters = self._filters(type_names, produced_by)
            if filters:
                body["filters"] = filters

        def parse(response: httpx.Response) -> BatchResult:
            items = [BatchItemResult.from_dict(i, self.registry) for i in response.json()["items"]]
            return BatchResult(items, key, replayed(response))

        return Call(
            "POST",
            f"{API}/artifacts/batch",
            parse,
            body,
            idempotency_key=key,
            timeout=max(self.timeout, timeout + WAIT_MARGIN) if wait else None,
            deadline=timeout + WAIT_MARGIN if wait else None,
            attempt_seconds=timeout if wait else 0.0,
        )

    def _get_artifact_call(self, artifact_id: str) -> Call[Artifact]:
        def parse(response: httpx.Response) -> Artifact:
            return Artifact.from_dict(response.json())

        return Call("GET", f"{API}/artifacts/{segment(artifact_id)}", parse)

    def _correlation_call(self, correlation_id: str) -> Call[CorrelationInfo]:
        def parse(response: httpx.Response) -> CorrelationInfo:
            return CorrelationInfo.from_dict(response.json())

        return Call("GET", f"{API}/correlations/{segment(correlation_id)}", parse)

    def _cancel_call(self, correlation_id: str) -> Call[CorrelationInfo]:
        def parse(response: httpx.Response) -> CorrelationInfo:
            return CorrelationInfo.from_dict(response.json())

        return Call("POST", f"{API}/correlations/{segment(correlation_id)}/cancel", parse)

    def _types_call(self) -> Call[list[TypeInfo]]:
        def parse(response: httpx.Response) -> list[TypeInfo]:
            return [TypeInfo.from_dict(item) for item in response.json()["types"]]

        return Call("GET", f"{API}/types", parse)

    def _run_call(self, run_id: str) -> Call[RunInfo]:
        def parse(response: httpx.Response) -> RunInfo:
            return RunInfo.from_dict(response.json())

        return Call("GET", f"{API}/runs/{segment(run_id)}", parse)

    def _retry_run_call(self, run_id: str) -> Call[RunInfo]:
        def parse(response: httpx.Response) -> RunInfo:
            return RunInfo.from_dict(response.json())

        return Call("POST", f"{API}/runs/{segment(run_id)}/retry", parse)

    def _runs_call(
        self,
        *,
        correlation_id: str | None = None,
        agent: str | None = None,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Call[list[RunInfo]]:
        params = [("limit", str(limit)), ("offset", str(offset))]
        for name, value in (("correlation_id", correlation_id), ("agent", agent), ("state", state)):
            if value is not None:
                params.append((name, value))

        def parse(response: httpx.Response) -> list[RunInfo]:
            return [RunInfo.from_dict(item) for item in response.json()["items"]]

        return Call("GET", f"{API}/runs", parse, params=params)

    def _pager(
        self,
        *,
        type: TypeRef | Iterable[TypeRef] | None = None,
        produced_by: str | Iterable[str] | None = None,
        correlation_id: str | None = None,
        tag: str | Iterable[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        visibility: str | Iterable[str] | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> Pager:
        """The pager of a `list_artifacts` call (see `ArtifactQuery`)."""
        if not 1 <= page_size <= 500:
            raise ValueError("page_size must be between 1 and 500")
        params: list[tuple[str, str]] = []
        for name, values in (
            ("type", [self._type_name(t) for t in many(type)]),
            ("produced_by", many(produced_by)),
            ("tag", many(tag)),
            ("visibility", many(visibility)),
        ):
            params.extend((name, str(v)) for v in values)
        if correlation_id is not None:
            params.append(("correlation_id", correlation_id))
        if start is not None:
            params.append(("from", start.isoformat()))
        if end is not None:
            params.append(("to", end.isoformat()))
        return Pager(params, page_size, limit)

    # -- request bodies ---------------------------------------------------------------------

    def _publish_body(
        self,
        artifact: ArtifactRef,
        payload: Mapping[str, Any] | None,
        tags: Sequence[str] | None,
        partition_key: str | None,
        visibility: VisibilityArg,
    ) -> dict[str, Any]:
        if isinstance(artifact, BaseModel):
            if payload is not None:
                raise TypeError("pass a model, or a type name and a payload, not both")
            type_name = self.registry.name_for(artifact)
            data = artifact.model_dump(mode="json")
        elif isinstance(artifact, str):
            type_name, data = artifact, dict(payload or {})
        else:
            raise TypeError(f"cannot publish {type(artifact).__name__}: pass a model or type name")
        body: dict[str, Any] = {"type": type_name, "payload": data}
        if tags:
            body["tags"] = list(tags)
        if partition_key is not None:
            body["partition_key"] = partition_key
        if visibility is not None:
            body["visibility"] = visibility_json(visibility)
        return body

    def _batch_item(self, item: BatchItem | BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(item, BatchItem):
            body = self._publish_body(
                item.artifact, item.payload, item.tags, item.partition_key, item.visibility
            )
            if item.idempotency_key is not None:
                body["idempotency_key"] = item.idempotency_key
            return body
        if isinstance(item, BaseModel):
            return self._publish_body(item, None, None, None, None)
        return dict(item)  # a raw publish request, sent as it is

    def _filters(
        self, type_names: Iterable[TypeRef] | None, produced_by: Iterable[str] | None
    ) -> dict[str, list[str]]:
        filters: dict[str, list[str]] = {}
        if type_names:
            filters["type_names"] = [self._type_name(t) for t in type_names]
        if produced_by:
            filters["produced_by"] = list(produced_by)
        return filters

    def _type_name(self, ref: TypeRef) -> str:
        return ref if isinstance(ref, str) else self.registry.name_for(ref)


__all__ = ["ArtifactQuery", "BaseClient", "ClientOptions"]
