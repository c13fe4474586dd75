"""The apps the benchmarks serve: a bare FastAPI baseline and a Flock cascade."""
