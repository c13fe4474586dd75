"""`AsyncFlockClient`: the asyncio client (httpx.AsyncClient); all logic lives in `BaseClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import httpx
from pydantic import BaseModel

from flock.client._base import ArtifactQuery, BaseClient, ClientOptions
from flock.client.calls import ArtifactRef, BatchItem, Call, Outcome, TypeRef, VisibilityArg
from flock.client.results import (
    BatchResult,
    CorrelationInfo,
    PublishResult,
    RunInfo,
    SyncResult,
    TypeInfo,
)
from flock.core.artifacts import Artifact

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")


class AsyncFlockClient(BaseClient):
    """Calls a Flock REST API. Each publish gets an idempotency key (yours or a uuid4) that
    every retry reuses, so a retried call never runs twice.

        async with AsyncFlockClient("http://127.0.0.1:8344", api_key="...") as flock:
            result = await flock.publish_sync(Document(title="t", text="..."), timeout=30)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8344",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.AsyncClient(transport=transport)

    async def publish(
        self,
        artifact: ArtifactRef,
        payload: Mapping[str, Any] | None = None,
        *,
        tags: Sequence[str] | None = None,
        partition_key: str | None = None,
        visibility: VisibilityArg = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish and return at once; the cascade runs on the server."""
        return await self._run(
            self._publish_call(
                artifact,
                payload,
                tags=tags,
                partition_key=partition_key,
                visibility=visibility,
                idempotency_key=idempotency_key,
            )
        )

    async def publish_sync(
        self,
        artifact: ArtifactRef,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        type_names: Iterable[TypeRef] | None = None,
        produced_by: Iterable[str] | None = None,
        on_timeout: Literal["partial", "error"] = "partial",
        tags: Sequence[str] | None = None,
        partition_key: str | None = None,
        visibility: VisibilityArg = None,
        idempotency_key: str | None = None,
    ) -> SyncResult:
        """Publish and wait (up to `timeout` s on the server) for the cascade's artifacts."""
        return await self._run(
            self._publish_sync_call(
                artifact,
                payload,
                timeout=timeout,
                type_names=type_names,
                produced_by=produced_by,
                on_timeout=on_timeout,
                tags=tags,
                partition_key=partition_key,
                visibility=visibility,
                idempotency_key=idempotency_key,
            )
        )

    async def publish_batch(
        self,
        items: Iterable[BatchItem | BaseModel | Mapping[str, Any]],
        *,
        wait: bool = False,
        timeout: float = 30.0,
        type_names: Iterable[TypeRef] | None = None,
        produced_by: Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> BatchResult:
        """Publish up to 100 items; each succeeds or fails alone (see `BatchResult.failed`)."""
        return await self._run(
            self._publish_batch_call(
                items,
                wait=wait,
                timeout=timeout,
                type_names=type_names,
                produced_by=produced_by,
                idempotency_key=idempotency_key,
            )
        )

    async def get_artifact(self, artifact_id: str) -> Artifact:
        return await self._run(self._get_artifact_call(artifact_id))

    async def correlation(self, correlation_id: str) -> CorrelationInfo:
        return await self._run(self._correlation_call(correlation_id))

    async def cancel(self, correlation_id: str) -> CorrelationInfo:
        """Cancel a cascade (`POST /correlations/{id}/cancel`); cancelling again is harmless."""
        return await self._run(self._cancel_call(correlation_id))

    async def list_types(self) -> list[TypeInfo]:
        """The server's registered artifact types with their payload schemas (`GET /types`)."""
        return await self._run(self._types_call())

    async def get_run(self, run_id: str) -> RunInfo:
        return await self._run(self._run_call(run_id))

    async def retry_run(self, run_id: str) -> RunInfo:
        """Queue a dead or cancelled run again (FlockAPIError `INVALID_STATE` otherwise)."""
        return await self._run(self._retry_run_call(run_id))

    async def list_runs(
        self,
        *,
        correlation_id: str | None = None,
        agent: str | None = None,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunInfo]:
        """One page of runs, oldest first (`GET /runs`)."""
        call = self._runs_call(
            correlation_id=correlation_id, agent=agent, state=state, limit=limit, offset=offset
        )
        return await self._run(call)

    async def list_artifacts(self, **query: Unpack[ArtifactQuery]) -> AsyncIterator[Artifact]:
        """Every matching artifact (up to `limit`), fetched a page at a time as you iterate.

        The filters and paging options are those of `ArtifactQuery`.
        """
        pager = self._pager(**query)
        while (call := pager.next_call()) is not None:
            for artifact in pager.take(await self._run(call)):
                yield artifact

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFlockClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, call: Call[T]) -> T:
        """Carry out a call's plan: send what it says to send, sleep what it says to sleep."""
        plan = self._plan(call)
        outcome: Outcome = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as done:
                return cast(T, done.value)
            if isinstance(step, httpx.Request):
                try:
                    outcome = await self._http.send(step)
                except httpx.TransportError as exc:
                    outcome = exc
            else:
                await asyncio.sleep(step)
                outcome = None


__all__ = ["AsyncFlockClient"]
