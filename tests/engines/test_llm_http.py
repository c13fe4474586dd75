"""LLMEngine over real HTTP: the OpenAI SDK against a fake OpenAI-compatible server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engines.models import TICKET, TRIAGE, Spam, Ticket, Triage
from flock import Flock
from flock.core.agent import RunContext
from flock.core.artifacts import Artifact
from flock.core.runs import NonRetryableError, RetryPolicy
from flock.engines import LLMEngine, LLMOutputError, LLMRejectedError, LLMRequestError
from support.fake_openai import FakeOpenAI, completion, error, stall

API_KEY = "sk-test-0123456789-secret"
MODEL = "openai:fake-model"
DESCRIPTION = "Sorts support tickets by urgency."
INSTRUCTIONS = "Fires are always urgent."


def engine_for(fake: FakeOpenAI, **kwargs: Any) -> LLMEngine:
    return LLMEngine(MODEL, base_url=fake.base_url, api_key=API_KEY, **kwargs)


def triage_flock(engine: LLMEngine, *publishes: Any) -> Flock:
    flock = Flock()
    flock.agent("triage").description(DESCRIPTION).consumes(Ticket).publishes(
        *(publishes or (Triage,))
    ).with_engines(engine)
    return flock


def context(flock: Flock) -> RunContext:
    artifact = Artifact(type="LLMTicket", payload=TICKET.model_dump(mode="json"))
    return RunContext("triage", artifact.correlation_id, (artifact,), flock)


async def evaluate(engine: LLMEngine, *publishes: Any) -> tuple[RunContext, Any]:
    ctx = context(triage_flock(engine, *publishes))
    return ctx, await engine.evaluate(ctx, [TICKET])


def final(args: dict[str, Any] | str, **kwargs: Any) -> Any:
    return completion(tool_calls=[("final_result", args)], **kwargs)


async def test_structured_output_comes_back_through_the_output_tool(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(final(TRIAGE, prompt_tokens=120, completion_tokens=30))
    ctx, result = await evaluate(engine_for(fake_openai))
    assert result == Triage(**TRIAGE)

    (request,) = fake_openai.requests
    assert request["model"] == "fake-model"
    tools = {tool["function"]["name"]: tool["function"] for tool in request["tools"]}
    assert set(tools) == {"final_result"}
    assert set(tools["final_result"]["parameters"]["properties"]) == {"priority", "team", "summary"}
    assert fake_openai.headers[0]["authorization"] == f"Bearer {API_KEY}"
    assert ctx.usage.to_dict() == {"requests": 1, "input_tokens": 120, "output_tokens": 30}


async def test_the_prompt_has_description_instructions_and_inputs_as_json(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(final(TRIAGE))
    ctx, _ = await evaluate(engine_for(fake_openai, instructions=INSTRUCTIONS))
    messages = fake_openai.requests[0]["messages"]
    system = " ".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    assert DESCRIPTION in system and INSTRUCTIONS in system
    user = next(m["content"] for m in messages if m["role"] == "user")
    text = user if isinstance(user, str) else " ".join(part["text"] for part in user)
    documents = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert documents == [
        {"type": "LLMTicket", "id": ctx.inputs[0].id, "payload": TICKET.model_dump(mode="json")}
    ]


async def test_a_union_output_offers_one_tool_per_published_type(
    fake_openai: FakeOpenAI,
) -> None:
    def pick_spam(body: dict[str, Any]) -> Any:
        names = [tool["function"]["name"] for tool in body["tools"]]
        spam = next(name for name in names if name.endswith("Spam"))
        return completion(tool_calls=[(spam, {"reason": "lottery"})])

    fake_openai.script(pick_spam)
    _, result = await evaluate(engine_for(fake_openai), Triage, Spam)
    assert result == Spam(reason="lottery")
    assert len(fake_openai.requests[0]["tools"]) == 2


async def test_an_invalid_answer_then_a_valid_one(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(final({"priority": "whenever", "team": "x"}), final(TRIAGE))
    ctx, result = await evaluate(engine_for(fake_openai))
    assert result == Triage(**TRIAGE)
    assert len(fake_openai.requests) == 2
    correction = fake_openai.requests[1]["messages"][-1]
    assert correction["role"] == "tool" and "priority" in correction["content"]
    assert ctx.usage.to_dict() == {"requests": 2, "input_tokens": 22, "output_tokens": 14}


async def test_invalid_json_arguments_are_corrected_too(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(final("{not json"), final(TRIAGE))
    _, result = await evaluate(engine_for(fake_openai))
    assert result == Triage(**TRIAGE)


async def test_always_invalid_fails_for_good_with_the_validation_message(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(final({"priority": "whenever", "team": "x"}))
    engine = engine_for(fake_openai, output_retries=1)
    ctx = context(triage_flock(engine))
    with pytest.raises(LLMOutputError, match="priority") as caught:
        await engine.evaluate(ctx, [TICKET])
    assert isinstance(caught.value, NonRetryableError)
    assert len(fake_openai.requests) == 2
    assert ctx.usage.requests == 2 and ctx.usage.output_tokens == 14


async def test_a_500_then_success_is_retried_by_the_sdk_and_counted(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(error(500), final(TRIAGE))
    engine = engine_for(fake_openai)
    ctx = context(triage_flock(engine))
    assert await engine.evaluate(ctx, [TICKET]) == Triage(**TRIAGE)
    assert len(fake_openai.requests) == 2
    assert ctx.usage.to_dict() == {"requests": 2, "input_tokens": 11, "output_tokens": 7}
    assert ctx.flock.stats.llm_requests == {("triage", "server_error"): 1, ("triage", "ok"): 1}


async def test_always_500_raises_a_retryable_error_naming_status_and_model(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(error(500, f"upstream exploded (key {API_KEY})"))
    engine = engine_for(fake_openai)
    ctx = context(triage_flock(engine))
    with pytest.raises(LLMRequestError) as caught:
        await engine.evaluate(ctx, [TICKET])
    exc = caught.value
    assert not isinstance(exc, NonRetryableError)
    assert exc.status_code == 500
    message = str(exc)
    assert "500" in message and "openai:fake-model" in message and "upstream exploded" in message
    assert API_KEY not in message
    assert len(fake_openai.requests) == 3  # the SDK's own two retries
    assert ctx.usage.requests == 3
    assert ctx.flock.stats.llm_requests == {("triage", "server_error"): 3}


async def test_a_429_is_retryable_and_says_how_long_to_wait(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(error(429, "slow down", code="rate_limit_exceeded"))
    engine = engine_for(fake_openai, model_settings={"max_retries": 0})
    ctx = context(triage_flock(engine))
    with pytest.raises(LLMRequestError, match="429") as caught:
        await engine.evaluate(ctx, [TICKET])
    assert not isinstance(caught.value, NonRetryableError)
    assert caught.value.status_code == 429
    assert caught.value.retry_after == pytest.approx(0.001)
    assert len(fake_openai.requests) == 1  # max_retries=0: Flock's retry policy owns retrying
    assert ctx.flock.stats.llm_requests == {("triage", "rate_limited"): 1}


async def test_a_429_then_success(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(error(429, "slow down"), final(TRIAGE))
    ctx, result = await evaluate(engine_for(fake_openai))
    assert result == Triage(**TRIAGE) and ctx.usage.requests == 2


async def test_a_refused_key_fails_for_good_without_leaking_it(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(error(401, f"Incorrect API key provided: {API_KEY}"))
    engine = engine_for(fake_openai)
    with pytest.raises(LLMRejectedError, match="401") as caught:
        await engine.evaluate(context(triage_flock(engine)), [TICKET])
    assert isinstance(caught.value, NonRetryableError)
    assert API_KEY not in str(caught.value)
    assert len(fake_openai.requests) == 1  # 4xx: the SDK does not retry either


async def test_a_server_that_stalls_past_the_timeout_fails_retryably(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(stall(3))
    engine = engine_for(fake_openai, timeout=0.3)
    ctx = context(triage_flock(engine))
    with pytest.raises(LLMRequestError, match="openai:fake-model") as caught:
        await engine.evaluate(ctx, [TICKET])
    assert not isinstance(caught.value, NonRetryableError)
    assert ctx.usage.requests >= 1


async def test_no_server_at_all_fails_retryably() -> None:
    from support.serve import free_port

    engine = LLMEngine(
        MODEL,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        api_key=API_KEY,
        model_settings={"max_retries": 0},
    )
    ctx = context(triage_flock(engine))
    with pytest.raises(LLMRequestError, match="could not reach") as caught:
        await engine.evaluate(ctx, [TICKET])
    assert API_KEY not in str(caught.value)
    assert ctx.flock.stats.llm_requests == {("triage", "transport_error"): 1}


async def test_tool_calls_round_trip(fake_openai: FakeOpenAI) -> None:
    looked_up: list[str] = []

    def customer_tier(customer: str) -> str:
        """The customer's support tier."""
        looked_up.append(customer)
        return "platinum"

    fake_openai.script(
        completion(tool_calls=[("customer_tier", {"customer": "acme"})], prompt_tokens=50),
        final(TRIAGE, prompt_tokens=70, completion_tokens=20),
    )
    ctx, result = await evaluate(engine_for(fake_openai, tools=[customer_tier]))
    assert result == Triage(**TRIAGE)
    assert looked_up == ["acme"]
    first, second = fake_openai.requests
    assert {t["function"]["name"] for t in first["tools"]} == {"customer_tier", "final_result"}
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and "platinum" in tool_message["content"]
    assert ctx.usage.to_dict() == {"requests": 2, "input_tokens": 120, "output_tokens": 27}


async def test_through_a_flock_outputs_land_and_failures_are_recorded(
    fake_openai: FakeOpenAI,
) -> None:
    flock = triage_flock(engine_for(fake_openai))
    fake_openai.script(final(TRIAGE))
    good = await flock.publish(TICKET)
    await flock.run_until_idle(good.correlation_id, timeout=30)
    status = await flock.correlation_status(good.correlation_id)
    assert status is not None and status.errors == []

    fake_openai.script(error(503, "overloaded"))
    bad = await flock.publish(TICKET)
    await flock.run_until_idle(bad.correlation_id, timeout=30)
    status = await flock.correlation_status(bad.correlation_id)
    assert status is not None
    (failure,) = status.errors
    assert failure.message.startswith("LLMRequestError: model openai:fake-model: HTTP 503")
    assert API_KEY not in failure.message


async def test_through_the_worker_always_500_ends_in_a_dead_run_with_its_usage(
    fake_openai: FakeOpenAI,
) -> None:
    """The run model around the engine: each attempt fails retryably, the agent's retry
    policy applies, and the run record sums what every attempt's requests were."""
    fake_openai.script(error(500, "upstream exploded"))
    flock = triage_flock(engine_for(fake_openai, model_settings={"max_retries": 0}))
    flock.get_agent("triage").retry_policy = RetryPolicy(2, initial_delay=0.01, max_delay=0.01)
    ticket = await flock.publish(TICKET)
    await flock.run_until_idle(ticket.correlation_id, timeout=30)

    status = await flock.correlation_status(ticket.correlation_id)
    assert status is not None
    (error_entry,) = status.errors
    assert error_entry.attempts == 2 and "500" in error_entry.message
    run = await flock.get_run(str(error_entry.run_id))
    assert run is not None and run.state.value == "dead"
    assert run.usage is not None and run.usage.requests == len(fake_openai.requests) == 2


async def test_through_the_worker_invalid_output_is_dead_after_one_attempt(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(final({"priority": "whenever"}))
    flock = triage_flock(engine_for(fake_openai, output_retries=1))
    ticket = await flock.publish(TICKET)
    await flock.run_until_idle(ticket.correlation_id, timeout=30)

    status = await flock.correlation_status(ticket.correlation_id)
    assert status is not None
    (error_entry,) = status.errors
    assert error_entry.attempts == 1 and error_entry.message.startswith("LLMOutputError")
