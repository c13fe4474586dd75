"""/docs (Swagger UI 5) and /redoc work offline: assets in-process, pages in real Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from flock import Flock
from support.browser import chromium_path, render
from support.serve import ServeProcess

MEMORY_STORES = ("--store", "memory://", "--idempotency", "memory://")
# Operations of the demo's API that a rendered page must show (method, path).
EXPECTED = [
    ("post", "/api/v1/artifacts"),
    ("get", "/api/v1/artifacts"),
    ("post", "/api/v1/artifacts/sync"),
    ("post", "/api/v1/artifacts/batch"),
    ("get", "/api/v1/correlations/{correlation_id}"),
    ("get", "/health"),
]


def _local_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


@pytest.mark.parametrize(("page", "bundle"), [("/docs", "SwaggerUIBundle"), ("/redoc", "Redoc")])
async def test_pages_load_every_asset_from_the_server(
    api_client: Any, page: str, bundle: str
) -> None:
    client = await api_client(Flock())

    response = await client.get(page)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "http://" not in response.text and "https://" not in response.text
    urls = _local_urls(response.text)
    assert urls and all(url.startswith("/docs-assets/") for url in urls), urls
    scripts = [url for url in urls if url.endswith(".js")]
    assert scripts, urls
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200 and asset.content, url
    script = (await client.get(scripts[0])).text
    assert bundle in script[:5000] or bundle in script


async def test_swagger_ui_is_version_5(api_client: Any) -> None:
    """Swagger UI 4 cannot read OpenAPI 3.1 ("Unable to render this definition")."""
    client = await api_client(Flock())
    script = (await client.get("/docs-assets/swagger-ui-bundle.js")).text
    versions = re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', script)
    assert versions and int(versions[0]) >= 5, versions
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.1")


def _swagger_operations(dom: str) -> set[tuple[str, str]]:
    """(method, path) of every operation block Swagger UI rendered."""
    blocks = re.findall(r'class="opblock opblock-(\w+)[^"]*".*?data-path="([^"]+)"', dom, re.S)
    return {(method, path) for method, path in blocks}


async def test_docs_page_renders_the_operations_in_chromium(tmp_path: Path) -> None:
    chromium = chromium_path()  # skip (or fail in CI) before starting a server
    async with ServeProcess("--demo", *MEMORY_STORES, cwd=tmp_path) as server:
        dom = render(f"{server.url}/docs", binary=chromium)

    assert "Unable to render this definition" not in dom
    assert 'class="swagger-ui' in dom, dom[:2000]
    assert "OAS 3.1" in dom
    rendered = _swagger_operations(dom)
    missing = [op for op in EXPECTED if op not in rendered]
    assert not missing, (missing, sorted(rendered))


async def test_redoc_page_renders_the_operations_in_chromium(tmp_path: Path) -> None:
    chromium = chromium_path()
    async with ServeProcess("--demo", *MEMORY_STORES, cwd=tmp_path) as server:
        dom = render(f"{server.url}/redoc", binary=chromium)

    assert "Something went wrong" not in dom
    for _, path in EXPECTED:
        assert path in dom, path
    assert len(re.findall(r'id="operation/', dom)) >= len(EXPECTED), dom[:2000]
