"""Idempotency records and the store protocol every backend implements.

A request with an idempotency key first *claims* the key: the first caller wins and holds a
lease while it works; duplicates see the claim and wait for its outcome. The holder records
which correlation/artifact it is about to publish (so a retry after a crash re-attaches
instead of publishing twice), then *completes* the record with the response, or *releases*
it when it failed before publishing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

RecordState = Literal["in_progress", "completed"]


class IdempotencyStoreUnavailableError(RuntimeError):
    """The idempotency backend could not be reached; the request may be retried."""


class IdempotencyStoreFullError(IdempotencyStoreUnavailableError):
    """The store holds its maximum of records and every one is a live in-progress claim."""


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A finished response, replayed byte for byte."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What the store holds for one scoped key. Times are Unix epoch seconds."""

    key: str
    fingerprint: str
    state: RecordState
    owner: str
    created_at: float
    expires_at: float
    lease_expires_at: float
    correlation_id: str | None = None
    artifact_id: str | None = None
    response: CachedResponse | None = None

    def lease_expired(self, now: float) -> bool:
        return self.state == "in_progress" and self.lease_expires_at <= now


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """`acquired`: the caller now holds the key. Else `record` is the existing holder's record.

    When a caller acquires a key whose previous holder's lease ran out, `record` keeps the
    previous holder's `correlation_id`/`artifact_id` (`taken_over` is True), so the new holder
    can re-attach to what was already published.
    """

    acquired: bool
    record: IdempotencyRecord
    taken_over: bool = False


@runtime_checkable
class IdempotencyStore(Protocol):
    """Atomic claim/complete/release of idempotency keys, with lease and TTL expiry."""

    async def claim(
        self,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> ClaimResult:
        """Atomically take `key` if it is free, expired, or its holder's lease ran out.

        A lapsed lease claimed with the same `fingerprint` is taken over (see `ClaimResult`).
        Claimed with a different one it is not acquired: until its TTL runs out a key stays
        bound to the body it was first claimed with, whatever became of that claim's holder.
        The owner-checked calls below also fail once the record's TTL has run out.
        """

    async def record_publish(
        self, key: str, owner: str, correlation_id: str, artifact_id: str | None = None
    ) -> bool:
        """Note what the holder is about to publish. False if `owner` no longer holds the key."""

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        """Extend the holder's lease. False if `owner` no longer holds the key."""

    async def complete(
        self, key: str, owner: str, response: CachedResponse, ttl_seconds: float
    ) -> bool:
        """Store the outcome (kept for `ttl_seconds`). False if `owner` no longer holds the key."""

    async def release(self, key: str, owner: str) -> bool:
        """Drop an in-progress claim so a retry runs anew. False if `owner` does not hold it."""

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The record, or None if there is none or it expired."""

    async def purge_expired(self) -> int:
        """Delete expired records; return how many went."""

    async def ping(self) -> None:
        """Raise `IdempotencyStoreUnavailableError` if the backend cannot be reached."""

    async def close(self) -> None: ...


__all__ = [
    "CachedResponse",
    "ClaimResult",
    "IdempotencyRecord",
    "IdempotencyStore",
    "IdempotencyStoreFullError",
    "IdempotencyStoreUnavailableError",
    "RecordState",
]
