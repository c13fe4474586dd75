"""What an artifact may hold: the limits every store and strict JSON client can take.

Checked before anything is stored, whether the artifact comes from the REST API, from
`Flock.publish` or from an agent's engine. A string with a lone surrogate cannot be
encoded as UTF-8 (every later read of it would fail), PostgreSQL refuses NUL in text,
`NaN`/`Infinity` are not JSON (RFC 8259), an index row over ~2.7 KB fails on PostgreSQL,
and integers past 64 bits overflow SQL columns and most clients. Each check is a pure
function; a failure raises `ArtifactValidationError` with one `Problem` per field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flock.core.artifacts import Artifact
    from flock.core.visibility import AnyVisibility

MAX_ID_LENGTH = 128
"""Artifact ids and correlation ids (the `X-Correlation-ID` header takes the same)."""
MAX_NAME_LENGTH = 255
"""Type names, producer (agent) names, tenant ids, labels and visibility agent names."""
MAX_TAG_LENGTH = 255
MAX_TAGS = 64
MAX_PARTITION_KEY_LENGTH = 255
MAX_VISIBILITY_MEMBERS = 64
"""Agents of a Private rule, labels of a Labelled one."""
MAX_JSON_DEPTH = 64
"""Nesting of objects and arrays in a payload."""
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1
MAX_LIMIT = 500
MAX_OFFSET = 2**31 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: `field` is dotted (`payload.items[2].name`)."""

    field: str
    message: str
    code: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "code": self.code}


class ArtifactValidationError(ValueError):
    """An input holds what no store or strict client can hold (answered 422 over HTTP)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        summary = "; ".join(f"{p.field}: {p.message}" for p in self.problems[:3])
        super().__init__(summary or "invalid input")


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def text_problem(value: str, field: str, *, max_length: int | None = None) -> Problem | None:
    """Why `value` cannot be stored as text (NUL, lone surrogate, too long), or None."""
    if max_length is not None and len(value) > max_length:
        return Problem(field, f"at most {max_length} characters", "too_long")
    if "\x00" in value:
        return Problem(field, "NUL characters are not allowed", "nul_character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return Problem(field, "lone surrogates are not valid Unicode", "lone_surrogate")
    return None


def name_problem(value: object, field: str, *, max_length: int = MAX_NAME_LENGTH) -> Problem | None:
    """An identifier (id, type name, tag, tenant): 1..max_length characters, no control ones."""
    if not isinstance(value, str):
        return Problem(field, "must be a string", "string_type")
    if not value:
        return Problem(field, "must not be empty", "empty")
    found = text_problem(value, field, max_length=max_length)
    if found is not None:
        return found
    if _CONTROL.search(value) is not None:
        return Problem(field, "control characters are not allowed", "control_character")
    return None


def json_problems(value: Any, field: str = "payload") -> list[Problem]:
    """Everything in a JSON value that strict JSON or a store cannot take.

    Walks iteratively (a deep value cannot exhaust the stack) and stops at the first
    problem of each kind of place, so a huge bad payload costs one pass.
    """
    problems: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack and len(problems) < 10:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            found = text_problem(item, where)
            if found is not None:
                problems.append(found)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                problems.append(Problem(where, "integers must fit in 64 bits", "int_range"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(Problem(where, "NaN and Infinity are not JSON", "finite_number"))
        elif isinstance(item, Mapping | list | tuple):
            if depth >= MAX_JSON_DEPTH:
                problems.append(
                    Problem(where, f"nested deeper than {MAX_JSON_DEPTH} levels", "too_deep")
                )
                continue
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if not isinstance(key, str):
                        problems.append(Problem(where, "object keys must be strings", "key_type"))
                        continue
                    child_field = f"{where}.{key}"
                    found = text_problem(key, child_field)
                    if found is not None:
                        problems.append(found)
                        continue
                    stack.append((child, child_field, depth + 1))
            else:
                for i, child in enumerate(item):
                    stack.append((child, f"{where}[{i}]", depth + 1))
        else:
            problems.append(Problem(where, f"{type(item).__name__} is not JSON", "json_type"))
    problems.sort(key=lambda p: p.field)
    return problems


def visibility_problems(visibility: AnyVisibility, field: str = "visibility") -> list[Problem]:
    from flock.core.visibility import LabelledVisibility, PrivateVisibility, TenantVisibility

    if isinstance(visibility, TenantVisibility):
        found = name_problem(visibility.tenant_id, f"{field}.tenant_id")
        return [found] if found is not None else []
    if isinstance(visibility, PrivateVisibility):
        return _members(visibility.agents, f"{field}.agents")
    if isinstance(visibility, LabelledVisibility):
        return _members(visibility.required_labels, f"{field}.required_labels")
    return []


def _members(members: Iterable[str], field: str) -> list[Problem]:
    if not members:
        return []
    members = sorted(members)
    if len(members) > MAX_VISIBILITY_MEMBERS:
        return [Problem(field, f"at most {MAX_VISIBILITY_MEMBERS} entries", "too_many")]
    found = (name_problem(m, f"{field}[{i}]") for i, m in enumerate(members))
    return [p for p in found if p is not None]


def tag_problems(tags: Iterable[str], field: str = "tags") -> list[Problem]:
    if not tags:
        return []
    tags = sorted(tags)
    if len(tags) > MAX_TAGS:
        return [Problem(field, f"at most {MAX_TAGS} tags", "too_many")]
    found = (
        name_problem(t, f"{field}[{i}]", max_length=MAX_TAG_LENGTH) for i, t in enumerate(tags)
    )
    return [p for p in found if p is not None]


def artifact_problems(artifact: Artifact) -> list[Problem]:
    """Every problem of an artifact about to be stored."""
    problems = [
        p
        for p in (
            name_problem(artifact.id, "id", max_length=MAX_ID_LENGTH),
            name_problem(artifact.correlation_id, "correlation_id", max_length=MAX_ID_LENGTH),
            name_problem(artifact.type, "type"),
            name_problem(artifact.produced_by, "produced_by"),
            None
            if artifact.partition_key is None
            else name_problem(
                artifact.partition_key, "partition_key", max_length=MAX_PARTITION_KEY_LENGTH
            ),
        )
        if p is not None
    ]
    problems += tag_problems(artifact.tags)
    problems += visibility_problems(artifact.visibility)
    problems += json_problems(artifact.payload)
    return problems


def validate_artifact(artifact: Artifact) -> Artifact:
    """Raise `ArtifactValidationError` unless every store and strict client can hold it."""
    problems = artifact_problems(artifact)
    if problems:
        raise ArtifactValidationError(problems)
    return artifact


def scrub_json(value: Any) -> Any:
    """A copy that strict JSON can encode: lone surrogates become U+FFFD, NaN/Infinity null.

    For reading data stored before these checks existed: an old bad artifact is answered
    with replacement characters rather than failing every read that meets it.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {scrub_json(k): scrub_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_json(v) for v in value]
    return value


__all__ = [
    "MAX_ID_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_OFFSET",
    "MAX_PARTITION_KEY_LENGTH",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_VISIBILITY_MEMBERS",
    "ArtifactValidationError",
    "Problem",
    "artifact_problems",
    "json_problems",
    "name_problem",
    "scrub_json",
    "tag_problems",
    "text_problem",
    "validate_artifact",
    "visibility_problems",
]
