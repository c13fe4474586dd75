"""`import flock` is cheap: its public names load on first use, and every one resolves."""

from __future__ import annotations

import subprocess
import sys

import flock


def test_every_public_name_resolves() -> None:
    assert sorted(flock.__all__) == sorted(flock._EXPORTS)
    for name in flock.__all__:
        assert getattr(flock, name) is not None, name
    assert set(flock.__all__) <= set(dir(flock))


def test_importing_the_package_loads_no_core_module() -> None:
    code = "import sys, flock; print(sorted(m for m in sys.modules if m.startswith('flock.')))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
