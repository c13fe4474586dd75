"""Idempotency records in Redis: one hash per key, changed only by Lua scripts.

Each script reads and writes a single key, so it runs atomically (and on Redis Cluster).
Times are computed by the caller with `time.time()`, like the other backends, and stored as
the strings Python formats; the scripts only compare them. Keys carry a native expiry at or
after their logical one, so Redis itself purges expired records.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flock.api.idempotency.protocol import (
    CachedResponse,
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStoreUnavailableError,
    RecordState,
)
from flock.core.store.sql_backends import DEFAULT_STORE_TIMEOUT, deadline, describe_unavailable

# KEYS[1] record; ARGV: now, fingerprint, owner, expires_at, lease_expires_at, expire_ms.
# Returns {0, fields} when the key is held (or its lapsed lease was claimed with another
# fingerprint), {1, fields} fresh, {2, fields} taken over (a lapsed lease, same fingerprint).
_CLAIM = """
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'expires_at', 'state', 'lease_expires_at', 'fingerprint')
local outcome = 1
if cur[1] and tonumber(cur[1]) > now then
  if cur[2] ~= 'in_progress' or tonumber(cur[3]) > now or cur[4] ~= ARGV[2] then
    return {0, redis.call('HGETALL', KEYS[1])}
  end
  outcome = 2
end
if outcome == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], 'state', 'in_progress',
    'created_at', ARGV[1])
end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'expires_at', ARGV[4],
  'lease_expires_at', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {outcome, redis.call('HGETALL', KEYS[1])}
"""

# Shared guard: the record exists, is unexpired, in progress and held by ARGV[1] (owner);
# ARGV[2] is now.
_HELD = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'state', 'expires_at')
if cur[1] ~= ARGV[1] or cur[2] ~= 'in_progress' or tonumber(cur[3]) <= tonumber(ARGV[2]) then
  return 0
end
"""

# ARGV[3] correlation_id, ARGV[4] artifact_id ('' for none).
_RECORD_PUBLISH = (
    _HELD
    + """
redis.call('HSET', KEYS[1], 'correlation_id', ARGV[3])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], 'artifact_id')
else
  redis.call('HSET', KEYS[1], 'artifact_id', ARGV[4])
end
return 1
"""
)

# ARGV[3] new lease_expires_at. Native expiry follows the later of lease and TTL.
_RENEW = (
    _HELD
    + """
redis.call('HSET', KEYS[1], 'lease_expires_at', ARGV[3])
local last = math.max(tonumber(ARGV[3]), tonumber(cur[3]))
redis.call('PEXPIRE', KEYS[1], math.ceil((last - tonumber(ARGV[2])) * 1000))
return 1
"""
)

# ARGV[3] status, ARGV[4] body, ARGV[5] headers (JSON), ARGV[6] expires_at, ARGV[7] ttl ms.
_COMPLETE = (
    _HELD
    + """
redis.call('HSET', KEYS[1], 'state', 'completed', 'status_code', ARGV[3], 'body', ARGV[4],
  'headers', ARGV[5], 'expires_at', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
"""
)

_RELEASE = (
    _HELD
    + """
redis.call('DEL', KEYS[1])
return 1
"""
)


def _closed_transport(exc: BaseException) -> bool:
    """uvloop's error for a write to a connection the server reset (redis-py lets it out)."""
    return isinstance(exc, RuntimeError) and "handler is closed" in str(exc)


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _fields(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def _record(key: str, fields: dict[str, bytes]) -> IdempotencyRecord:
    def text(name: str) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    state: RecordState = "completed" if fields["state"] == b"completed" else "in_progress"
    response = None
    if state == "completed":
        headers = json.loads(fields.get("headers", b"{}"))
        response = CachedResponse(
            status_code=int(fields["status_code"]),
            body=fields.get("body", b""),
            headers={str(k): str(v) for k, v in headers.items()},
        )
    return IdempotencyRecord(
        key=key,
        fingerprint=fields["fingerprint"].decode(),
        state=state,
        owner=fields["owner"].decode(),
        created_at=float(fields["created_at"]),
        expires_at=float(fields["expires_at"]),
        lease_expires_at=float(fields["lease_expires_at"]),
        correlation_id=text("correlation_id"),
        artifact_id=text("artifact_id"),
        response=response,
    )


class RedisIdempotencyStore:
    """Records in Redis under `prefix + key`, shared by every replica using the server.

    `timeout` bounds every operation (connecting, each command, redis-py's retries).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "flock:idem:",
        timeout: float | None = DEFAULT_STORE_TIMEOUT,
    ) -> None:
        self.prefix = prefix
        self._timeout = timeout
        self._redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            decode_responses=False,
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._record_publish = self._redis.register_script(_RECORD_PUBLISH)
        self._renew = self._redis.register_script(_RENEW)
        self._complete = self._redis.register_script(_COMPLETE)
        self._release = self._redis.register_script(_RELEASE)

    @asynccontextmanager
    async def _unavailable_on_error(self) -> AsyncIterator[None]:
        """Bound one operation by the deadline (socket timeouts alone do not bound redis-py's
        own retries); a lost, reset or silent server becomes
        `IdempotencyStoreUnavailableError`."""
        try:
            async with deadline(self._timeout):
                yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # TimeoutError too
            reason = describe_unavailable(exc, self._timeout)
            raise IdempotencyStoreUnavailableError(
                f"idempotency store unavailable: {reason}"
            ) from exc
        except RuntimeError as exc:
            if not _closed_transport(exc):
                raise
            # The dead connection went back to the pool as if alive: drop the idle ones.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise IdempotencyStoreUnavailableError(
                "idempotency store unavailable: the connection was reset"
            ) from exc

    async def _run(self, script: AsyncScript, key: str, *args: str | bytes | int) -> Any:
        async with self._unavailable_on_error():
            return await script(keys=[self.prefix + key], args=list(args))

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
        outcome, flat = await self._run(
            self._claim,
            key,
            repr(now),
            fingerprint,
            owner,
            repr(now + ttl_seconds),
            repr(now + lease_seconds),
            _ms(max(lease_seconds, ttl_seconds)),
        )
        record = _record(key, _fields(flat))
        return ClaimResult(acquired=outcome != 0, record=record, taken_over=outcome == 2)

    async def record_publish(
        self, key: str, owner: str, correlation_id: str, artifact_id: str | None = None
    ) -> bool:
        done = await self._run(
            self._record_publish, key, owner, repr(time.time()), correlation_id, artifact_id or ""
        )
        return bool(done)

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        done = await self._run(self._renew, key, owner, repr(now), repr(now + lease_seconds))
        return bool(done)

    async def complete(
        self, key: str, owner: str, response: CachedResponse, ttl_seconds: float
    ) -> bool:
        now = time.time()
        done = await self._run(
            self._complete,
            key,
            owner,
            repr(now),
            str(response.status_code),
            response.body,
            json.dumps(response.headers, separators=(",", ":")),
            repr(now + ttl_seconds),
            _ms(ttl_seconds),
        )
        return bool(done)

    async def release(self, key: str, owner: str) -> bool:
        return bool(await self._run(self._release, key, owner, repr(time.time())))

    async def get(self, key: str) -> IdempotencyRecord | None:
        async with self._unavailable_on_error():
            flat: dict[bytes, bytes] = await self._redis.hgetall(self.prefix + key)  # type: ignore[misc]
        if not flat:
            return None
        record = _record(key, {k.decode(): v for k, v in flat.items()})
        return record if record.expires_at > time.time() else None

    async def purge_expired(self) -> int:
        # Keys expire natively; nothing is left for a sweep to delete.
        return 0

    async def ping(self) -> None:
        async with self._unavailable_on_error():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
