"""The REST API's one validation layer: the types every request field and parameter uses.

Each type runs the checks of `flock.core.validation` (the same ones `Flock.publish` runs),
so whatever no store or strict JSON client can hold is refused with `422
VALIDATION_ERROR` and a detail per field before a route does anything with it. The URL
itself (path and query string) is checked once, in the middleware, by `url_problem`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from flock.core import validation as limits
from flock.core.validation import Problem
from flock.core.visibility import AnyVisibility, Visibility


def _raise(problems: list[Problem]) -> None:
    """One pydantic error carrying every problem; `validation_details` lists each."""
    first = problems[0]
    raise PydanticCustomError(
        first.code,
        "{message}",
        {"message": first.message, "problems": [p.to_dict() for p in problems]},
    )


# Documented in the schema; enforced (with clearer messages) by `limits.name_problem`.
NO_CONTROL_CHARACTERS = {"pattern": "^[^\\x00-\\x1f\\x7f]+$"}


def _name_check(max_length: int) -> AfterValidator:
    def check(value: str) -> str:
        found = limits.name_problem(value, "", max_length=max_length)
        if found is not None:
            _raise([found])
        return value

    return AfterValidator(check)


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    problems = limits.json_problems(value, "")
    if problems:
        _raise(problems)
    return value


def _check_visibility(value: AnyVisibility) -> AnyVisibility:
    problems = limits.visibility_problems(value, "")
    if problems:
        _raise(problems)
    return value


Name = Annotated[
    str,
    Field(min_length=1, max_length=limits.MAX_NAME_LENGTH, json_schema_extra=NO_CONTROL_CHARACTERS),
    _name_check(limits.MAX_NAME_LENGTH),
]
"""A type, agent or producer name: 1-255 characters, no control characters."""
Identifier = Annotated[
    str,
    Field(min_length=1, max_length=limits.MAX_ID_LENGTH, json_schema_extra=NO_CONTROL_CHARACTERS),
    _name_check(limits.MAX_ID_LENGTH),
]
"""An artifact or correlation id: 1-128 characters, no control characters."""
Tag = Annotated[
    str,
    Field(min_length=1, max_length=limits.MAX_TAG_LENGTH, json_schema_extra=NO_CONTROL_CHARACTERS),
    _name_check(limits.MAX_TAG_LENGTH),
]
PartitionKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=limits.MAX_PARTITION_KEY_LENGTH,
        json_schema_extra=NO_CONTROL_CHARACTERS,
    ),
    _name_check(limits.MAX_PARTITION_KEY_LENGTH),
]
JSONObject = Annotated[dict[str, Any], AfterValidator(_check_json_object)]
"""A payload: strict JSON (no NaN/Infinity, NUL or lone surrogate), 64-bit integers,
nested at most 64 levels."""
StrictVisibility = Annotated[Visibility, AfterValidator(_check_visibility)]

_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def _iso_only(value: Any) -> Any:
    # Pydantic takes numbers as Unix times (`to=0.5`); the API documents ISO 8601 only.
    if isinstance(value, str) and _TIMESTAMP.match(value):
        return value
    if isinstance(value, datetime):
        return value
    raise PydanticCustomError("datetime_format", "an ISO 8601 date-time, like 2024-05-17T08:30:00Z")


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_utc)]
"""An ISO 8601 / RFC 3339 date-time, UTC when it names no offset; never a number."""


def url_problem(path: str, raw_path: bytes | None, raw_query: bytes) -> Problem | None:
    """Why the request URL cannot be served (NUL or invalid UTF-8 in path or query), or None.

    Checked before routing, for every route: a store must never see such a parameter.
    Servers decode a path's bad UTF-8 to U+FFFD, so the raw bytes are checked when given.
    """
    found = limits.text_problem(path, "path")
    if found is not None:
        return found
    if raw_path is not None:
        found = _encoded_problem(raw_path, "path")
        if found is not None:
            return found
    return _encoded_problem(raw_query.replace(b"+", b" "), "query") if raw_query else None


def _encoded_problem(raw: bytes, field: str) -> Problem | None:
    decoded = unquote_to_bytes(raw)
    if b"\x00" in decoded:
        return Problem(field, "NUL characters are not allowed", "nul_character")
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return Problem(field, f"the {field} is not valid UTF-8", "invalid_utf8")
    return None


__all__ = [
    "Identifier",
    "JSONObject",
    "Name",
    "PartitionKey",
    "StrictVisibility",
    "Tag",
    "Timestamp",
    "url_problem",
]
