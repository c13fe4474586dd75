"""HTTP load generators: wrk where installed, else a Python asyncio generator.

Both keep N HTTP/1.1 keep-alive connections busy for a duration, each connection sending its
next request as soon as the previous answer arrived (closed loop), and report throughput
and latency percentiles. A `Request` describes what to send; `unique_key=True` gives every
request its own `Idempotency-Key` (a first call), a fixed `headers` key makes a replay.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    unique_key: bool = False  # a fresh Idempotency-Key per request


@dataclass
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_us: float | None = None  # the server's CPU time per request, when measured

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_load(
    base_url: str, request: Request, connections: int, seconds: float, tool: str = "auto"
) -> LoadResult:
    """Load `base_url` with `request` on `connections` connections for `seconds`."""
    use_wrk = tool == "wrk" or (tool == "auto" and wrk_path() is not None)
    if use_wrk:
        return _run_wrk(base_url, request, connections, seconds)
    return asyncio.run(_run_python(base_url, request, connections, seconds))


# -- wrk ---------------------------------------------------------------------------------------


def _lua(request: Request) -> str:
    """A wrk script: the request, a per-request key if asked, and a JSON summary at the end."""
    headers = dict(request.headers)
    if request.body:
        headers.setdefault("Content-Type", "application/json")
    lines = [
        f"wrk.method = {_lua_str(request.method)}",
        f"wrk.path = {_lua_str(request.path)}",
        f"wrk.body = {_lua_str(request.body.decode())}" if request.body else "",
    ]
    lines += [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items()]
    if request.unique_key:
        nonce = uuid.uuid4().hex[:12]
        lines += [
            "local threads = 0",
            "function setup(thread)",
            "  threads = threads + 1",
            "  thread:set('tid', threads)",
            "end",
            "local counter = 0",
            "function request()",
            "  counter = counter + 1",
            "  local headers = {}",
            "  for k, v in pairs(wrk.headers) do headers[k] = v end",
            f"  headers['Idempotency-Key'] = '{nonce}-' .. tostring(tid) .. '-' .. counter",
            "  return wrk.format(nil, nil, headers, nil)",
            "end",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        "  local failed = e.connect + e.read + e.write + e.status + e.timeout",
        f"  io.write(string.format('{_MARK}"
        '{"requests": %d, "micros": %d, "errors": %d, "p50": %d, "p95": %d, "p99": %d}\\n\', '
        "summary.requests, summary.duration, failed, latency:percentile(50), "
        "latency:percentile(95), latency:percentile(99)))",
        "end",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _lua_str(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def _run_wrk(base_url: str, request: Request, connections: int, seconds: float) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(request))
    try:
        command = [
            wrk_path() or "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(round(seconds), 1)}s",
            "--timeout",
            "30s",
            "-s",
            script.name,
            base_url.rstrip("/") + request.path,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((x for x in out.splitlines() if x.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary:\n{out}")
    data = json.loads(line.removeprefix(_MARK))
    elapsed = data["micros"] / 1e6
    return LoadResult(
        tool="wrk",
        connections=connections,
        seconds=elapsed,
        requests=data["requests"],
        errors=data["errors"],
        rps=data["requests"] / elapsed,
        p50_ms=data["p50"] / 1000,
        p95_ms=data["p95"] / 1000,
        p99_ms=data["p99"] / 1000,
    )


# -- Python fallback ---------------------------------------------------------------------------


def _request_bytes(request: Request, host: str) -> Callable[[], bytes]:
    head = f"{request.method} {request.path} HTTP/1.1\r\nHost: {host}\r\n"
    headers = dict(request.headers)
    if request.body:
        headers.setdefault("Content-Type", "application/json")
        headers["Content-Length"] = str(len(request.body))
    fixed = head + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if not request.unique_key:
        data = (fixed + "\r\n").encode() + request.body
        return lambda: data
    nonce = uuid.uuid4().hex[:12]
    counter = iter(range(1, 1 << 62))

    def keyed() -> bytes:
        key = f"Idempotency-Key: {nonce}-{next(counter)}\r\n\r\n"
        return (fixed + key).encode() + request.body

    return keyed


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked); return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _run_python(
    base_url: str, request: Request, connections: int, seconds: float
) -> LoadResult:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    make = _request_bytes(request, f"{host}:{port}")
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(make())
                try:
                    status = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        tool="python-asyncio",
        connections=connections,
        seconds=elapsed,
        requests=len(latencies),
        errors=errors,
        rps=len(latencies) / elapsed,
        p50_ms=_percentile(latencies, 50) * 1000,
        p95_ms=_percentile(latencies, 95) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
    )


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


__all__ = ["LoadResult", "Request", "run_load", "wrk_path"]
