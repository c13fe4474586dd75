"""Service settings, with their environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from flock.settings import MIB, Settings, load_settings


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Limits and timings of one `BlackboardHTTPService`.

    - max_body_bytes (`FLOCK_MAX_BODY_BYTES`, 1 MiB): larger bodies get 413 unread.
    - idempotency_ttl (`FLOCK_IDEMPOTENCY_TTL`, 86400 s): how long outcomes are replayed.
    - idempotency_lease (`FLOCK_IDEMPOTENCY_LEASE`, 30 s): how long a claim outlives a
      crashed holder before a retry may take it over (holders renew it every lease/3).
    - idempotency_wait (`FLOCK_IDEMPOTENCY_WAIT`, 30 s): how long a duplicate of a running
      async request waits for its outcome (sync requests wait up to their own timeout).
    - purge_interval (`FLOCK_IDEMPOTENCY_PURGE_INTERVAL`, 60 s): expired-record purge period.
    - max_sync_artifacts (`FLOCK_MAX_SYNC_ARTIFACTS`, 1000): sync results cap (`truncated`).
    - max_inflight_sync (`FLOCK_MAX_INFLIGHT_SYNC`, 1000): concurrent sync calls per caller.
    """

    max_body_bytes: int = MIB
    idempotency_ttl: float = 86_400.0
    idempotency_lease: float = 30.0
    idempotency_wait: float = 30.0
    purge_interval: float = 60.0
    max_sync_artifacts: int = 1000
    max_inflight_sync: int = 1000

    @classmethod
    def from_env(cls) -> ServiceSettings:
        """The `FLOCK_*` values (see `flock.settings`)."""
        return cls.from_settings(load_settings())

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceSettings:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            idempotency_ttl=settings.idempotency_ttl,
            idempotency_lease=settings.idempotency_lease,
            idempotency_wait=settings.idempotency_wait,
            purge_interval=settings.idempotency_purge_interval,
            max_sync_artifacts=settings.max_sync_artifacts,
            max_inflight_sync=settings.max_inflight_sync,
        )

    def validate(self) -> None:
        for name in (
            "max_body_bytes",
            "idempotency_ttl",
            "idempotency_lease",
            "purge_interval",
            "max_sync_artifacts",
            "max_inflight_sync",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.idempotency_wait < 0:
            raise ValueError("idempotency_wait must not be negative")


__all__ = ["ServiceSettings"]
