"""The in-memory idempotency store: the library default, for tests and single-process use."""

from __future__ import annotations

import heapq
import time
from dataclasses import replace

from flock.api.idempotency.protocol import (
    CachedResponse,
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStoreFullError,
)


class InMemoryIdempotencyStore:
    """Records in a dict; every method runs without awaiting, so each call is atomic.

    `max_records` bounds memory. When a new key arrives at the limit, expired records go
    first, then the longest-completed ones; in-progress claims are never evicted, and if
    they alone fill the store, `claim` raises `IdempotencyStoreFullError` (answered 503).
    Nothing survives a restart, and replicas do not share it.
    """

    def __init__(self, max_records: int = 100_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.max_records = max_records
        self._records: dict[str, IdempotencyRecord] = {}
        # Completed keys in completion order: the first is the oldest, evicted first.
        self._completed: dict[str, None] = {}
        # (expires_at, key) min-heap. Entries go stale when a record is replaced or dropped;
        # they are skipped when popped and cleared out by `_compact`.
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._records)

    async def claim(
        self,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> ClaimResult:
        now = time.time()
        current = self._records.get(key)
        live = current if current is not None and current.expires_at > now else None
        if live is not None and (live.fingerprint != fingerprint or not live.lease_expired(now)):
            return ClaimResult(acquired=False, record=live)
        if live is not None:
            taken = replace(
                live,
                owner=owner,
                expires_at=now + ttl_seconds,
                lease_expires_at=now + lease_seconds,
            )
            self._put(taken)
            return ClaimResult(acquired=True, record=taken, taken_over=True)
        if current is None:
            self._make_room(now)
        record = IdempotencyRecord(
            key=key,
            fingerprint=fingerprint,
            state="in_progress",
            owner=owner,
            created_at=now,
            expires_at=now + ttl_seconds,
            lease_expires_at=now + lease_seconds,
        )
        self._completed.pop(key, None)
        self._put(record)
        return ClaimResult(acquired=True, record=record)

    async def record_publish(
        self, key: str, owner: str, correlation_id: str, artifact_id: str | None = None
    ) -> bool:
        record = self._held(key, owner)
        if record is None:
            return False
        self._records[key] = replace(record, correlation_id=correlation_id, artifact_id=artifact_id)
        return True

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        record = self._held(key, owner)
        if record is None:
            return False
        self._records[key] = replace(record, lease_expires_at=time.time() + lease_seconds)
        return True

    async def complete(
        self, key: str, owner: str, response: CachedResponse, ttl_seconds: float
    ) -> bool:
        record = self._held(key, owner)
        if record is None:
            return False
        done = replace(
            record,
            state="completed",
            response=response,
            expires_at=time.time() + ttl_seconds,
        )
        self._put(done)
        self._completed[key] = None
        return True

    async def release(self, key: str, owner: str) -> bool:
        if self._held(key, owner) is None:
            return False
        self._drop(key)
        return True

    async def get(self, key: str) -> IdempotencyRecord | None:
        record = self._records.get(key)
        if record is None or record.expires_at <= time.time():
            return None
        return record

    async def purge_expired(self) -> int:
        return self._drop_expired(time.time())

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _held(self, key: str, owner: str) -> IdempotencyRecord | None:
        record = self._records.get(key)
        if (
            record is None
            or record.owner != owner
            or record.state != "in_progress"
            or record.expires_at <= time.time()
        ):
            return None
        return record

    def _put(self, record: IdempotencyRecord) -> None:
        previous = self._records.get(record.key)
        self._records[record.key] = record
        if previous is None or previous.expires_at != record.expires_at:
            heapq.heappush(self._expiry, (record.expires_at, record.key))
            if len(self._expiry) > 2 * len(self._records) + 1024:
                self._compact()

    def _drop(self, key: str) -> None:
        del self._records[key]
        self._completed.pop(key, None)

    def _drop_expired(self, now: float) -> int:
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiry)
            record = self._records.get(key)
            if record is not None and record.expires_at == expires_at:
                self._drop(key)
                dropped += 1
        return dropped

    def _make_room(self, now: float) -> None:
        if len(self._records) < self.max_records:
            return
        self._drop_expired(now)
        while len(self._records) >= self.max_records and self._completed:
            self._drop(next(iter(self._completed)))
        if len(self._records) >= self.max_records:
            raise IdempotencyStoreFullError(
                f"idempotency store is full: {self.max_records} in-progress claims"
            )

    def _compact(self) -> None:
        self._expiry = [(r.expires_at, k) for k, r in self._records.items()]
        heapq.heapify(self._expiry)
