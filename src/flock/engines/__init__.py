"""Engines beyond plain functions. `LLMEngine` needs the `flock[llm]` extra to run, not to
be imported."""

from flock.engines.errors import LLMError, LLMOutputError, LLMRejectedError, LLMRequestError
from flock.engines.llm import LLMEngine

__all__ = ["LLMEngine", "LLMError", "LLMOutputError", "LLMRejectedError", "LLMRequestError"]
