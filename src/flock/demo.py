"""The demo served by `flock serve --demo`: a three-stage document cascade.

    Document --summarizer--> Summary --keywords--> Keywords --reporter--> Report

Each stage is one run per document, so a Report is written exactly once per Document
however many documents run at once (no concurrency limit needed). The later stages read
what they need of the earlier artifacts from the blackboard.

Try it:  flock serve --demo   then   curl (see README.md). It ships inside the package, so
an installed Flock can serve it; importing this module registers its four types, and
`build()` returns a fresh Flock running the cascade.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from flock import FilterConfig, Flock, RunContext, flock_type


@flock_type
class Document(BaseModel):
    title: str = Field(min_length=1)
    text: str = Field(min_length=1)


@flock_type
class Summary(BaseModel):
    title: str
    summary: str


@flock_type
class Keywords(BaseModel):
    title: str
    keywords: list[str]


@flock_type
class Report(BaseModel):
    title: str
    summary: str
    keywords: list[str]


_STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in",
        "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were",
        "will", "with", "which", "their", "they", "them", "we", "our", "you", "your", "not",
        "but", "can",
    }
)  # fmt: skip


def summarize(doc: Document) -> Summary:
    sentences = re.split(r"(?<=[.!?])\s+", doc.text.strip())
    return Summary(title=doc.title, summary=" ".join(sentences[:2]))


def extract_keywords(doc: Document) -> Keywords:
    words = [w for w in re.findall(r"[a-z][a-z'-]+", doc.text.lower()) if w not in _STOPWORDS]
    return Keywords(title=doc.title, keywords=[w for w, _ in Counter(words).most_common(5)])


async def _one(ctx: RunContext, model: type[BaseModel]) -> Any:
    """The correlation's (single) artifact of `model`'s type, as its model."""
    wanted = FilterConfig(correlation_id=ctx.correlation_id, type_names=frozenset({model.__name__}))
    found, _ = await ctx.flock.store.query_artifacts(wanted, limit=1)
    return found[0].model() if found else None  # type: ignore[union-attr]


class KeywordFinder:
    """Runs on the Summary and extracts the keywords of the whole Document it came from."""

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        doc = await _one(ctx, Document)
        return extract_keywords(doc) if isinstance(doc, Document) else None


class Reporter:
    """Runs on the Keywords and joins them with the Summary into a Report."""

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        (keywords,) = inputs
        summary = await _one(ctx, Summary)
        if not isinstance(keywords, Keywords) or not isinstance(summary, Summary):
            return None  # Keywords published on their own: nothing to join them with
        return Report(title=summary.title, summary=summary.summary, keywords=keywords.keywords)


def build() -> Flock:
    """A new Flock with the demo's three agents (in-memory store until `flock serve` sets one)."""
    flock = Flock("demo")
    flock.agent("summarizer").description("Summarizes a document in two sentences.").consumes(
        Document
    ).publishes(Summary).with_engines(summarize)
    flock.agent("keywords").description(
        "Extracts the five most frequent keywords of the summarized document."
    ).consumes(Summary).publishes(Keywords).with_engines(KeywordFinder())
    flock.agent("reporter").description("Joins summary and keywords into a report.").consumes(
        Keywords
    ).publishes(Report).with_engines(Reporter())
    return flock


__all__ = ["Document", "Keywords", "Report", "Summary", "build"]
