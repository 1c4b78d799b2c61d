"""One error format for the whole API: application/problem+json (RFC 9457) with type, title, status, detail, and
`field` / `errors` where the input is at fault. No traceback ever leaves the process.

A status has one `type` wherever its answer comes from (a route, a handler here, or middleware): the one the AppError
tree in app/errors.py gives it, else `about:blank` (400, 405, 500)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.openapi import routes_at
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
_TYPES = {cls.status: cls.type for cls in AppError.__subclasses__()}


class BodyTooLarge(Exception):
    """A streamed request body went past its limit (raised by middleware.BodyLimit while the body is read)."""


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    field: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": _TYPES.get(status, "about:blank"),
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
            where = _json_position(exc.body, pos)
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


def _json_position(doc: Any, pos: int | None) -> str:
    """Where a JSON syntax error is, as " at line L, column C" (both from 1) when the document is at hand."""
    if pos is None:
        return ""
    if not isinstance(doc, str):
        return f" at character {pos}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)
    return f" at line {line}, column {column}"


def unparsable_body(cause: BaseException | None) -> str:
    """Why a JSON body that is not a syntax error could not be parsed (FastAPI answers all of them with a bare 400
    "There was an error parsing the body", the parser's exception as its cause)."""
    if isinstance(cause, RecursionError):
        return "JSON nested too deeply: the body's arrays and objects nest deeper than the parser allows"
    if isinstance(cause, UnicodeDecodeError):
        return f"malformed JSON: the request body is not valid UTF-8 (byte {cause.start})"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        # Python refuses to convert longer integer literals (CVE-2020-10735); there is no subclass to catch.
        return f"a number in the body is too large (more than {sys.get_int_max_str_digits()} digits)"
    return "malformed JSON: the request body could not be parsed"


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method served at `path`, HEAD wherever GET is (middleware.HeadAsGet answers it)."""
    methods = {m for shape in routes_at(app, path) for m in shape.methods}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def app_error_response(exc: AppError) -> JSONResponse:
    errors = exc.errors or ([{"field": exc.field, "message": exc.detail}] if exc.field and exc.status == 422 else None)
    return problem(
        exc.status,
        exc.detail,
        title=exc.title,
        field=exc.field,
        errors=errors,
        retry_after=exc.retry_after,
        headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None,
    )


def database_error_response(exc: DBAPIError, *, method: str, path: str) -> JSONResponse:
    if is_busy_error(exc):
        return problem(503, "the database is busy; retry shortly", retry_after=1)
    log.error("database error on %s %s", method, path, exc_info=exc)
    return problem(503, "the database is unavailable; retry shortly", retry_after=5)


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return app_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem(422, detail, field=first["field"], errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
        headers = dict(exc.headers or {})
        cause = exc.__cause__ or exc.__context__
        if exc.status_code == 400 and isinstance(cause, BodyTooLarge):
            # A streamed body past its limit, noticed while FastAPI was reading it.
            return problem(413, "the request body is too large (limit max_json_bytes)")
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            message = unparsable_body(cause)
            return problem(422, message, errors=[{"field": None, "message": message}])
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; list every method the path has.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
            detail = f"method {request.method} is not allowed here; allowed: {headers['Allow']}"
        return problem(exc.status_code, detail, headers=headers)

    @app.exception_handler(DBAPIError)
    async def db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        return database_error_response(exc, method=request.method, path=request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "an internal error occurred; it has been logged")
