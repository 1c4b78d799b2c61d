"""One error format for the whole API: application/problem+json (RFC 9457) with type, title, status, detail, and
`field` / `errors` where the input is at fault. No traceback ever leaves the process."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.middleware import BodyTooLarge
from app.db.session import is_busy_error
from app.errors import AppError

log = logging.getLogger("backprop.api")
PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    field: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = errors
    hdrs = dict(headers or {})
    if retry_after is not None:
        hdrs["Retry-After"] = str(retry_after)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=hdrs)


_BRANCH_TAGS = {
    "float",
    "int",
    "str",
    "bool",
    "list",
    "dict",
    "none",
    "function-after",
    "function-before",
    "function-wrap",
    "constrained-str",
    "constrained-float",
    "constrained-int",
    "nullable",
}


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and (p in _BRANCH_TAGS or "[" in p):
            continue  # the name of a union branch pydantic tried, not a field
        else:
            out += f".{p}" if out else str(p)
    return out or ".".join(str(p) for p in loc)


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    seen, errors = set(), []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            pos = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
            where = f" at character {pos}" if pos is not None else ""
            ctx = (err.get("ctx") or {}).get("error")
            errors.append({"field": None, "message": f"malformed JSON{where}" + (f": {ctx}" if ctx else "")})
            return errors
        field = _loc(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if (field, msg) in seen:
            continue
        seen.add((field, msg))
        errors.append({"field": field, "message": msg})
    return errors[:50]


def _flat_routes(routes: Any) -> Any:
    """Routes, with those of included routers (newer FastAPI keeps them behind a wrapper) flattened in."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat_routes(inner.routes)
        else:
            yield route


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method served at `path`, from the OpenAPI paths (stable across FastAPI's internal route types) and the
    routes that the document leaves out."""
    table = getattr(app.state, "method_table", None)
    if table is None:
        table = []
        for template, item in app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
            methods = {m.upper() for m in item}
            if "GET" in methods:
                methods.add("HEAD")
            table.append((pattern, methods))
        for route in _flat_routes(app.routes):  # those kept out of the OpenAPI document (the dashboard, /metrics)
            if getattr(route, "include_in_schema", True) is False and getattr(route, "methods", None):
                table.append((route.path_regex, set(route.methods)))
        app.state.method_table = table
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        errors = exc.errors or (
            [{"field": exc.field, "message": exc.detail}] if exc.field and exc.status == 422 else None
        )
        return problem(
            exc.status,
            exc.detail,
            title=exc.title,
            type_=exc.type,
            field=exc.field,
            errors=errors,
            retry_after=exc.retry_after,
            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem(422, detail, type_="/problems/invalid-request", field=first["field"], errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
        headers = dict(exc.headers or {})
        if exc.status_code == 400 and isinstance(exc.__cause__ or exc.__context__, BodyTooLarge):
            # A streamed body past its limit, noticed while FastAPI was reading it.
            return problem(413, "the request body is too large (limit max_json_bytes)",
                           type_="/problems/payload-too-large")
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            return problem(422, "malformed JSON: the request body is not valid UTF-8 JSON",
                           type_="/problems/invalid-request", errors=[{"field": None, "message": "malformed JSON"}])
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; list every method the path has.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
            detail = f"method {request.method} is not allowed here; allowed: {headers['Allow']}"
        return problem(exc.status_code, detail, headers=headers)

    @app.exception_handler(DBAPIError)
    async def db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_busy_error(exc):
            return problem(503, "the database is busy; retry shortly", type_="/problems/unavailable", retry_after=1)
        log.exception("database error on %s %s", request.method, request.url.path)
        return problem(503, "the database is unavailable; retry shortly", type_="/problems/unavailable", retry_after=5)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "an internal error occurred; it has been logged")
