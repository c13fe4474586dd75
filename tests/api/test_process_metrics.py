"""/metrics carries prometheus-client's process, GC and platform metrics."""

from __future__ import annotations

from typing import Any

from flock import Flock


async def test_metrics_include_process_and_gc(api_client: Any) -> None:
    first = await api_client(Flock())
    second = await api_client(Flock())  # two services in one process: no duplicate error

    for client in (first, second):
        text = (await client.get("/metrics")).text
        for name in (
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "python_gc_collections_total",
            "python_info",
        ):
            assert f"\n{name}" in text, name
