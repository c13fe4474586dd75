"""The baseline every HTTP figure is compared with: a bare FastAPI `GET` returning a constant.

Served as `uvicorn benchmarks.apps.baseline:app`, with the same uvicorn configuration as
`flock serve` (httptools + uvloop, no access log).
"""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/ok")
async def ok() -> dict[str, bool]:
    return {"ok": True}
