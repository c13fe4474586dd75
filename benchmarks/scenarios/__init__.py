"""The benchmark scenarios; each `run(ctx)` returns result rows."""
