"""Result rows, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One measured case. `figures` holds the numbers (ms, req/s, MiB); `ratio` compares the
    case with its reference measured in the same run (`ratio_of` says which)."""

    scenario: str
    case: str
    figures: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None
    ratio_of: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def check(
        self,
        value: float,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
        label: str = "",
    ) -> Row:
        """Set the target and whether `value` meets it."""
        if at_most is not None:
            self.target = f"{label} <= {at_most:g}".strip()
            self.met = value <= at_most
        if at_least is not None:
            self.target = f"{label} >= {at_least:g}".strip()
            self.met = value >= at_least
        return self


def _fmt(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


_SHOWN = {
    "rps": "req/s",
    "p50_ms": "p50 ms",
    "p95_ms": "p95 ms",
    "mean_ms": "mean ms",
    "rss_mib": "MiB",
    "api_p50_ms": "p50 ms as the API asks",
    "cpu_us": "us server CPU/req",
    "p90_ms": "p90 ms",
    "rps_per_process": "req/s per executing process",
    "serve_cpu_us": "us in serve",
    "worker_cpu_us": "us in workers",
    "pg_cpu_us": "us in PostgreSQL",
    "serve_rss_mib": "MiB serve RSS",
    "worker_rss_mib": "MiB RSS per worker",
    "serve_pg_conns": "PostgreSQL conns of serve",
    "worker_pg_conns": "PostgreSQL conns per worker",
    "added_p50_ms": "ms p50 added by the handoff",
}


def _figures(figures: dict[str, float]) -> str:
    parts = []
    for key, value in figures.items():
        unit = _SHOWN.get(key, key.replace("_ms", " ms"))
        parts.append(f"{_fmt(value)} {unit}")
    return ", ".join(parts)


HEADER = ("scenario", "case", "figures", "ratio", "target", "met")


def _cells(row: Row, *, no: str = "NO") -> tuple[str, ...]:
    ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
    if row.ratio is not None and row.ratio_of:
        ratio += f" ({row.ratio_of})"
    met = "" if row.met is None else ("yes" if row.met else no)
    return (row.scenario, row.case, _figures(row.figures), ratio, row.target, met)


def table(rows: list[Row]) -> str:
    """The rows as a plain-text table, then their notes."""
    body = [_cells(row) for row in rows]
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    notes = [f"  [{r.scenario} / {r.case}] {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row, no="**no**")) + " |" for row in rows]
    return "\n".join(lines)


def write_json(rows: list[Row], meta: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = {**meta, "rows": [asdict(r) for r in rows]}
    text = json.dumps(data, indent=2, default=str)
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(text)
    (RESULTS_DIR / "latest.json").write_text(text)
    return path


__all__ = ["RESULTS_DIR", "Row", "markdown", "table", "write_json"]


def _main() -> None:
    """`python -m benchmarks.report [results.json]`: a results file as a Markdown table."""
    import sys

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "latest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        sys.exit(
            f"error: cannot read results file {path}: {reason} "
            "(run `uv run python -m benchmarks` first, or name a results file)"
        )
    fields = Row.__dataclass_fields__
    rows = [Row(**{k: v for k, v in row.items() if k in fields}) for row in data["rows"]]
    print(markdown(rows))


if __name__ == "__main__":
    _main()
