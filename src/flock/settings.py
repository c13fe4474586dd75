"""Every `FLOCK_*` environment variable, read and validated in one place.

`Settings` is the one model of them (pydantic-settings, prefix `FLOCK_`): `flock serve` and
`flock worker` build it once, before anything is opened, with their command-line options on
top, and a bad value (`nan`, `inf`, `-1`, `1.9` for a whole number, garbage) stops them with
one line naming the variable. The library reads the same model (`load_settings()`) where
it takes a default from the environment. `docs/operations.md` lists every setting: its
table is `settings_table()` (regenerate it with `python -m flock.settings`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FLOCK_"
MIB = 1024 * 1024

# Seconds: finite; "positive" ones must be > 0, the others may be 0.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """Flock's settings; field `name` is read from `FLOCK_NAME` (empty means unset)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",  # other FLOCK_* variables (FLOCK_TEST_*, ...) are not ours
        frozen=True,
        validate_default=True,
    )

    # -- flock serve / flock worker ---------------------------------------------------------
    host: str = Field("127.0.0.1", description="address `flock serve` listens on (`--host`)")
    port: Port = Field(8344, description="port `flock serve` listens on (`--port`)")
    store: str | None = Field(
        None,
        description="blackboard store URL (`--store`): `memory://`, `sqlite:///path.db` or "
        "`postgresql://...`; default `sqlite:///.flock/<app>/blackboard.db`",
    )
    idempotency: str | None = Field(
        None,
        description="idempotency store URL (`--idempotency`): `memory://`, `sqlite:///...`, "
        "`postgresql://...` or `redis://...`; default `sqlite:///.flock/<app>/idempotency.db`",
    )
    api_keys: str | None = Field(None, description="JSON file of API keys (`--api-keys`)")
    worker: bool = Field(
        True, description="execute agent runs in the `flock serve` process too (`--no-worker`)"
    )
    shutdown_grace: SecondsOrZero = Field(
        30.0,
        description="seconds after SIGTERM/SIGINT for requests and runs in flight "
        "(`--shutdown-grace`); then sync calls answer `completed=false` and the process exits",
    )
    log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug", "trace"],
        BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value),
    ] = Field("info", description="log level (`--log-level`)")
    log_format: Annotated[
        Literal["text", "json"],
        BeforeValidator(lambda value: value.strip().lower() if isinstance(value, str) else value),
    ] = Field(
        "text",
        description="`text`, or `json`: one JSON object per line (`--log-format`)",
    )
    debug: bool = Field(False, description="print tracebacks of errors (`--debug`)")
    metrics_port: Port | None = Field(
        None, description="`flock worker` serves /metrics on this port (`--metrics-port`)"
    )
    app: str | None = Field(
        None, description="APP of `flock serve --workers N` (set for its worker processes)"
    )
    demo: bool = Field(
        False, description="serve the demo (set by `flock serve --demo --workers N`)"
    )

    # -- stores -----------------------------------------------------------------------------
    migrate: bool = Field(
        False,
        description="upgrade an older PostgreSQL schema at start-up (`--migrate`; SQLite files "
        "are upgraded always)",
    )
    store_timeout: Seconds = Field(
        5.0,
        description="deadline of every store operation (connect, pool wait, statement, Redis "
        "command): past it the request answers 503 SERVICE_UNAVAILABLE with Retry-After",
    )

    # -- the HTTP service -------------------------------------------------------------------
    max_body_bytes: Count = Field(MIB, description="larger request bodies get 413, unread")
    idempotency_ttl: Seconds = Field(
        86_400.0, description="seconds an idempotent outcome is replayed"
    )
    idempotency_lease: Seconds = Field(
        30.0,
        description="seconds a claim on a key outlives a crashed holder (renewed every "
        "lease/3 while it runs)",
    )
    idempotency_wait: SecondsOrZero = Field(
        30.0,
        description="seconds a duplicate of a running async request waits for its outcome",
    )
    idempotency_purge_interval: Seconds = Field(
        60.0, description="seconds between purges of expired idempotency records"
    )
    max_sync_artifacts: Count = Field(
        1000, description="artifacts in one sync answer (past it: `truncated`)"
    )
    max_inflight_sync: Count = Field(
        1000, description="concurrent sync calls per caller (past it: 429)"
    )

    # -- the worker -------------------------------------------------------------------------
    worker_concurrency: Count = Field(
        64, description="runs one process executes at once (`flock worker --concurrency`)"
    )
    run_lease: Seconds = Field(
        30.0,
        description="seconds a run's claim holds without renewal; a dead worker's run is "
        "taken over this long after its last renewal",
    )
    run_timeout: Seconds = Field(
        600.0, description="seconds per attempt of a run, unless `agent.timeout()`"
    )
    worker_poll: Seconds = Field(
        1.0, description="seconds between an idle worker's looks for runs of other processes"
    )
    max_queued_runs: Count = Field(
        10_000, description="pending runs in the store past which publishing answers 503"
    )

    # -- engines ----------------------------------------------------------------------------
    llm_model: str | None = Field(
        None, description="default model of `LLMEngine` (a pydantic-ai model name)"
    )


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line naming the variable."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, `overrides` (command-line options; None: not
    given) on top. Raises `SettingsError` naming the first bad variable or option."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, given)) from None


def _describe(exc: ValidationError, given: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "?"
        source = f"--{field.replace('_', '-')}" if field in given else env_name(field)
        message = str(error["msg"])
        message = message[0].lower() + message[1:] if message else "invalid"
        problems.append(f"{source}={error.get('input')!s}: {message}")
    return "bad setting " + "; ".join(problems)


def settings_table() -> str:
    """The Markdown table of every setting, for `docs/operations.md`."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{_format_default(default)}`"
        rows.append(f"| `{env_name(name)}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


def _format_default(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


TABLE_START = "<!-- settings-table: generated by `python -m flock.settings`, do not edit -->"
TABLE_END = "<!-- end of settings-table -->"


def write_table(path: Path) -> bool:
    """Replace the generated table in the Markdown file at `path`; whether it changed."""
    text = path.read_text(encoding="utf-8")
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise SystemExit(f"{path}: no {TABLE_START!r} ... {TABLE_END!r} block")
    updated = f"{head}{TABLE_START}\n{settings_table()}{TABLE_END}{tail}"
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":  # python -m flock.settings [docs/operations.md]
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/operations.md")
    print(f"{target}: {'updated' if write_table(target) else 'up to date'}")


__all__ = ["Settings", "SettingsError", "env_name", "load_settings", "settings_table"]
