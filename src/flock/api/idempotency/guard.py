"""The idempotency guard: claim a key, run once, store the outcome, replay it.

Duplicates never execute twice: the first request claims the key atomically and holds a
lease (renewed while it works); a duplicate waits for the outcome up to its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import Response

from flock.api.errors import APIError, ErrorCode, error_response_for, internal_error_response
from flock.api.idempotency.protocol import (
    CachedResponse,
    IdempotencyRecord,
    IdempotencyStore,
)

logger = logging.getLogger("flock.idempotency")

REPLAYED_HEADER = "Idempotent-Replayed"
_KEPT_HEADERS = ("content-type", "content-location", "x-correlation-id", "location")


def parse_idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The request's key from `X-Idempotency-Key` / `Idempotency-Key`, or None (400 if bad).

    `headers` may repeat a name (Starlette's `Headers`): differing repeats are a 400 too.
    """
    plain = _one_value(headers, "x-idempotency-key")
    standard = _one_value(headers, "idempotency-key")
    if standard is not None:
        standard = _unquote_sf_string(standard.strip())
    if plain is not None and standard is not None and plain != standard:
        raise _bad_key("X-Idempotency-Key and Idempotency-Key differ; send one key")
    key = plain if plain is not None else standard
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise _bad_key("an idempotency key must be 1-255 characters long")
    if not (key.isascii() and key.isprintable()) or not key.strip():  # " " to "~" only
        raise _bad_key("an idempotency key must be printable ASCII")
    return key


def _one_value(headers: Mapping[str, str], name: str) -> str | None:
    getlist = getattr(headers, "getlist", None)
    values = set(getlist(name)) if getlist is not None else set()
    if len(values) > 1:
        raise _bad_key(f"{name} was sent more than once with different keys; send one key")
    return headers.get(name)


def _unquote_sf_string(value: str) -> str:
    """RFC 8941 sf-string (`"abc"`, with \\" and \\\\ escapes) -> its content; else as is."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out, escaped = [], False
        for ch in value[1:-1]:
            if escaped:
                if ch not in '"\\':
                    raise _bad_key("invalid escape in quoted Idempotency-Key")
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                raise _bad_key("unescaped quote in Idempotency-Key")
            else:
                out.append(ch)
        if escaped:
            raise _bad_key("invalid escape in quoted Idempotency-Key")
        return "".join(out)
    return value


def _bad_key(message: str) -> APIError:
    return APIError(
        ErrorCode.VALIDATION_ERROR,
        message,
        status=400,
        details=[{"field": "header.Idempotency-Key", "message": message, "code": "invalid_key"}],
    )


# One encoder for every fingerprint: json.dumps() with options builds a new one per call.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint_of(body: Any) -> str:
    """SHA-256 of the canonical JSON form (sorted keys, no whitespace)."""
    return hashlib.sha256(_CANONICAL_JSON.encode(body).encode()).hexdigest()


def scoped_key(principal_scope: str, method: str, route: str, key: str) -> str:
    """One stored key per (caller, method, route, key); hashed so any key fits every store."""
    raw = "\x1f".join((principal_scope, method.upper(), route, key))
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(slots=True)
class KeyedCall:
    """The running holder of a key. `prior` is set when it took over a crashed holder's claim.

    An operation calls `record_publish` with the ids it is about to publish, then
    `mark_published` once the publish returned; the guard's clean-up depends on both.
    """

    key: str
    owner: str
    store: IdempotencyStore
    prior: IdempotencyRecord | None = None
    intent_recorded: bool = False
    published: bool = False
    correlation_id: str | None = field(default=None)

    async def record_publish(self, correlation_id: str, artifact_id: str | None = None) -> None:
        """Call before publishing, so a retry after a crash re-attaches instead of re-running."""
        if not await self.store.record_publish(self.key, self.owner, correlation_id, artifact_id):
            raise APIError(
                ErrorCode.IDEMPOTENCY_IN_PROGRESS,
                "this request's claim on its idempotency key was lost; retry",
            )
        self.intent_recorded = True
        self.correlation_id = correlation_id

    def mark_published(self) -> None:
        self.published = True


class IdempotentOperation(Protocol):
    async def execute(self, call: KeyedCall | None) -> Response:
        """Do the work once (call is None when the request carried no key)."""

    async def refresh(self, record: IdempotencyRecord) -> Response | None:
        """A fresh answer for a stored outcome that is not final (None: replay it as stored)."""


class IdempotencyGuard:
    """Runs operations at most once per scoped key. Shared by every keyed route."""

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        ttl_seconds: float = 86_400.0,
        lease_seconds: float = 30.0,
        wait_seconds: float = 30.0,
    ) -> None:
        if ttl_seconds <= 0 or lease_seconds <= 0:
            raise ValueError("idempotency TTL and lease must be positive")
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.outcomes: dict[str, int] = {}
        self._holding: dict[str, asyncio.Event] = {}  # keys held here -> woken on finish

    async def run(
        self,
        key: str,
        fingerprint: str,
        operation: IdempotentOperation,
        *,
        wait_seconds: float | None = None,
        correlation_id: str | None = None,
    ) -> Response:
        deadline = time.monotonic() + (self.wait_seconds if wait_seconds is None else wait_seconds)
        owner = secrets.token_hex(16)
        delay = 0.005
        while True:
            claim = await self.store.claim(
                key,
                fingerprint,
                owner=owner,
                lease_seconds=self.lease_seconds,
                ttl_seconds=self.ttl_seconds,
            )
            if claim.acquired:
                prior = claim.record if claim.taken_over else None
                call = KeyedCall(key, owner, self.store, prior)
                return await self._execute(call, operation, correlation_id)
            record: IdempotencyRecord | None = claim.record
            while True:
                if record is None:
                    break  # released: try to claim it
                if record.fingerprint != fingerprint:
                    self._count("conflict")
                    raise APIError(
                        ErrorCode.IDEMPOTENCY_CONFLICT,
                        "this idempotency key was used with a different request body",
                    )
                if record.lease_expired(time.time()):
                    break  # abandoned by its holder: take it over
                if record.state == "completed":
                    return await self._replay(record, operation)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._count("in_progress")
                    raise APIError(
                        ErrorCode.IDEMPOTENCY_IN_PROGRESS,
                        "a request with this idempotency key is still in progress; retry later",
                        correlation_id=record.correlation_id or correlation_id,
                    )
                await self._wait_local(key, min(delay, remaining))
                delay = min(delay * 2, 0.2)
                record = await self.store.get(key)

    async def _execute(
        self, call: KeyedCall, operation: IdempotentOperation, request_correlation_id: str | None
    ) -> Response:
        self._holding[call.key] = asyncio.Event()
        renewer = asyncio.get_running_loop().create_task(self._keep_lease(call))
        try:
            try:
                response = await operation.execute(call)
            except Exception as exc:
                # Before publishing, an error names the request's own correlation id.
                correlation_id = call.correlation_id or request_correlation_id
                known = error_response_for(exc, correlation_id)
                if known is None:
                    if call.published:
                        logger.exception("keyed request failed after publishing")
                        known = internal_error_response(correlation_id)
                    else:
                        await self._abandon(call)
                        raise
                response = known
            if response.status_code >= 500 and not call.published:
                await self._abandon(call)
                return response
            # 2xx/4xx, or anything once published (the operation's refresh() re-attaches).
            cached = CachedResponse(
                response.status_code,
                bytes(response.body),
                {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS},
            )
            if not await self.store.complete(call.key, call.owner, cached, self.ttl_seconds):
                logger.warning("idempotency claim %s was lost before completion", call.key[:12])
            self._count("executed")
            return response
        except BaseException:
            if not renewer.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._abandon(call))
            raise
        finally:
            renewer.cancel()
            event = self._holding.pop(call.key, None)
            if event is not None:
                event.set()

    async def _abandon(self, call: KeyedCall) -> None:
        """A failed holder: release the key, or (once it meant to publish) let a retry take over
        now, keeping the recorded ids so the retry re-attaches or publishes them exactly once."""
        if call.intent_recorded:
            await self.store.renew(call.key, call.owner, 0.0)
        else:
            await self.store.release(call.key, call.owner)

    async def _keep_lease(self, call: KeyedCall) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.store.renew(call.key, call.owner, self.lease_seconds):
                    logger.warning("idempotency claim %s was taken over", call.key[:12])
                    return
            except Exception:
                logger.warning("could not renew idempotency claim %s", call.key[:12], exc_info=True)

    async def _replay(self, record: IdempotencyRecord, operation: IdempotentOperation) -> Response:
        fresh = await operation.refresh(record)
        if fresh is not None:
            fresh.headers[REPLAYED_HEADER] = "true"
            self._count("reattached")
            return fresh
        assert record.response is not None
        self._count("replayed")
        headers = dict(record.response.headers)
        headers[REPLAYED_HEADER] = "true"
        return Response(
            record.response.body, status_code=record.response.status_code, headers=headers
        )

    async def _wait_local(self, key: str, seconds: float) -> None:
        """Sleep up to `seconds`, waking early if this process's holder of `key` finishes."""
        event = self._holding.get(key)
        if event is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


__all__ = [
    "REPLAYED_HEADER",
    "IdempotencyGuard",
    "IdempotentOperation",
    "KeyedCall",
    "fingerprint_of",
    "parse_idempotency_key",
    "scoped_key",
]
