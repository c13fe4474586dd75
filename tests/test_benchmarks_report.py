"""`python -m benchmarks.report`: a results file as a table, or one line saying why not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.serve import server_env

ROOT = Path(__file__).resolve().parents[1]


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(),
    )


def test_a_missing_results_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"

    result = _report(str(missing))

    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot read results file {missing}: No such file")
    assert "uv run python -m benchmarks" in line


def test_a_malformed_results_file_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    result = _report(str(broken))

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_results_file_is_printed_as_a_table(tmp_path: Path) -> None:
    results = tmp_path / "run.json"
    results.write_text(json.dumps({"rows": []}))

    result = _report(str(results))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("| ")
