"""LLMEngine logic on pydantic-ai's offline models (TestModel, FunctionModel)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import ModelResponse, TextPart, ToolCallPart
from pydantic_ai import RunContext as ToolContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from engines.models import TICKET, TRIAGE, Spam, Ticket, Triage
from flock import Flock
from flock.core.agent import AgentConfigError, RunContext
from flock.core.artifacts import Artifact
from flock.core.runs import NonRetryableError
from flock.core.store import FilterConfig
from flock.engines import LLMEngine, LLMOutputError, LLMRequestError

DESCRIPTION = "Sorts support tickets by urgency."
INSTRUCTIONS = "Fires are always urgent."


def triage_flock(engine: LLMEngine, *publishes: type[BaseModel]) -> Flock:
    flock = Flock()
    flock.agent("triage").description(DESCRIPTION).consumes(Ticket).publishes(
        *(publishes or (Triage,))
    ).with_engines(engine)
    return flock


def context(flock: Flock, ticket: Ticket = TICKET) -> RunContext:
    artifact = Artifact(type="LLMTicket", payload=ticket.model_dump(mode="json"))
    return RunContext("triage", artifact.correlation_id, (artifact,), flock)


async def outputs_of(flock: Flock, ticket: Ticket = TICKET) -> tuple[list[Artifact], list[str]]:
    """Publish a ticket, wait for its cascade: the agent's outputs and the errors recorded."""
    published = await flock.publish(ticket)
    await flock.run_until_idle(published.correlation_id, timeout=30)
    items, _ = await flock.store.query_artifacts(
        FilterConfig(correlation_id=published.correlation_id, produced_by=["triage"]),
        limit=50,
        offset=0,
    )
    status = await flock.correlation_status(published.correlation_id)
    assert status is not None
    return list(items), [error.message for error in status.errors]


def answer(*tool_calls: tuple[str, dict[str, Any]]) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(name, args) for name, args in tool_calls])


def output_tool(info: AgentInfo, suffix: str = "") -> str:
    names = [tool.name for tool in info.output_tools]
    return next(name for name in names if name.endswith(suffix))


async def test_test_model_fills_the_published_type_and_inherits_the_correlation() -> None:
    flock = triage_flock(LLMEngine("test"))
    outputs, errors = await outputs_of(flock)
    assert errors == []
    assert [a.type for a in outputs] == ["LLMTriage"]
    Triage.model_validate(outputs[0].payload)


async def test_flock_llm_model_is_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOCK_LLM_MODEL", "test")
    engine = LLMEngine()
    assert engine.model == "test"
    outputs, errors = await outputs_of(triage_flock(engine))
    assert errors == [] and len(outputs) == 1


def test_no_model_anywhere_is_a_clear_configuration_error() -> None:
    with pytest.raises(AgentConfigError, match="FLOCK_LLM_MODEL"):
        LLMEngine()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_retries": -1}, "output_retries"),
        ({"output_retries": 1.5}, "output_retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"tools": ["not a function"]}, "tools"),
        ({"base_url": "http://127.0.0.1:1/v1"}, "base_url"),
    ],
)
def test_bad_arguments_fail_at_declaration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AgentConfigError, match=match):
        LLMEngine("test", **kwargs)


def test_an_openai_model_needs_a_key_or_an_endpoint() -> None:
    with pytest.raises(AgentConfigError, match="OPENAI_API_KEY"):
        LLMEngine("openai:gpt-4.1-mini")
    LLMEngine("openai:llama3", base_url="http://127.0.0.1:11434/v1")  # a local server


async def test_an_agent_that_publishes_nothing_is_told_so() -> None:
    flock = Flock()
    flock.agent("triage").consumes(Ticket).with_engines(LLMEngine("test"))
    with pytest.raises(AgentConfigError, match="publishes"):
        await LLMEngine("test").evaluate(context(flock), [TICKET])


async def test_the_prompt_holds_description_instructions_and_each_input_as_json() -> None:
    seen: list[tuple[list[ModelMessage], AgentInfo]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append((messages, info))
        return answer((output_tool(info), TRIAGE))

    flock = triage_flock(LLMEngine(FunctionModel(model), instructions=INSTRUCTIONS))
    ctx = context(flock)
    result = await flock.get_agent("triage").engines[0].evaluate(ctx, [TICKET])
    assert result == Triage(**TRIAGE)

    ((messages, info),) = seen
    assert info.instructions is not None
    assert DESCRIPTION in info.instructions and INSTRUCTIONS in info.instructions
    assert "'triage'" in info.instructions
    request = messages[0]
    assert isinstance(request, ModelRequest)
    prompt = next(p.content for p in request.parts if isinstance(p, UserPromptPart))
    assert isinstance(prompt, str)
    line = next(line for line in prompt.splitlines() if line.startswith("{"))
    assert json.loads(line) == {
        "type": "LLMTicket",
        "id": ctx.inputs[0].id,
        "payload": TICKET.model_dump(mode="json"),
    }
    assert "ünïcode" in prompt  # as written, not \u-escaped


async def test_several_published_types_are_offered_as_a_union() -> None:
    offered: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append(sorted(tool.name for tool in info.output_tools))
        return answer((output_tool(info, "Spam"), {"reason": "lottery win"}))

    flock = triage_flock(LLMEngine(FunctionModel(model)), Triage, Spam)
    outputs, errors = await outputs_of(flock)
    assert errors == []
    assert [(a.type, a.payload) for a in outputs] == [("LLMSpam", {"reason": "lottery win"})]
    assert len(offered[0]) == 2


async def test_an_invalid_answer_goes_back_to_the_model_with_the_validation_error() -> None:
    replies = iter(
        [
            {"priority": "whenever", "team": "facilities", "summary": "x"},
            TRIAGE,
        ]
    )
    feedback: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        feedback.extend(
            str(p.content) for p in last.parts if isinstance(p, ToolReturnPart) and p.content
        )
        return answer((output_tool(info), next(replies)))

    flock = triage_flock(LLMEngine(FunctionModel(model)))
    ctx = context(flock)
    result = await flock.get_agent("triage").engines[0].evaluate(ctx, [TICKET])
    assert result == Triage(**TRIAGE)
    assert any("priority" in text for text in feedback)
    assert ctx.usage.requests == 2
    assert ctx.usage.input_tokens > 0 and ctx.usage.output_tokens > 0


@pytest.mark.parametrize("retries", [0, 2])
async def test_output_still_invalid_after_retries_fails_the_run_for_good(retries: int) -> None:
    calls = 0

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        return answer((output_tool(info), {"priority": "whenever", "team": "x"}))

    engine = LLMEngine(FunctionModel(model), output_retries=retries)
    flock = triage_flock(engine)
    ctx = context(flock)
    with pytest.raises(LLMOutputError) as caught:
        await engine.evaluate(ctx, [TICKET])
    assert isinstance(caught.value, NonRetryableError)
    message = str(caught.value)
    assert f"after {retries} retries" in message and "priority" in message
    assert "errors.pydantic.dev" not in message
    assert calls == retries + 1
    assert ctx.usage.requests == retries + 1  # what the failed run spent is still counted

    _, errors = await outputs_of(flock)
    assert len(errors) == 1 and "LLMOutputError" in errors[0] and "priority" in errors[0]


async def test_plain_text_instead_of_the_output_tool_is_corrected_too() -> None:
    replies = iter([ModelResponse(parts=[TextPart("It is urgent!")])])

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return next(replies, answer((output_tool(info), TRIAGE)))

    outputs, errors = await outputs_of(triage_flock(LLMEngine(FunctionModel(model))))
    assert errors == [] and [a.payload for a in outputs] == [TRIAGE]


async def test_tools_are_offered_and_sync_ones_run_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    calls: list[tuple[str, Any, bool]] = []

    def customer_tier(customer: str) -> str:
        """The customer's support tier."""
        calls.append(("customer_tier", customer, threading.get_ident() != loop_thread))
        return "gold"

    async def open_incident(artifact_id: str, team: str) -> str:
        """Open an incident for a ticket (keyed on its artifact id)."""
        calls.append(("open_incident", artifact_id, threading.get_ident() != loop_thread))
        return f"INC-{artifact_id[:4]}"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        assert {t.name for t in info.function_tools} == {"customer_tier", "open_incident"}
        returns = [
            p
            for m in messages
            if isinstance(m, ModelRequest)
            for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]
        if not returns:
            prompt = messages[0].parts[-1].content  # type: ignore[union-attr]
            artifact_id = json.loads(prompt.splitlines()[1])["id"]
            return answer(
                ("customer_tier", {"customer": "acme"}),
                ("open_incident", {"artifact_id": artifact_id, "team": "facilities"}),
            )
        assert sorted(str(p.content) for p in returns)[1] == "gold"
        return answer((output_tool(info), TRIAGE))

    engine = LLMEngine(FunctionModel(model), tools=[customer_tier, open_incident])
    flock = triage_flock(engine)
    ctx = context(flock)
    assert await engine.evaluate(ctx, [TICKET]) == Triage(**TRIAGE)
    assert sorted(calls) == [
        ("customer_tier", "acme", True),  # in a worker thread
        ("open_incident", ctx.inputs[0].id, False),  # on the loop
    ]


async def test_test_model_calls_every_tool() -> None:
    called: list[str] = []

    def lookup(customer: str) -> str:
        """Look a customer up."""
        called.append(customer)
        return "found"

    outputs, errors = await outputs_of(triage_flock(LLMEngine("test", tools=[lookup])))
    assert errors == [] and len(outputs) == 1 and len(called) == 1


async def test_a_model_request_past_its_timeout_fails_the_attempt_retryably() -> None:
    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    engine = LLMEngine(FunctionModel(slow), timeout=0.2)
    with pytest.raises(LLMRequestError, match=r"0\.2 s") as caught:
        await engine.evaluate(context(triage_flock(engine)), [TICKET])
    assert not isinstance(caught.value, NonRetryableError)


async def test_usage_and_metrics_count_per_agent() -> None:
    from prometheus_client import generate_latest

    from flock.api.metrics import ServiceMetrics

    engine = LLMEngine(TestModel())
    flock = triage_flock(engine)
    ctx = context(flock)
    await engine.evaluate(ctx, [TICKET])
    await outputs_of(flock)
    stats = flock.stats
    assert stats.llm_requests == {("triage", "ok"): 2}
    assert stats.llm_tokens[("triage", "input")] == 2 * ctx.usage.input_tokens
    assert stats.llm_tokens[("triage", "output")] == 2 * ctx.usage.output_tokens
    text = generate_latest(ServiceMetrics(stats).registry).decode()
    assert 'flock_llm_requests_total{agent="triage",outcome="ok"} 2.0' in text
    tokens = 2.0 * ctx.usage.input_tokens
    assert f'flock_llm_tokens_total{{agent="triage",kind="input"}} {tokens}' in text


def test_engine_errors_are_importable_from_flock_engines() -> None:
    assert repr(LLMEngine("test")) == "LLMEngine('test')"
    assert LLMEngine(TestModel()).model_name == "test:test"


async def test_a_tool_taking_a_run_context_gets_the_flock_run_context_as_deps() -> None:
    seen: list[tuple[str, int, str]] = []

    def open_incident(tool_ctx: ToolContext[RunContext], team: str) -> str:
        """Open an incident, once per run."""
        run = tool_ctx.deps
        seen.append((run.run_id, run.attempt, run.inputs[0].id))
        return "INC-1"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return answer(("open_incident", {"team": "facilities"}))
        return answer((output_tool(info), TRIAGE))

    engine = LLMEngine(FunctionModel(model), tools=[open_incident])
    ctx = context(triage_flock(engine))
    ctx.run_id, ctx.attempt = "run-1", 2
    await engine.evaluate(ctx, [TICKET])
    assert seen == [("run-1", 2, ctx.inputs[0].id)]


async def test_a_tool_that_raises_fails_the_attempt_with_its_own_error() -> None:
    def broken(customer: str) -> str:
        """Always fails."""
        raise KeyError("no such customer")

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return answer(("broken", {"customer": "acme"}))

    engine = LLMEngine(FunctionModel(model), tools=[broken])
    ctx = context(triage_flock(engine))
    with pytest.raises(KeyError, match="no such customer") as caught:
        await engine.evaluate(ctx, [TICKET])
    assert caught.value.__cause__ is None
    assert ctx.usage.requests == 1
