"""API docs: Swagger UI 5 at /docs and ReDoc at /redoc, their assets served from the
installed `fastapi-offline` package (so both work with no internet access), and an OpenAPI
document whose error responses are problem documents, with the registered types, headers
and security `flock.api.openapi` adds."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from flock.api.models import ErrorResponse
from flock.api.openapi import enrich_openapi
from flock.registry import type_registry

ASSETS_PATH = "/docs-assets"
# fastapi-offline keeps the Swagger UI 5 and ReDoc 2 bundles in its package's `static/`.
ASSETS_DIR = Path(str(files("fastapi_offline").joinpath("static")))
_PROBLEM_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def install_docs(app: FastAPI, title: str) -> None:
    """Mount the docs assets and the /docs and /redoc pages, and the OpenAPI builder."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url or '/openapi.json'}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        assets = f"{request.scope.get('root_path', '')}{ASSETS_PATH}"
        return get_swagger_ui_html(
            openapi_url=openapi_url(request),
            title=f"{title} - API docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            swagger_ui_parameters={"defaultModelsExpandDepth": 0},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        assets = f"{request.scope.get('root_path', '')}{ASSETS_PATH}"
        return get_redoc_html(
            openapi_url=openapi_url(request),
            title=f"{title} - API reference",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = problem_json_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
            service = getattr(app.state, "flock_service", None)
            keys = service is not None and service.keyring is not None
            app.openapi_schema = enrich_openapi(schema, type_registry, api_keys=keys)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_json_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every 4xx/5xx response an `application/problem+json` ErrorResponse.

    FastAPI documents its own validation error shape for 422 and `application/json` for
    declared error models; neither is what the service sends.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ErrorResponse.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for defs_name, defs_schema in components["ErrorResponse"].pop("$defs", {}).items():
        components.setdefault(defs_name, defs_schema)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                if status[:1] in ("4", "5"):
                    response["content"] = {"application/problem+json": {"schema": _PROBLEM_REF}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
