"""Black-box: `flock serve` of the triage example against the fake OpenAI server; the
example offline; and the core package without the `flock[llm]` extra."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx

from support.fake_openai import FakeOpenAI, completion
from support.serve import ServeProcess, ServerFactory, server_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "llm_triage.py"
API_KEY = "sk-serve-test-key"


def triage_reply(body: dict[str, Any]) -> Any:
    """Answer with a Triage of the ticket the prompt names."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    ticket = next(json.loads(line) for line in user.splitlines() if line.startswith("{"))
    args = {
        "ticket_id": ticket["id"],
        "priority": "urgent",
        "team": "technical",
        "summary": f"{ticket['payload']['subject']} for {ticket['payload']['customer']}",
    }
    return completion(tool_calls=[("final_result", args)], prompt_tokens=90, completion_tokens=25)


async def test_flock_serve_runs_the_llm_agent_against_an_openai_compatible_server(
    fake_openai: FakeOpenAI, serve: ServerFactory
) -> None:
    fake_openai.script(triage_reply)
    server = serve(
        EXAMPLE,
        store="memory://",
        idempotency="memory://",
        FLOCK_LLM_MODEL="openai:fake-model",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY=API_KEY,
    )
    await server.wait_healthy()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        response = await client.post(
            "/api/v1/artifacts/sync",
            json={
                "type": "Ticket",
                "payload": {"customer": "acme", "subject": "Checkout down", "body": "502s"},
                "timeout": 30,
            },
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        metrics = (await client.get("/metrics")).text
        runs = (
            await client.get("/api/v1/runs", params={"correlation_id": answer["correlation_id"]})
        ).json()["items"]
        (triage_run,) = [run for run in runs if run["agent"] == "triage"]
        one_run = (await client.get(f"/api/v1/runs/{triage_run['id']}")).json()

    assert answer["completed"] is True and answer["errors"] == []
    ticket, triage, assignment = answer["artifacts"]
    assert triage["type"] == "Triage" and triage["payload"]["ticket_id"] == ticket["id"]
    assert triage["payload"]["summary"] == "Checkout down for acme"
    assert assignment["payload"] == {
        "ticket_id": ticket["id"],
        "queue": "technical-desk",
        "respond_within_hours": 1,
    }
    assert fake_openai.headers[0]["authorization"] == f"Bearer {API_KEY}"
    assert 'flock_llm_tokens_total{agent="triage",kind="input"} 90.0' in metrics
    assert 'flock_llm_tokens_total{agent="triage",kind="output"} 25.0' in metrics
    assert 'flock_llm_requests_total{agent="triage",outcome="ok"} 1.0' in metrics
    # the run record holds what the model calls spent
    usage = {"requests": 1, "input_tokens": 90, "output_tokens": 25}
    assert triage_run["usage"] == one_run["usage"] == usage
    assert one_run["state"] == "succeeded" and one_run["output_ids"] == [triage["id"]]


def test_the_example_runs_offline_with_the_test_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=server_env(FLOCK_LLM_MODEL="test"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("-> Assignment:") == 2
    assert "failed" not in done.stdout


_WITHOUT_EXTRA = """
import sys
for name in ("pydantic_ai", "openai"):
    sys.modules[name] = None  # importing them now fails, as without the extra
"""


def test_the_core_never_imports_pydantic_ai_until_an_llm_engine_is_made(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        import flock, flock.engines, flock.cli, flock.demo
        from flock.api.service import BlackboardHTTPService
        BlackboardHTTPService(flock.demo.build())
        assert "pydantic_ai" not in sys.modules and "openai" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)


def test_without_the_extra_an_llm_engine_names_the_install_command(tmp_path: Path) -> None:
    code = _WITHOUT_EXTRA + textwrap.dedent(
        """
        from flock.engines import LLMEngine
        try:
            LLMEngine("test")
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'flock[llm]'" in done.stdout


async def test_without_the_extra_flock_serve_still_serves(tmp_path: Path) -> None:
    code = _WITHOUT_EXTRA + textwrap.dedent(
        """
        from flock.cli import main
        sys.argv = ["flock", "serve", "--demo", "--store", "memory://",
                    "--idempotency", "memory://", *sys.argv[1:]]
        main()
        """
    )
    async with (
        ServeProcess(cwd=tmp_path, program=("-c", code)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        response = await client.post(
            "/api/v1/artifacts/sync",
            json={"type": "Document", "payload": {"title": "Tea", "text": "Tea is good."}},
        )
    assert response.status_code == 200 and response.json()["completed"] is True
