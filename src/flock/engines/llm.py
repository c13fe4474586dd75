"""`LLMEngine`: an agent whose output a language model writes (SPEC section 8).

Built on pydantic-ai, which is an optional extra (`pip install 'flock[llm]'`): it is imported
here, lazily, and nowhere else, so the core package imports and serves without it.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel

from flock.core.agent import Agent, AgentConfigError, RunContext
from flock.engines.errors import LLMOutputError, LLMRejectedError, LLMRequestError
from flock.engines.prompt import instructions_for, user_prompt

if TYPE_CHECKING:
    import httpx2
    from pydantic_ai import Agent as ModelAgent
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.usage import RunUsage

INSTALL_HINT = "LLMEngine needs pydantic-ai, which is not installed: pip install 'flock[llm]'"
MODEL_ENV = "FLOCK_LLM_MODEL"
# Model names that go to OpenAI's chat completions API, which every OpenAI-compatible server
# speaks (pydantic-ai itself sends plain `openai:` names to the newer Responses API).
_CHAT_PREFIXES = ("openai:", "openai-chat:")


def _require_pydantic_ai() -> None:
    try:
        import pydantic_ai  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT, name="pydantic_ai") from exc


@dataclass(slots=True)
class _HTTPTally:
    """Every HTTP request one run sent to the model server, SDK retries included."""

    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def answered(self, status: int) -> None:
        outcome = _outcome_for_status(status)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def by_outcome(self) -> dict[str, int]:
        """Outcomes of every request sent; those with no answer are transport errors."""
        counts = dict(self.outcomes)
        unanswered = self.sent - sum(counts.values())
        if unanswered > 0:
            counts["transport_error"] = counts.get("transport_error", 0) + unanswered
        return counts


# The run a model HTTP request belongs to: set around each run, read by the HTTP client's
# hooks (one client serves every run of an engine, concurrently).
_tally: ContextVar[_HTTPTally | None] = ContextVar("flock_llm_tally", default=None)


async def _on_request(request: httpx2.Request) -> None:
    tally = _tally.get()
    if tally is not None:
        tally.sent += 1


async def _on_response(response: httpx2.Response) -> None:
    tally = _tally.get()
    if tally is not None:
        tally.answered(response.status_code)


def _outcome_for_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"


class LLMEngine:
    """Asks a language model for the agent's output, typed as the agent's `publishes`.

    `model` is `"openai:NAME"` (any OpenAI-compatible chat completions server; endpoint and
    key from `base_url`/`api_key` or `OPENAI_BASE_URL`/`OPENAI_API_KEY`), `"test"` (offline),
    another pydantic-ai model name, or a pydantic-ai `Model`; by default `FLOCK_LLM_MODEL`.
    `tools` are plain Python functions the model may call (sync ones run in a thread); one
    whose first parameter is a `pydantic_ai.RunContext` gets the Flock `RunContext` of the
    run as its `.deps` (`run_id`, `attempt`, `inputs`: keys for idempotent side effects).
    Output that fails validation goes back to the model up to `output_retries` times;
    `timeout` bounds each model request (the SDK's own retries included).
    """

    def __init__(
        self,
        model: str | Model | None = None,
        *,
        instructions: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        tools: Sequence[Callable[..., Any]] = (),
        output_retries: int = 2,
        timeout: float = 60.0,
        model_settings: ModelSettings | Mapping[str, Any] | None = None,
    ) -> None:
        _require_pydantic_ai()
        if model is None:
            from flock.settings import load_settings

            model = (load_settings().llm_model or "").strip() or None
            if model is None:
                raise AgentConfigError(
                    f"LLMEngine needs a model: pass model='openai:NAME' (or 'test'), "
                    f"or set {MODEL_ENV}"
                )
        _check_arguments(output_retries, timeout, tools)
        self._chat_model = isinstance(model, str) and model.startswith(_CHAT_PREFIXES)
        if (base_url is not None or api_key is not None) and not self._chat_model:
            raise AgentConfigError(
                "base_url= and api_key= apply to 'openai:NAME' models; "
                f"configure {model!r} itself instead"
            )
        if self._chat_model:
            _check_openai_settings(base_url, api_key)
        self.model = model
        self.instructions = instructions
        self.tools = tuple(tools)
        self.output_retries = output_retries
        self.timeout = float(timeout)
        self._base_url = base_url
        self._api_key = api_key
        settings: dict[str, Any] = {"request_timeout": self.timeout, **(model_settings or {})}
        self._settings = cast("ModelSettings", settings)
        self._runners: dict[tuple[Any, ...], ModelAgent[RunContext, Any]] = {}
        self._bound: tuple[asyncio.AbstractEventLoop, Model] | None = None

    @property
    def model_name(self) -> str:
        """How errors and logs name the model (never with its key)."""
        if isinstance(self.model, str):
            return self.model
        return f"{self.model.system}:{self.model.model_name}"

    def __repr__(self) -> str:
        return f"LLMEngine({self.model_name!r})"

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        from pydantic_ai.usage import RunUsage

        agent = ctx.flock.get_agent(ctx.agent)
        runner = self._runner_for(agent)
        model = self._model_for_loop()
        usage = RunUsage()
        tally = _HTTPTally()
        token = _tally.set(tally)
        failure: BaseException | None = None
        try:
            result = await runner.run(
                user_prompt(ctx.inputs, inputs),
                model=model,
                deps=ctx,
                usage=usage,
                model_settings=self._settings,
            )
        except Exception as exc:
            failure = exc
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            _tally.reset(token)
            self._account(ctx, usage, tally, failure)
        return result.output

    # -- what the model is asked --------------------------------------------------------

    def _runner_for(self, agent: Agent) -> ModelAgent[RunContext, Any]:
        """The pydantic-ai agent for this Flock agent: its instructions and output type."""
        models = tuple(dict.fromkeys(output.model for output in agent.outputs))
        if not models:
            raise AgentConfigError(
                f"agent {agent.name!r} uses an LLMEngine but publishes nothing: "
                "declare its output type with .publishes(...)"
            )
        key = (agent.name, agent.description, models)
        runner = self._runners.get(key)
        if runner is None:
            from pydantic_ai import Agent as ModelAgent

            runner = ModelAgent(
                output_type=models[0] if len(models) == 1 else list(models),
                instructions=instructions_for(agent, self.instructions),
                deps_type=RunContext,
                tools=self.tools,
                retries={"output": self.output_retries},
                name=agent.name,
                defer_model_check=True,
            )
            self._runners[key] = runner
        return runner

    def _model_for_loop(self) -> Model:
        """The model, its HTTP client bound to the running loop (a client's pooled connections
        belong to the loop that opened them, so a new loop gets a new client)."""
        loop = asyncio.get_running_loop()
        if self._bound is not None and self._bound[0] is loop:
            return self._bound[1]
        model = self._build_model()
        self._bound = (loop, model)
        return model

    def _build_model(self) -> Model:
        from pydantic_ai.models import Model, infer_model

        if isinstance(self.model, Model):
            return self.model
        if not self._chat_model:
            return infer_model(self.model)
        from openai import DefaultAsyncHttpxClient
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        http_client = DefaultAsyncHttpxClient(
            timeout=self.timeout,
            event_hooks={"request": [_on_request], "response": [_on_response]},
        )
        provider = OpenAIProvider(
            base_url=self._base_url, api_key=self._api_key, http_client=http_client
        )
        return OpenAIChatModel(self.model.split(":", 1)[1], provider=provider)

    # -- what it cost, and how it failed ------------------------------------------------

    def _account(
        self, ctx: RunContext, usage: RunUsage, tally: _HTTPTally, failure: BaseException | None
    ) -> None:
        """Add what the model calls spent to the run's usage and to the Flock's counters."""
        if tally.sent:
            outcomes = tally.by_outcome()
        else:  # a model without our HTTP client: count the responses pydantic-ai saw
            outcomes = {"ok": usage.requests} if usage.requests else {}
            failed = _failed_request_outcome(failure)
            if failed is not None:
                outcomes[failed] = outcomes.get(failed, 0) + 1
        requests = sum(outcomes.values())
        ctx.usage.add(
            requests=requests, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
        )
        stats = ctx.flock.stats
        stats.count_llm_tokens(
            ctx.agent, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
        )
        for outcome, n in outcomes.items():
            stats.count_llm_requests(ctx.agent, outcome, n)

    def _translate(self, exc: Exception) -> Exception:
        """The run-model error for a failed model run (retryable or not), key redacted."""
        from pydantic_ai import exceptions as pai

        name = self.model_name
        if isinstance(exc, pai.ModelRequestTimeout):
            return LLMRequestError(
                self._redact(f"model {name}: no answer within {exc.timeout:g} s")
            )
        if isinstance(exc, pai.ModelHTTPError):
            status = exc.status_code
            text = self._redact(
                f"model {name}: HTTP {status} from the model server{_body_summary(exc.body)}"
            )
            if status in (408, 409, 429) or status >= 500:
                return LLMRequestError(text, status_code=status, retry_after=exc.retry_after)
            return LLMRejectedError(text, status_code=status)
        if isinstance(exc, pai.ModelRequestRejectedError | pai.ModelQuotaExceededError):
            return LLMRejectedError(self._redact(f"model {name}: request refused: {exc.message}"))
        if isinstance(exc, pai.ModelConnectionError):
            return LLMRequestError(
                self._redact(f"model {name}: could not reach the model server: {exc.message}")
            )
        if isinstance(exc, pai.ModelAPIError):
            return LLMRequestError(self._redact(f"model {name}: request failed: {exc.message}"))
        if isinstance(exc, pai.UnexpectedModelBehavior) and exc.message.startswith(
            "Exceeded maximum output retries"
        ):
            detail = _validation_detail(exc.__cause__)
            return LLMOutputError(
                self._redact(
                    f"model {name}: output failed validation after {self.output_retries} "
                    f"retries: {detail}"
                )
            )
        if isinstance(exc, pai.UsageLimitExceeded | pai.ContentFilterError):
            return LLMOutputError(self._redact(f"model {name}: {exc.message}"))
        if isinstance(exc, pai.UnexpectedModelBehavior):
            return LLMRequestError(self._redact(f"model {name}: unusable answer: {exc.message}"))
        return exc

    def _redact(self, text: str) -> str:
        for secret in (self._api_key, os.environ.get("OPENAI_API_KEY")):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


def _check_arguments(output_retries: object, timeout: object, tools: Sequence[object]) -> None:
    if (
        isinstance(output_retries, bool)
        or not isinstance(output_retries, int)
        or output_retries < 0
    ):
        raise AgentConfigError(f"output_retries must be an int >= 0, got {output_retries!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise AgentConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    for tool in tools:
        if not callable(tool):
            raise AgentConfigError(f"tools= takes functions, got {tool!r}")


def _check_openai_settings(base_url: str | None, api_key: str | None) -> None:
    """Fail at declaration, not at the first run, when no OpenAI endpoint or key is set."""
    if api_key is not None or os.environ.get("OPENAI_API_KEY"):
        return
    if base_url is not None or os.environ.get("OPENAI_BASE_URL"):
        return  # a local server (vLLM, Ollama) may need no key
    raise AgentConfigError(
        "LLMEngine('openai:...') needs OPENAI_API_KEY (or api_key=), or OPENAI_BASE_URL "
        "(or base_url=) for a local OpenAI-compatible server"
    )


def _failed_request_outcome(failure: BaseException | None) -> str | None:
    """The outcome of the request a run ended on, when a model without our HTTP client
    raised a request error (its responses are counted by pydantic-ai, its failures not)."""
    from pydantic_ai import exceptions as pai

    if isinstance(failure, pai.ModelHTTPError):
        return _outcome_for_status(failure.status_code)
    if isinstance(failure, pai.ModelAPIError):
        return "transport_error"
    return None


def _body_summary(body: object) -> str:
    """The model server's own error message, short (its `error.message` when it has one)."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, Mapping) else error
        text = str(message) if message is not None else ""
    elif body is None:
        text = ""
    else:
        text = str(body)
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f": {text}" if text else ""


def _validation_detail(cause: BaseException | None) -> str:
    """Pydantic's validation message, without its documentation links."""
    if cause is None:
        return "no valid answer"
    lines = [
        line.strip()
        for line in str(cause).splitlines()
        if line.strip() and not line.strip().startswith("For further information")
    ]
    return "; ".join(lines) or type(cause).__name__


__all__ = ["INSTALL_HINT", "MODEL_ENV", "LLMEngine"]
