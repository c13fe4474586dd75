"""What an `LLMEngine` tells the model: the agent's role, and its inputs as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from flock.core.agent import Agent
from flock.core.artifacts import Artifact
from flock.registry import type_registry


def instructions_for(agent: Agent, instructions: str | None) -> str:
    """The system instructions: who the agent is, its description, the engine's instructions."""
    parts = [f"You are {agent.name!r}, an agent of a Flock workflow."]
    if agent.description:
        parts.append(f"Your role: {agent.description}")
    if instructions:
        parts.append(instructions)
    parts.append(
        "The user message holds your input artifacts, one JSON object per line, each with its "
        "type name, its artifact id and its payload."
    )
    return "\n\n".join(parts)


def input_document(artifact: Artifact) -> dict[str, Any]:
    """One input as the model sees it: `{"type", "id", "payload"}`."""
    return {"type": artifact.type, "id": artifact.id, "payload": artifact.payload}


def user_prompt(artifacts: Sequence[Artifact], models: Sequence[BaseModel]) -> str:
    """The user message: every input artifact as one line of JSON.

    The artifacts of the run context are used when the engine has them (they carry ids);
    otherwise the models alone, with their registered type names.
    """
    if artifacts:
        documents = [input_document(a) for a in artifacts]
    else:
        documents = [
            {"type": type_registry.name_for(type(m)), "payload": m.model_dump(mode="json")}
            for m in models
        ]
    count = len(documents)
    lines = [f"Input artifact{'s' if count != 1 else ''} ({count}):"]
    lines += [json.dumps(document, ensure_ascii=False) for document in documents]
    return "\n".join(lines)


__all__ = ["input_document", "instructions_for", "user_prompt"]
