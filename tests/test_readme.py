"""The README's examples run as written."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_example_runs_as_written(tmp_path: Path) -> None:
    (example,) = _blocks("python")
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 [{'topic': 'tea'}, {'text': 'about tea'}]"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_example_against_the_demo(tmp_path: Path) -> None:
    (bash,) = [b for b in _blocks("bash") if "curl" in b]
    command = re.sub(r"\\\n\s*", " ", bash).strip()
    # default stores: SQLite files under ./.flock/demo/
    with ServeProcess("--demo", cwd=tmp_path, env={"FLOCK_LOG_LEVEL": "warning"}) as server:
        command = command.replace("127.0.0.1:8344", f"127.0.0.1:{server.port}")
        first = subprocess.run([*shlex.split(command), "-i"], capture_output=True, text=True)
        again = subprocess.run([*shlex.split(command), "-i"], capture_output=True, text=True)
    head, _, body = first.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), first.stdout
    result = httpx.Response(200, content=body.encode()).json()
    assert result["completed"] is True
    assert result["artifacts"][0]["type"] == "Document"
    assert {a["type"] for a in result["artifacts"]} == {"Document", "Summary", "Keywords", "Report"}
    assert "idempotent-replayed: true" in again.stdout.lower()
    assert again.stdout.partition("\n\n")[2] == body
    assert (tmp_path / ".flock" / "demo" / "blackboard.db").exists()
