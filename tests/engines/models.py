"""Flock types of the LLM engine tests (names prefixed so no other suite collides)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from flock import flock_type


@flock_type(name="LLMTicket")
class Ticket(BaseModel):
    subject: str
    body: str
    customer: str = "acme"


@flock_type(name="LLMTriage")
class Triage(BaseModel):
    priority: Literal["low", "normal", "urgent"]
    team: str
    summary: str = Field(max_length=200)


@flock_type(name="LLMSpam")
class Spam(BaseModel):
    reason: str


TICKET = Ticket(subject="Printer on fire", body="Flames since 9am. ünïcode ok?")
TRIAGE = {"priority": "urgent", "team": "facilities", "summary": "printer fire"}
