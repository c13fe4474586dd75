"""API docs: Swagger UI served from the installed `swagger-ui-bundle` package (so /docs
works offline), and an OpenAPI document whose error responses are problem documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from flock.api.models import ErrorResponse

ASSETS_PATH = "/docs-assets"
_PROBLEM_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def install_docs(app: FastAPI, title: str) -> None:
    app.mount(
        ASSETS_PATH,
        StaticFiles(directory=Path(swagger_ui_bundle.swagger_ui_path)),
        name="docs-assets",
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_json_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
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
