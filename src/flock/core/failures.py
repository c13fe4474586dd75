"""How an agent's failure is told to callers: its exception type and message, made safe.

Recorded errors reach every caller who may see the correlation (sync answers, correlation
status, runs), and they are stored. So the text is what the agent author wrote (`raise
ValueError("no stock for sku 42")` reads `ValueError: no stock for sku 42`), capped in
length and cleaned of what a store cannot hold; an exception raised inside a store, driver
or the web framework is named by its type only, since its message may carry SQL, hosts or
file paths.
"""

from __future__ import annotations

import re

MAX_MESSAGE_LENGTH = 2000
"""Characters of an exception's message kept in a recorded error."""

_INTERNAL_MODULES = (
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "sqlite3",
    "psycopg",
    "redis",
    "starlette",
    "fastapi",
    "uvicorn",
    "h11",
    "flock.core.store",
    "flock.api",
)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_internal(exc: BaseException) -> bool:
    """Whether the exception comes from a store, a driver or the web framework."""
    module = type(exc).__module__ or ""
    return any(module == m or module.startswith(m + ".") for m in _INTERNAL_MODULES)


def describe_failure(exc: BaseException) -> str:
    """`Type: message` for an agent's own exception; `Type` alone for an internal one."""
    name = type(exc).__name__
    if is_internal(exc):
        return f"{name} (an internal error; its details are in the server log)"
    text = _UNSTORABLE.sub("\ufffd", str(exc))
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[:MAX_MESSAGE_LENGTH] + "..."
    return f"{name}: {text}" if text else name


__all__ = ["MAX_MESSAGE_LENGTH", "describe_failure", "is_internal"]
