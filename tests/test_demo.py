"""The demo ships inside the package: `flock serve --demo` works from an installed wheel."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import zipfile
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path

import httpx
import pytest

import flock
import flock.demo
from flock import type_registry
from flock.cli import build_service, load_flock
from support.polling import poll_until
from support.serve import free_port, server_env

ROOT = Path(__file__).resolve().parents[1]
UV = os.environ.get("UV") or shutil.which("uv")
DOCUMENT = {
    "type": "Document",
    "payload": {
        "title": "Tea",
        "text": "Tea is a drink. Green tea is popular. Tea grows on bushes.",
    },
}


def test_demo_flag_serves_the_packaged_module() -> None:
    service = build_service(
        None, demo=True, store="memory://", idempotency="memory://", api_keys=None
    )
    assert [agent.name for agent in service.flock.agents] == ["summarizer", "keywords", "reporter"]
    assert Path(flock.demo.__file__).parent == Path(flock.__file__).parent
    for name in ("Document", "Summary", "Keywords", "Report"):
        assert type_registry.resolve(name).__module__ == "flock.demo", name


def test_the_example_file_serves_the_same_cascade() -> None:
    example = load_flock(str(ROOT / "examples" / "demo.py"))
    assert [agent.name for agent in example.agents] == ["summarizer", "keywords", "reporter"]
    assert type_registry.resolve("Document") is flock.demo.Document


async def _run(*command: str | Path, cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        *map(str, command), cwd=cwd, stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, f"{command}:\n{stdout.decode()}\n{stderr.decode()}"
    return stdout.decode()


@pytest.mark.skipif(UV is None, reason="uv is not installed")
@pytest.mark.timeout(300)
async def test_demo_serves_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh venv, serve --demo from outside the checkout."""
    assert UV is not None
    dist, venv, workdir = tmp_path / "dist", tmp_path / "venv", tmp_path / "run"
    workdir.mkdir()
    await _run(UV, "build", "--wheel", "--out-dir", dist, ROOT, cwd=tmp_path)
    (wheel,) = dist.glob("flock-*.whl")
    assert "flock/demo.py" in zipfile.ZipFile(wheel).namelist()
    await _run(UV, "venv", "--quiet", "--python", sys.executable, venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    await _run(UV, "pip", "install", "--quiet", "--python", python, wheel, cwd=tmp_path)
    where = await _run(python, "-c", "import flock.demo; print(flock.demo.__file__)", cwd=workdir)
    assert Path(where.strip()).is_relative_to(venv), where

    port = free_port()
    env = server_env()
    env.pop("PYTHONPATH", None)
    log = workdir / "serve.log"
    with log.open("wb") as out:
        server = await asyncio.create_subprocess_exec(
            *map(str, [venv / "bin" / "flock", "serve", "--demo", "--port", port]),
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            async def healthy() -> bool:
                assert server.returncode is None, log.read_text()
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await poll_until(healthy, seconds=60, what="the installed `flock serve --demo`")
            response = await client.post("/api/v1/artifacts/sync", json=DOCUMENT)
    finally:
        if server.returncode is None:
            server.terminate()
        status = await asyncio.wait_for(server.wait(), timeout=30)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["completed"] is True
    assert {a["type"] for a in result["artifacts"]} == {"Document", "Summary", "Keywords", "Report"}
    assert status == 0, log.read_text()
    assert (
        workdir / ".flock" / "demo" / "blackboard.db"
    ).is_file()  # the default stores, under cwd
