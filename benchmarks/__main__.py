"""Run the benchmarks: `uv run python -m benchmarks [--quick] [--only SCENARIO ...]`.

Prints a table and writes JSON (with the machine description) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from benchmarks import machine
from benchmarks.context import Context
from benchmarks.loadgen import wrk_path
from benchmarks.report import Row, table, write_json

SCENARIOS = {
    "inprocess": "in-process publish -> 3-stage cascade -> idle (memory, SQLite)",
    "http": "baseline route, async publish, sync publish (plain, keyed, replay) at 1/16 conn",
    "isolation": "fast sync calls with slow workflows in flight vs alone",
    "query": "query by correlation id at 1k/10k/50k artifacts (memory, SQLite, PostgreSQL)",
    "idempotency": "idempotency store claim/complete/lookup (memory, SQLite, PostgreSQL, Redis)",
    "memory": "server RSS over 100,000 keyed requests with a 2 s TTL, before/after purge",
    "scaleout": "sync publish: all-in-one serve vs --workers 2 vs HTTP-only + 1/2 workers",
    "stores": "memory vs SQLite vs PostgreSQL: sync publish at 16 conn, in-process cascade",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--only", nargs="+", choices=list(SCENARIOS), metavar="SCENARIO",
        help="run only these: " + ", ".join(SCENARIOS),
    )  # fmt: skip
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto",
        help="HTTP load generator (auto: wrk if installed, else Python asyncio)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=None,
        help="measure each HTTP case this many times, report the median (default 3, quick 1)",
    )  # fmt: skip
    parser.add_argument(
        "--src", metavar="DIR",
        help="benchmark the flock package under DIR (e.g. an older commit's src/) instead",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.src:
        # Servers and in-process scenarios alike import flock from DIR first.
        src = os.path.abspath(args.src)
        sys.path.insert(0, src)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (src, os.environ.get("PYTHONPATH")) if p
        )
    if args.loadgen == "wrk" and wrk_path() is None:
        parser.error("--loadgen wrk: wrk is not installed")
    tool = args.loadgen if args.loadgen != "auto" else ("wrk" if wrk_path() else "python")
    repeat = args.repeat or (1 if args.quick else 3)
    ctx = Context(quick=args.quick, loadgen=tool, repeat=repeat)
    names = args.only or list(SCENARIOS)

    meta = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "mode": "quick" if args.quick else "full",
        "loadgen": "wrk" if tool == "wrk" else "python-asyncio",
        "repeat": repeat,
        "flock_source": args.src or "the working tree",
        "machine": machine.describe(),
    }
    print(f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
          f"load {meta['machine']['load_average_start']}; load generator: {meta['loadgen']}",
          flush=True)  # fmt: skip
    rows: list[Row] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in names:
        print(f"-- {name}: {SCENARIOS[name]}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.scenarios.{name}")
            new_rows: list[Row] = module.run(ctx)
        except Exception:
            failures[name] = traceback.format_exc()
            print(failures[name], file=sys.stderr, flush=True)
            continue
        finally:
            timings[name] = round(time.monotonic() - started, 1)
        print(table(new_rows), flush=True)
        rows.extend(new_rows)
    meta["machine"]["load_average_end"] = machine.load_average()
    meta["scenario_seconds"] = timings
    meta["failures"] = failures
    path = write_json(rows, meta)
    print("\n" + table(rows))
    print(f"\nload average at the end: {meta['machine']['load_average_end']}; JSON: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
