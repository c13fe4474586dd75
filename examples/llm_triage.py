"""Support-ticket triage: a model reads each ticket, a plain function routes the result.

    Ticket --triage (LLMEngine)--> Triage --router (a function)--> Assignment

Needs the LLM extra (`pip install 'flock[llm]'`). Offline, with pydantic-ai's test model
(it fills every field with placeholder values, and calls the tool once):

    FLOCK_LLM_MODEL=test python examples/llm_triage.py

Against any OpenAI-compatible server (OpenAI, vLLM, Ollama, LM Studio):

    FLOCK_LLM_MODEL=openai:llama3.2 OPENAI_BASE_URL=http://127.0.0.1:11434/v1 \
        python examples/llm_triage.py
    FLOCK_LLM_MODEL=openai:gpt-4.1-mini OPENAI_API_KEY=sk-... python examples/llm_triage.py

Or serve it: `flock serve examples/llm_triage.py`, then publish a ticket with
`POST /api/v1/artifacts/sync` (`{"type": "Ticket", "payload": {"customer": "...",
"subject": "...", "body": "..."}}`) and read the run's token usage in `GET /api/v1/runs`.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, Field

from flock import FilterConfig, Flock, flock_type
from flock.engines import LLMEngine


@flock_type
class Ticket(BaseModel):
    customer: str
    subject: str
    body: str


@flock_type
class Triage(BaseModel):
    """The model's reading of one ticket."""

    ticket_id: str = Field(description="the artifact id of the ticket")
    priority: Literal["low", "normal", "urgent"]
    team: Literal["billing", "technical", "account", "general"]
    summary: str = Field(description="one sentence for the person on duty")


@flock_type
class Assignment(BaseModel):
    ticket_id: str
    queue: str
    respond_within_hours: int


_TIERS = {"acme": "enterprise", "globex": "business"}


def customer_tier(customer: str) -> str:
    """The support tier of a customer: enterprise, business or free."""
    return _TIERS.get(customer.lower(), "free")


def route(triage: Triage) -> Assignment:
    hours = {"urgent": 1, "normal": 8, "low": 48}[triage.priority]
    return Assignment(
        ticket_id=triage.ticket_id, queue=f"{triage.team}-desk", respond_within_hours=hours
    )


def build() -> Flock:
    flock = Flock()
    flock.agent("triage").description(
        "Reads a support ticket and decides its priority and the team that should handle it."
    ).consumes(Ticket).publishes(Triage).with_engines(
        LLMEngine(  # the model comes from FLOCK_LLM_MODEL
            instructions=(
                "Outages, data loss and security problems are urgent; so is anything from an "
                "enterprise customer that blocks their work (look the tier up). Questions "
                "about invoices go to billing. Copy the ticket's artifact id into ticket_id."
            ),
            tools=[customer_tier],
        )
    )
    flock.agent("router").description("Routes a triaged ticket to a queue.").consumes(
        Triage
    ).publishes(Assignment).with_engines(route)
    return flock


flock = build()

TICKETS = [
    Ticket(customer="acme", subject="Checkout is down", body="Every payment fails with a 502."),
    Ticket(customer="someone", subject="Invoice address", body="Please change our address."),
]


async def main() -> None:
    for ticket in TICKETS:
        published = await flock.publish(ticket)
        await flock.run_until_idle(published.correlation_id, timeout=120)
        status = await flock.correlation_status(published.correlation_id)
        for error in status.errors if status else []:
            print(f"{ticket.subject!r}: {error.agent} failed: {error.message}")
        items, _ = await flock.store.query_artifacts(
            FilterConfig(correlation_id=published.correlation_id), limit=10, offset=0
        )
        for item in items[1:]:
            print(f"{ticket.subject!r} -> {item.type}: {item.payload}")
    tokens = dict(flock.stats.llm_tokens)
    print(f"tokens: {tokens}, requests: {dict(flock.stats.llm_requests)}")


if __name__ == "__main__":
    asyncio.run(main())
