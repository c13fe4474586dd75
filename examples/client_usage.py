"""Calling Flock from another Python service with `flock.client`.

Start the demo server first:   uv run flock serve --demo
then run:                      uv run python examples/client_usage.py
(FLOCK_URL and FLOCK_API_KEY override the server address and the API key.)
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from flock.client import AsyncFlockClient, BatchItem, FlockAPIError, FlockClient
from flock.registry import TypeRegistry

URL = os.environ.get("FLOCK_URL", "http://127.0.0.1:8344")
API_KEY = os.environ.get("FLOCK_API_KEY")  # None: the server has no API keys configured


# The client side of the demo's types. The names must match the server's type names; a
# registry of our own keeps them apart from any other models of this process.
types = TypeRegistry()


class Document(BaseModel):
    title: str
    text: str


class Report(BaseModel):
    title: str
    summary: str
    keywords: list[str]


types.register(Document)
types.register(Report)

TEXT = "Tea is a drink. Tea grows on bushes. People drink tea with milk or lemon."


def blocking() -> None:
    with FlockClient(URL, api_key=API_KEY, registry=types, max_retries=5) as flock:
        # Publish and wait for the whole cascade (Summary, Keywords, then Report).
        result = flock.publish_sync(Document(title="Tea", text=TEXT), timeout=30)
        (report,) = result.models_of(Report)
        print("report:", report.title, report.keywords)
        print("completed:", result.completed, "artifacts:", [a.type for a in result.artifacts])

        # Fire and forget; follow the cascade later through its correlation id.
        accepted = flock.publish("Document", {"title": "Coffee", "text": "Coffee is bitter."})
        print("accepted:", accepted.correlation_id)

        # One idempotency key per logical operation: sending it again never runs twice.
        key = f"order-{accepted.correlation_id}"
        first = flock.publish(Document(title="Once", text=TEXT), idempotency_key=key)
        again = flock.publish(Document(title="Once", text=TEXT), idempotency_key=key)
        assert again.replayed and again.artifact_id == first.artifact_id

        # A batch: each item succeeds or fails on its own.
        batch = flock.publish_batch(
            [
                Document(title="One", text=TEXT),
                BatchItem("Document", {"title": "Two", "text": TEXT}, tags=["batch"]),
                BatchItem("Document", {"title": "missing its text"}),
            ]
        )
        print("failed items:", len(batch.failed))
        for item in batch.failed:
            assert item.error is not None
            print(f"  item {item.index}: {item.error.code} {item.error.details[0]['field']}")

        # Errors are exceptions with the problem document's fields.
        try:
            flock.publish("NoSuchType", {})
        except FlockAPIError as error:
            print("error:", error.code, error.status, "retryable:", error.retryable)

        # Page through query results.
        reports = list(flock.list_artifacts(type=Report, page_size=50, limit=10))
        print("reports so far:", len(reports))


async def concurrent() -> None:
    async with AsyncFlockClient(URL, api_key=API_KEY, registry=types) as flock:
        results = await asyncio.gather(
            *(flock.publish_sync(Document(title=t, text=TEXT)) for t in ("A", "B", "C"))
        )
        print("async reports:", [r.models_of(Report)[0].title for r in results])
        status = await flock.correlation(results[0].correlation_id)
        print("state:", status.state)


if __name__ == "__main__":
    blocking()
    asyncio.run(concurrent())
