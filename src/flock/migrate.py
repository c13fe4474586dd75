"""Schema versions of the SQL stores, for `flock db current`, `flock db upgrade` and the
start-up of `flock serve` / `flock worker`.

Serving upgrades an embedded SQLite file by itself (and says so), but a PostgreSQL
database only when asked (`--migrate`): a shared database is upgraded once, by an operator,
not by whichever replica starts first. An empty database gets its tables either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flock.api.idempotency.protocol import IdempotencyStoreUnavailableError
from flock.core.store.migrations import SchemaState, SchemaVersionError, Upgrade
from flock.core.store.protocol import StoreUnavailableError
from flock.core.store.urls import parse_store_url
from flock.startup import describe_store

logger = logging.getLogger("flock.serve")


@dataclass
class _Versioned:
    """A store with a versioned schema: what it is, where, and its operations."""

    label: str
    kind: str
    where: str
    prepare: Callable[..., Awaitable[Upgrade]]
    state: Callable[[], Awaitable[SchemaState]]
    close: Callable[[], Awaitable[None]]


def _open(
    store_url: str | None, idempotency_url: str | None, *, upgrade: bool | None
) -> list[_Versioned]:
    """The SQL stores among the URLs (memory and Redis keep no schema)."""
    from flock.api.idempotency.stores import store_from_url as idempotency_store
    from flock.core.store.sql import store_from_url as blackboard_store

    found: list[_Versioned] = []
    for label, url, build in (
        ("blackboard store", store_url, blackboard_store),
        ("idempotency store", idempotency_url, idempotency_store),
    ):
        if not url or parse_store_url(url).kind not in ("sqlite", "postgresql"):
            continue
        store: Any = build(url, upgrade=upgrade)
        found.append(
            _Versioned(
                label,
                parse_store_url(url).kind,
                describe_store(url),
                store.prepare,
                store.schema_state,
                store.close,
            )
        )
    return found


async def current(store_url: str | None, idempotency_url: str | None) -> list[str]:
    """One line per SQL store: its schema version and this Flock's."""
    lines = []
    for store in _open(store_url, idempotency_url, upgrade=False):
        try:
            state = await store.state()
        finally:
            await store.close()
        if state.version is None:
            status = f"empty (no tables yet); this Flock creates version {state.latest}"
        elif state.current:
            status = f"schema version {state.version} (current)"
        elif state.version < state.latest:
            status = (
                f"schema version {state.version}, this Flock's is {state.latest}: "
                "`flock db upgrade` upgrades it"
            )
        else:
            status = f"schema version {state.version}, newer than this Flock's {state.latest}"
        lines.append(f"{store.label} ({store.where}): {status}")
    return lines


async def upgrade(store_url: str | None, idempotency_url: str | None) -> list[str]:
    """Bring every SQL store among the URLs to this Flock's schema version."""
    lines = []
    for store in _open(store_url, idempotency_url, upgrade=True):
        try:
            outcome = await store.prepare(upgrade=True)
        finally:
            await store.close()
        lines.append(f"{outcome.describe()} ({store.where})")
    return lines


async def prepare_for_serving(
    store_url: str | None, idempotency_url: str | None, *, migrate: bool
) -> None:
    """Check (and where allowed, upgrade) the stores before serving, logging what was done.

    SQLite files are upgraded always, PostgreSQL only with `migrate`; `SchemaVersionError`
    when a store cannot be served as it is. A store that does not answer is left for
    `/ready` to report (the server serves anyway, as it does for any outage)."""
    for store in _open(store_url, idempotency_url, upgrade=None):
        allowed = migrate or store.kind == "sqlite"
        try:
            outcome = await store.prepare(upgrade=allowed)
        except SchemaVersionError:
            raise
        except (StoreUnavailableError, IdempotencyStoreUnavailableError) as exc:
            logger.warning(
                "%s: schema not checked, the store did not answer (%s)", store.label, exc
            )
            continue
        finally:
            await store.close()
        if outcome.action != "current":
            logger.info("%s", outcome.describe())


__all__ = ["current", "prepare_for_serving", "upgrade"]
