"""Periodic purge of expired idempotency records, run by the service as a background task."""

from __future__ import annotations

import asyncio
import logging

from flock.api.idempotency.protocol import IdempotencyStore, IdempotencyStoreUnavailableError

logger = logging.getLogger(__name__)


async def purge_periodically(store: IdempotencyStore, interval_seconds: float) -> None:
    """Purge expired records every `interval_seconds`, until cancelled.

    A failing purge is logged and retried next round: the task must outlive an outage of the
    store, or nothing would purge once the store is back.
    """
    if interval_seconds <= 0:
        raise ValueError("interval_seconds must be positive")
    while True:
        try:
            purged = await store.purge_expired()
        except IdempotencyStoreUnavailableError as exc:
            logger.warning("idempotency purge skipped: %s", exc)
        except Exception:
            # Anything else is a bug, but a dead purge task would let records pile up
            # silently; log it loudly and keep going.
            logger.exception("idempotency purge failed")
        else:
            logger.debug("idempotency purge removed %d expired records", purged)
        await asyncio.sleep(interval_seconds)
