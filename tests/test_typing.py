"""Flock ships `py.typed`: a user's own code type-checks against Flock's annotations."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_SCRIPT = textwrap.dedent(
    """
    from pydantic import BaseModel

    from flock import Flock, flock_type
    from flock.client import FlockClient


    @flock_type
    class Idea(BaseModel):
        topic: str


    flock = Flock()
    flock.agent("writer").consumes(Idea)
    client = FlockClient("http://127.0.0.1:8344")
    reveal_type(client.publish)
    wrong: int = client  # an error only if FlockClient is a real type, not Any
    """
)


def test_user_code_sees_flocks_types(tmp_path: Path) -> None:
    script = tmp_path / "user_code.py"
    script.write_text(USER_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert "import-untyped" not in output and "missing library stubs" not in output, output
    assert 'Revealed type is "def (' in output, output
    assert 'Incompatible types in assignment (expression has type "FlockClient"' in output, output
    assert result.stdout.count("error:") == 1, output
