"""A Python client for Flock's REST API: `FlockClient` (blocking) and `AsyncFlockClient`.

Both set an idempotency key on every publish and retry retryable errors, 5xx answers
without a body and dropped connections with exponential backoff and full jitter, never
sooner than `Retry-After`. Errors raise `FlockAPIError`.
"""

from flock.client._async import AsyncFlockClient
from flock.client._sync import FlockClient
from flock.client.calls import BatchItem
from flock.client.errors import FlockAPIError, FlockTransportError
from flock.client.results import (
    AgentFailure,
    BatchItemResult,
    BatchResult,
    CorrelationInfo,
    PublishResult,
    RunInfo,
    SyncResult,
    TypeInfo,
)
from flock.client.retry import RetryEvent, RetryPolicy

__all__ = [
    "AgentFailure",
    "AsyncFlockClient",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "CorrelationInfo",
    "FlockAPIError",
    "FlockClient",
    "FlockTransportError",
    "PublishResult",
    "RetryEvent",
    "RetryPolicy",
    "RunInfo",
    "SyncResult",
    "TypeInfo",
]
