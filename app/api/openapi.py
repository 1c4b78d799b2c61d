"""The OpenAPI document, completed: every error answer each route can give, as application/problem+json, and the
JSON schema of the dataset upload (whose route reads its body itself to accept JSON or multipart). Also the table of
every route's path template and methods (`routes_at`), for the answers given without FastAPI's router: the Allow
header of a 405, HEAD on GET routes, and the route label of a request refused before routing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from app.api.schemas import DatasetCreate


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = Field(examples=["/problems/invalid-request"])
    title: str = Field(examples=["Unprocessable Content"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["layers[0].units: Input should be greater than or equal to 1"])
    field: str | None = Field(None, description="Where the input is at fault, as a path like layers[0].units.")
    errors: list[dict[str, Any]] | None = Field(None, description="Every problem found: [{field, message}].")


_DESCRIPTIONS = {
    "401": "Missing, malformed, revoked or unknown API key.",
    "404": "No such resource for this key's owner.",
    "405": "Method not allowed (see the Allow header).",
    "409": "Conflict with the resource's state.",
    "413": "Request body over its limit.",
    "415": "Unsupported content type.",
    "422": "Invalid input; `field`/`errors` say where.",
    "429": "Quota reached; see Retry-After.",
    "503": "Database busy or unavailable; see Retry-After.",
}


def _problem_response(code: str) -> dict[str, Any]:
    return {"description": _DESCRIPTIONS[code],
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                          tags=app.openapi_tags)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in (Problem, DatasetCreate):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        doc.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: bp_live_..."}}
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                responses = op.setdefault("responses", {})
                codes = ["405", "422", "503"]
                if path.startswith("/v1/"):
                    op["security"] = [{"bearer": []}]
                    codes += ["401"]
                    if "{" in path or method == "post":
                        codes += ["404"]
                    if method == "post":
                        codes += ["413", "415"]
                    if path.endswith("/cancel"):
                        codes += ["409"]
                    if method == "post" and path in ("/v1/jobs", "/v1/datasets"):
                        codes += ["409", "429"]
                for code in codes:
                    responses[code] = _problem_response(code)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass(frozen=True)
class RouteShape:
    """A route as a client sees it: its path template, the regex of the paths it serves, and its methods."""

    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str]


def _flat_routes(routes: Any) -> Iterator[Any]:
    """Routes, with those of included routers (newer FastAPI keeps them behind a wrapper) flattened in."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat_routes(inner.routes)
        else:
            yield route


def route_shapes(app: FastAPI) -> list[RouteShape]:
    """Every route: those of the OpenAPI paths (stable across FastAPI's internal route types), then those the
    document leaves out (the dashboard, /metrics). Built once per app, on first use."""
    shapes: list[RouteShape] | None = getattr(app.state, "route_shapes", None)
    if shapes is None:
        shapes = []
        for template, item in app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
            shapes.append(RouteShape(template, pattern, frozenset(m.upper() for m in item)))
        for route in _flat_routes(app.routes):
            if getattr(route, "include_in_schema", True) is False and getattr(route, "methods", None):
                template = getattr(route, "path_format", None) or route.path
                shapes.append(RouteShape(template, route.path_regex, frozenset(route.methods)))
        app.state.route_shapes = shapes
    return shapes


def routes_at(app: FastAPI, path: str, method: str | None = None) -> list[RouteShape]:
    """The routes serving `path` (as routed: without the root path), those that take `method` first."""
    found = [shape for shape in route_shapes(app) if shape.pattern.match(path)]
    return sorted(found, key=lambda shape: method not in shape.methods) if method else found
