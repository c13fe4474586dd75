"""A small OpenAI-compatible chat completions server on loopback, for the LLM engine tests.

`FakeOpenAI` is a FastAPI app served by uvicorn in a thread of the test process. Tests
script its answers (`fake.script(reply, reply, ...)`, each a `Reply` or a function of the
request body returning one; the last one repeats) and read back every request it received
(`fake.requests`: JSON bodies and headers), so the real HTTP path of the OpenAI SDK is
exercised, SDK retries included, without any network.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from support.serve import free_port


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a JSON body with a status (and headers), after `delay` seconds."""

    body: dict[str, Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(
    *,
    content: str | None = None,
    tool_calls: Sequence[tuple[str, dict[str, Any] | str]] = (),
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    model: str = "fake-model",
) -> Reply:
    """A successful chat completion: text, and/or tool calls `(name, arguments)`."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for name, args in tool_calls
        ]
    return Reply(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(status: int, message: str = "boom", *, code: str | None = None) -> Reply:
    """An OpenAI-style error; `retry-after-ms: 1` keeps the SDK's retry waits short."""
    return Reply(
        {"error": {"message": message, "type": "server_error", "code": code}},
        status=status,
        headers={"retry-after-ms": "1"},
    )


def stall(seconds: float) -> Reply:
    """An answer that comes after `seconds` (for timeouts)."""
    return Reply(completion(content="late").body, delay=seconds)


Script = Reply | Callable[[dict[str, Any]], Reply]


class FakeOpenAI:
    """The fake server's state: its script and the requests it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._script: list[Script] = [completion(content="hello")]
        self._lock = threading.Lock()
        self.url = ""
        self.app = self._build_app()

    def script(self, *replies: Script) -> None:
        """Answer the next requests with `replies` in order; the last one then repeats.

        Forgets the requests received so far. No replies: a plain text answer."""
        with self._lock:
            self._script = list(replies) or [completion(content="hello")]
            self.requests.clear()
            self.headers.clear()

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            item = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        return item(body) if callable(item) else item

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> JSONResponse:
            body = await request.json()
            with self._lock:
                self.headers.append(dict(request.headers))
            reply = self._next(body)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

        return app

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def serve_fake_openai() -> Iterator[FakeOpenAI]:
    """Serve a `FakeOpenAI` on a free loopback port for the duration of the block."""
    fake = FakeOpenAI()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="fake-openai", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake OpenAI server did not start")
        time.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        server.force_exit = True  # do not wait for a stalled answer to finish
        thread.join(timeout=10)
