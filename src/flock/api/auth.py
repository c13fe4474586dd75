"""Callers: API keys (`FLOCK_API_KEYS`) and the principal each one acts as."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from flock.api.errors import APIError, ErrorCode
from flock.core.visibility import AnyVisibility, Identity, caller_visibility

if TYPE_CHECKING:
    from flock.api.models import PublishRequest

_Scoped = TypeVar("_Scoped", bound="PublishRequest")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. Decides what the caller sees and scopes its idempotency keys."""

    name: str
    tenant: str | None = None
    labels: frozenset[str] = frozenset()
    allowed_types: frozenset[str] | None = None
    anonymous: bool = False
    identity: Identity = field(init=False, compare=False)
    _scope: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = None if self.anonymous else self.name
        object.__setattr__(self, "identity", Identity(name, self.labels, self.tenant))
        types = None if self.allowed_types is None else sorted(self.allowed_types)
        scope = json.dumps([self.tenant, self.name, sorted(self.labels), types])
        object.__setattr__(self, "_scope", scope)

    @property
    def scope(self) -> str:
        """The idempotency scope part for this caller: everything that decides what it may see
        and do (tenant, name, labels, allowed types), so no caller is ever replayed an answer
        its own permissions would not give it. Two keys of the same principal share it."""
        return self._scope

    def visibility_for(self, requested: AnyVisibility | None) -> AnyVisibility:
        """What an artifact this caller publishes is visible to: a tenant's caller publishes
        for its tenant only (403 `TenantScopeError` for anything wider)."""
        return caller_visibility(requested, self.tenant)

    def scoped(self, request: _Scoped) -> _Scoped:
        """The publish request with the visibility this caller's artifact gets."""
        visibility = self.visibility_for(request.visibility)
        if visibility is request.visibility:
            return request
        return request.model_copy(update={"visibility": visibility})

    def check_may_publish(self, type_name: str) -> None:
        if self.allowed_types is not None and type_name not in self.allowed_types:
            raise APIError(
                ErrorCode.FORBIDDEN,
                f"this API key may not publish artifacts of type {type_name!r}",
            )


ANONYMOUS_PRINCIPAL = Principal(name="anonymous", anonymous=True)


class APIKeyring:
    """The configured API keys. Lookup compares the presented key with every key, through
    their SHA-256 digests: in constant time, and telling nothing of the keys' lengths."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        if not keys:
            raise ValueError("an API keyring needs at least one key")
        self._keys = [(_digest(k), p) for k, p in keys.items()]

    @classmethod
    def from_env(cls) -> APIKeyring | None:
        """The keys named by `FLOCK_API_KEYS` (a JSON file path), or None when unset."""
        from flock.settings import load_settings

        path = load_settings().api_keys
        return cls.from_file(path) if path else None

    @classmethod
    def from_file(cls, path: str | Path) -> APIKeyring:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read API keys file {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "API keys") -> APIKeyring:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f'{source}: expected {{"keys": [...]}}')
        keys: dict[str, Principal] = {}
        for i, entry in enumerate(data["keys"]):
            if not isinstance(entry, dict) or not entry.get("key") or not entry.get("principal"):
                raise ValueError(f'{source}: keys[{i}] needs non-empty "key" and "principal"')
            allowed = entry.get("allowed_types")
            keys[str(entry["key"])] = Principal(
                name=str(entry["principal"]),
                tenant=entry.get("tenant"),
                labels=frozenset(entry.get("labels") or ()),
                allowed_types=frozenset(allowed) if allowed is not None else None,
            )
        return cls(keys)

    def lookup(self, presented: str) -> Principal | None:
        candidate = _digest(presented)
        found: Principal | None = None
        for key, principal in self._keys:
            if hmac.compare_digest(key, candidate):
                found = principal
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(request: Request) -> str | None:
    """The key sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`.

    Both present with different keys is ambiguous: 400, rather than one silently winning.
    """
    bearer = None
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            bearer = value.strip()
    header = request.headers.get("x-api-key") or None
    if (
        bearer is not None
        and header is not None
        and not hmac.compare_digest(_digest(bearer), _digest(header))
    ):
        raise APIError(
            ErrorCode.VALIDATION_ERROR,
            "Authorization: Bearer and X-API-Key name different keys; send one",
            status=400,
            details=[
                {
                    "field": "header.x-api-key",
                    "message": "differs from the Bearer key",
                    "code": "conflict",
                }
            ],
        )
    return bearer or header


def authenticate(keyring: APIKeyring | None, request: Request) -> Principal:
    """The caller's principal; 401 when keys are configured and none valid was sent."""
    if keyring is None:
        return ANONYMOUS_PRINCIPAL
    key = presented_key(request)
    principal = keyring.lookup(key) if key else None
    if principal is None:
        raise APIError(
            ErrorCode.UNAUTHORIZED,
            "a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


__all__ = ["ANONYMOUS_PRINCIPAL", "APIKeyring", "Principal", "authenticate", "presented_key"]
