"""The plain data of API calls: a call's description, batch items, paging."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from flock.client.results import ArtifactPage
from flock.core.artifacts import Artifact
from flock.core.visibility import AnyVisibility, visibility_to_dict

T = TypeVar("T")

Step = httpx.Request | float  # send this request / sleep this many seconds
Outcome = httpx.Response | httpx.TransportError | None
Plan = Generator[Step, Outcome, T]

API = "/api/v1"

ArtifactRef = BaseModel | str  # a model instance, or a type name (with a payload dict)
TypeRef = str | type[BaseModel]
VisibilityArg = AnyVisibility | Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One logical API call: retried as a whole, under one idempotency key."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: Any = None
    params: Sequence[tuple[str, str]] = ()
    idempotency_key: str | None = None
    timeout: float | None = None
    # Seconds the call may take in all, retries included (None: the client's `deadline`),
    # and how long one attempt takes at least (a waiting call's wait): no retry is started
    # that the deadline would cut short.
    deadline: float | None = None
    attempt_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One item of `publish_batch`, when it needs tags, visibility or its own key."""

    artifact: ArtifactRef
    payload: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    partition_key: str | None = None
    visibility: VisibilityArg = None
    idempotency_key: str | None = None


class Pager:
    """Offset paging through `GET /artifacts`: which page to ask for next, and when to stop."""

    def __init__(self, params: list[tuple[str, str]], page_size: int, limit: int | None) -> None:
        self.params, self.page_size, self.limit = params, page_size, limit
        self.offset = 0
        self.done = limit is not None and limit <= 0

    def next_call(self) -> Call[ArtifactPage] | None:
        if self.done:
            return None
        size = self.page_size
        if self.limit is not None:
            size = min(size, self.limit - self.offset)
        params = [*self.params, ("limit", str(size)), ("offset", str(self.offset))]
        return Call("GET", f"{API}/artifacts", parse_page, params=params)

    def take(self, page: ArtifactPage) -> list[Artifact]:
        self.offset += len(page.items)
        self.done = (
            not page.items
            or self.offset >= page.total
            or (self.limit is not None and self.offset >= self.limit)
        )
        return page.items


def parse_page(response: httpx.Response) -> ArtifactPage:
    data = response.json()
    items = [Artifact.from_dict(a) for a in data["items"]]
    return ArtifactPage(items, int(data["pagination"]["total"]))


def visibility_json(visibility: AnyVisibility | Mapping[str, Any]) -> dict[str, Any]:
    """A visibility rule (or its dict form) as the API's `{"kind": ...}` JSON."""
    if isinstance(visibility, Mapping):
        return dict(visibility)
    return visibility_to_dict(visibility)


def replayed(response: httpx.Response) -> bool:
    """Whether the answer was replayed from an earlier request with the same key."""
    return str(response.headers.get("idempotent-replayed", "")).lower() == "true"


def many(value: Any) -> list[Any]:
    """One value or many, as a list (a string or a class counts as one)."""
    if value is None:
        return []
    if isinstance(value, str | type):
        return [value]
    return list(value)


def segment(value: str) -> str:
    """An id, escaped to be one URL path segment."""
    return quote(value, safe="")


__all__ = [
    "API",
    "ArtifactRef",
    "BatchItem",
    "Call",
    "Outcome",
    "Pager",
    "Plan",
    "Step",
    "TypeRef",
    "VisibilityArg",
    "many",
    "replayed",
    "segment",
    "visibility_json",
]
