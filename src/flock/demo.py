"""The demo served by `flock serve --demo`: a document cascade that ends in an AND gate.

    Document --summarizer--> Summary  --+
    Document --keywords----> Keywords --+--reporter--> Report

`summarizer` and `keywords` run on the Document side by side; `reporter` consumes
(Summary, Keywords): it runs once the correlation holds one of each, so every Document
gets exactly one Report however many run at once, with no concurrency limit.

Try it:  uv run flock serve --demo   then   curl (see README.md). It ships inside the
package, so an installed Flock can serve it; importing this module registers its four
types, and `build()` returns a fresh Flock running the cascade.
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, Field

from flock import Flock, flock_type


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


def report(summary: Summary, keywords: Keywords) -> Report:
    """The AND gate's engine: one positional argument per declared type, in order."""
    return Report(title=summary.title, summary=summary.summary, keywords=keywords.keywords)


def build() -> Flock:
    """A new Flock with the demo's three agents (in-memory store until `flock serve` sets one)."""
    flock = Flock("demo")
    flock.agent("summarizer").description("Summarizes a document in two sentences.").consumes(
        Document
    ).publishes(Summary).with_engines(summarize)
    flock.agent("keywords").description(
        "Extracts the five most frequent keywords of a document."
    ).consumes(Document).publishes(Keywords).with_engines(extract_keywords)
    flock.agent("reporter").description("Joins summary and keywords into a report.").consumes(
        Summary, Keywords
    ).publishes(Report).with_engines(report)
    return flock


__all__ = ["Document", "Keywords", "Report", "Summary", "build"]
