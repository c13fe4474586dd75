"""The demo served by `flock serve --demo`: a document cascade with a branch and a join.

    Document --summarizer--> Summary  --+
             --keywords----> Keywords --+--reporter--> Report

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


class Reporter:
    """Joins the two branches: writes one Report once both Summary and Keywords exist.

    It runs one input at a time (max_concurrency 1), so whichever branch lands second
    sees the other and writes the report; the first finds its partner missing and waits.
    """

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Any:
        wanted = FilterConfig(
            correlation_id=ctx.correlation_id,
            type_names=frozenset({"Summary", "Keywords", "Report"}),
        )
        found, _ = await ctx.flock.store.query_artifacts(wanted, limit=-1)
        latest = {item.type: item.model() for item in found}  # type: ignore[union-attr]
        if "Report" in latest or "Summary" not in latest or "Keywords" not in latest:
            return None
        summary, keywords = latest["Summary"], latest["Keywords"]
        assert isinstance(summary, Summary) and isinstance(keywords, Keywords)
        return Report(title=summary.title, summary=summary.summary, keywords=keywords.keywords)


def build() -> Flock:
    """A new Flock with the demo's three agents (in-memory store until `flock serve` sets one)."""
    flock = Flock("demo")
    flock.agent("summarizer").description("Summarizes a document in two sentences.").consumes(
        Document
    ).publishes(Summary).with_engines(summarize)
    flock.agent("keywords").description("Extracts the five most frequent keywords.").consumes(
        Document
    ).publishes(Keywords).with_engines(extract_keywords)
    flock.agent("reporter").description("Joins summary and keywords into a report.").consumes(
        Summary, Keywords
    ).publishes(Report).with_engines(Reporter()).max_concurrency(1)
    return flock


__all__ = ["Document", "Keywords", "Report", "Summary", "build"]
