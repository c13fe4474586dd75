"""The `flock` command line: fast help, one-line errors, busy ports, what it serves."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from flock.cli import plan_service
from support.serve import ServeProcess, free_port, server_env

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MEMORY_STORES = ("--store", "memory://", "--idempotency", "memory://")
HANG_GUARD_SECONDS = 60  # a process still running then is a hang, not a slow machine

APP = textwrap.dedent(
    """
    from pydantic import BaseModel

    from flock import Flock, flock_type


    @flock_type(name="CliNote{n}")
    class Note(BaseModel):
        text: str


    flock = Flock()
    flock.agent("noter{n}").consumes(Note).with_engines(lambda note: None)
    """
)


def flock_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flock", *args],
        cwd=cwd,
        env=server_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )


def test_help_imports_neither_the_server_nor_the_stores(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flock", "--help"],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    imported = set(re.findall(r"\|\s+([\w.]+)$", result.stderr, flags=re.M))
    heavy = {"fastapi", "sqlalchemy", "redis", "uvicorn", "pydantic", "rich", "flock.core"}
    assert not heavy & imported, sorted(heavy & imported)


def test_version_and_module_alias(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = flock_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"flock {version('flock')}"


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_port_out_of_range_is_refused(tmp_path: Path, port: str) -> None:
    result = flock_cli("serve", "--demo", "--port", port, cwd=tmp_path)
    assert result.returncode == 2
    assert "--port" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".flock").exists()


BROKEN_APPS = {
    "syntax.py": ("x = 1\ndef f(:\n    pass\n", "syntax.py:2: SyntaxError"),
    "missing_import.py": (
        "import no_such_module_here\n",
        "missing_import.py:1: ModuleNotFoundError",
    ),
    "raises.py": (
        "def build():\n    raise RuntimeError('no config')\n\nflock = build()\n",
        "raises.py:2: RuntimeError: no config",
    ),
    "not_a_flock.py": ("flock = 42\n", "expected a Flock"),
    "publishes_at_import.py": (
        "import asyncio\nfrom flock import Flock\nfrom flock.demo import Document\n"
        "flock = Flock()\n"
        "asyncio.run(flock.publish(Document(title='t', text='x')))\n",
        'if __name__ == "__main__":',
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_APPS))
def test_an_app_that_does_not_load_is_one_line(tmp_path: Path, name: str) -> None:
    source, expected = BROKEN_APPS[name]
    (tmp_path / name).write_text(source)

    result = flock_cli("serve", name, "--port", str(free_port()), cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / ".flock").exists()


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    source, _ = BROKEN_APPS["raises.py"]
    (tmp_path / "raises.py").write_text(source)

    result = flock_cli("serve", "raises.py", "--debug", "--port", str(free_port()), cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert 'raise RuntimeError("no config")' in result.stderr.replace("'", '"')


def test_a_busy_port_exits_at_once_and_opens_nothing(tmp_path: Path) -> None:
    """Default (SQLite) stores, as in the hang of issue 16: a clear exit, no files."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        result = flock_cli("serve", "--demo", "--port", str(port), cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert not (tmp_path / ".flock").exists()


def test_the_readme_app_serves_as_written(tmp_path: Path) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    (tmp_path / "app.py").write_text(example)

    with ServeProcess("app.py", cwd=tmp_path) as server:
        published = httpx.post(
            f"{server.url}/api/v1/artifacts/sync",
            json={"type": "Idea", "payload": {"topic": "tea"}},
            timeout=30,
        )
    assert published.status_code == 200, published.text
    body = published.json()
    assert [a["payload"] for a in body["artifacts"]] == [{"topic": "tea"}, {"text": "about tea"}]
    assert (tmp_path / ".flock" / "app" / "blackboard.db").is_file()
    assert "blackboard store: SQLite file" in server.output()


def test_each_app_gets_its_own_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for n in (1, 2):
        (tmp_path / f"app{n}.py").write_text(APP.format(n=n))
    plans = [
        plan_service(f"app{n}.py", demo=False, store=None, idempotency=None, api_keys=None)
        for n in (1, 2)
    ]
    demo = plan_service(None, demo=True, store=None, idempotency=None, api_keys=None)

    assert [p.store_url for p in plans] == [
        "sqlite:///.flock/app1/blackboard.db",
        "sqlite:///.flock/app2/blackboard.db",
    ]
    assert [p.idempotency_url for p in plans] == [
        "sqlite:///.flock/app1/idempotency.db",
        "sqlite:///.flock/app2/idempotency.db",
    ]
    assert demo.store_url == "sqlite:///.flock/demo/blackboard.db"
    assert any(
        str(tmp_path / ".flock" / "app1" / "blackboard.db") in line for line in plans[0].describe()
    )


async def test_serves_a_service_with_routes_of_its_own(tmp_path: Path) -> None:
    """docs/idempotency.md's `@idempotent` example, served by `flock serve` as it is."""
    source = (ROOT / "examples" / "idempotent_route.py").read_text()
    (tmp_path / "shop.py").write_text(source)
    order = {"item": "tea", "quantity": 2}
    for ref in ("shop.py", "shop.py:app", "shop:build"):
        key = {"Idempotency-Key": f"order-{ref}"}
        async with (
            ServeProcess(ref, "--store", "memory://", cwd=tmp_path) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            first = await client.post("/orders", json=order, headers=key)
            again = await client.post("/orders", json=order, headers=key)
        assert first.status_code == 201, (ref, first.text)
        assert again.headers.get("idempotent-replayed") == "true", ref
        assert again.content == first.content


def test_a_service_refuses_store_flags_it_cannot_honour(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text((ROOT / "examples" / "idempotent_route.py").read_text())
    result = flock_cli(
        "serve", "shop.py", "--idempotency", "memory://", "--port", str(free_port()), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "builds its own BlackboardHTTPService" in result.stderr


async def test_an_unreachable_store_is_reported_at_startup_and_by_ready(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    async with (
        ServeProcess(
            "--demo", "--store", dead, "--idempotency", "memory://", cwd=tmp_path
        ) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 503
    log = server.output()
    assert (
        f"blackboard store: PostgreSQL at 127.0.0.1:{dead.rsplit(':', 1)[1].split('/')[0]}/test"
        in log
    )
    assert "blackboard store did not answer" in log
    assert "idempotency store answered" in log
