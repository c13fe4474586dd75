"""HEAD is answered on every GET route: the GET's status and headers, no body."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from fastapi import Response

from flock import Flock
from support.serve import ServeProcess


async def test_head_answers_every_get_route_like_get(api_client: Any) -> None:
    client = await api_client(Flock())
    document = (await client.get("/openapi.json")).json()
    paths = [p for p, item in document["paths"].items() if "get" in item]
    paths += ["/docs", "/redoc", "/openapi.json"]
    assert len(paths) > 10

    for path in paths:
        url = re.sub(r"\{[^}]+\}", "x", path)
        got = await client.get(url)
        head = await client.head(url)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path != "/metrics":  # the metrics change between two scrapes
            assert head.headers["content-length"] == str(len(got.content)), path
        assert "x-correlation-id" in head.headers


async def test_head_on_a_post_only_route_is_405(api_client: Any) -> None:
    client = await api_client(Flock())

    response = await client.head("/api/v1/artifacts/sync")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.content == b""


async def test_head_over_a_real_server(tmp_path: Path) -> None:
    stores = ("--store", "memory://", "--idempotency", "memory://")
    async with (
        ServeProcess("--demo", *stores, cwd=tmp_path) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        head = await client.head("/health")
        get = await client.get("/health")  # the same connection goes on after a HEAD
        second = await client.head("/api/v1/agents")

    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert get.json() == {"status": "ok"}
    assert second.status_code == 200 and second.content == b""


async def test_an_apps_own_head_route_is_kept(api_client: Any) -> None:
    client = await api_client(Flock())
    app = client.service.app

    @app.get("/things")
    async def things() -> dict[str, str]:
        return {"what": "things"}

    @app.head("/things")
    async def things_head() -> Response:
        return Response(headers={"X-Things": "counted"})

    head = await client.head("/things")
    got = await client.get("/things")

    assert head.status_code == 200 and head.headers["x-things"] == "counted"
    assert head.content == b""
    assert got.json() == {"what": "things"} and "x-things" not in got.headers
