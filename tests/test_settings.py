"""Every FLOCK_* setting is validated in one place (`flock.settings`): bad values stop
`flock serve` and `flock worker` before they serve, with one line naming the variable, and
docs/operations.md lists exactly the settings the model has."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flock.api.settings import ServiceSettings
from flock.core.worker import WorkerSettings
from flock.settings import (
    TABLE_END,
    TABLE_START,
    Settings,
    SettingsError,
    load_settings,
    settings_table,
)
from support.serve import free_port, server_env

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_SECONDS = 60

BAD_VALUES = [
    ("FLOCK_IDEMPOTENCY_LEASE", "nan"),
    ("FLOCK_IDEMPOTENCY_TTL", "inf"),
    ("FLOCK_RUN_LEASE", "-1"),
    ("FLOCK_MAX_BODY_BYTES", "1.9"),
    ("FLOCK_WORKER_CONCURRENCY", "1.9"),
    ("FLOCK_STORE_TIMEOUT", "0"),
    ("FLOCK_SHUTDOWN_GRACE", "-inf"),
    ("FLOCK_PORT", "eighty"),
    ("FLOCK_WORKER", "perhaps"),
    ("FLOCK_LOG_LEVEL", "loud"),
    ("FLOCK_MAX_INFLIGHT_SYNC", "0"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert f"{name}={value}" in message and "\n" not in message
    # The library's own defaults read the same model, so they refuse it too.
    with pytest.raises(SettingsError, match=name):
        ServiceSettings.from_env()
    with pytest.raises(SettingsError, match=name):
        WorkerSettings.from_env()


def test_good_values_are_read_and_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOCK_IDEMPOTENCY_LEASE", "2.5")
    monkeypatch.setenv("FLOCK_RUN_LEASE", "7")
    monkeypatch.setenv("FLOCK_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("FLOCK_WORKER", "no")
    monkeypatch.setenv("FLOCK_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("FLOCK_STORE", "")  # empty: unset
    monkeypatch.setenv("FLOCK_TEST_SOMETHING", "not ours")
    settings = load_settings(shutdown_grace=4.0, port=None)
    assert settings.idempotency_lease == 2.5 and ServiceSettings.from_env().idempotency_lease == 2.5
    worker = WorkerSettings.from_env()
    assert (worker.lease_seconds, worker.concurrency) == (7.0, 3)
    assert settings.worker is False and settings.log_level == "warning"
    assert settings.store is None and settings.port == 8344 and settings.shutdown_grace == 4.0
    assert settings.store_timeout == 5.0


def test_a_bad_option_is_named_as_the_option() -> None:
    with pytest.raises(SettingsError, match=r"--shutdown-grace=nan"):
        load_settings(shutdown_grace=float("nan"))


def test_the_operations_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = doc.partition(TABLE_START)[2].partition(TABLE_END)[0]
    assert table.strip() == settings_table().strip(), (
        "docs/operations.md is stale: run `uv run python -m flock.settings`"
    )
    for name in Settings.model_fields:
        assert f"`FLOCK_{name.upper()}`" in table


def flock_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flock", *args],
        cwd=cwd,
        env=server_env(**env),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("name", "value"), BAD_VALUES[:6])
def test_flock_serve_exits_before_serving(tmp_path: Path, name: str, value: str) -> None:
    port = free_port()
    result = flock_cli("serve", "--demo", "--port", str(port), cwd=tmp_path, **{name: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and value in lines[0], result.stderr
    assert not listening(port)
    assert not (tmp_path / ".flock").exists()  # no store was opened


@pytest.mark.parametrize(
    ("name", "value"), [("FLOCK_RUN_LEASE", "inf"), ("FLOCK_WORKER_POLL", "x")]
)
def test_flock_worker_exits_before_working(tmp_path: Path, name: str, value: str) -> None:
    result = flock_cli("worker", "--demo", cwd=tmp_path, **{name: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{name}={value}" in lines[0], result.stderr
    assert not (tmp_path / ".flock").exists()


def test_flock_serve_option_is_validated_too(tmp_path: Path) -> None:
    result = flock_cli("serve", "--demo", "--shutdown-grace", "nan", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: bad setting --shutdown-grace=nan: input should be a finite number"
    ]
