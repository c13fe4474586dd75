"""Flock's benchmarks: `uv run python -m benchmarks [--quick] [--only SCENARIO ...]`.

See docs/benchmarks.md for what each scenario measures and the recorded results.
"""
