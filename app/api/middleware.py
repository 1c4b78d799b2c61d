"""ASGI middleware, outermost first (main.py adds them; metrics.RequestMetrics wraps them all):

- `AccessLog`: one structured log line per request (method, path, status, duration, key prefix; never the key).
- `HeadAsGet`: HEAD on any GET route, answered as GET without the body.
- `Authenticate`: the API key of every request under /v1, checked before anything reads the body, so an
  unauthenticated caller gets the same 401 whatever it sends and learns nothing from validation.
- `BodyLimit`: request body limits (413 by Content-Length and by counting streamed bytes).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import AppState, authenticate
from app.api.errors import BodyTooLarge, app_error_response, database_error_response, problem
from app.api.openapi import routes_at
from app.errors import AppError

log = logging.getLogger("backprop.access")


def route_path(scope: Scope) -> str:
    """The path the router matches: the request's, without the root path the app is served under (as Starlette)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


class Authenticate:
    """Every request whose path is `prefix` or under it needs a valid API key: a missing, malformed, revoked or
    unknown one is answered 401 here, before the body is read, parsed or validated and before routing (so an
    unknown path under the prefix is a 401 too). The key's owner and prefix go to the request state, where
    deps.owner and AccessLog read them. Paths outside the prefix (health, metrics, docs, the dashboard) are public."""

    def __init__(self, app: ASGIApp, *, prefix: str = "/v1") -> None:
        self.app, self.prefix = app, prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        st: AppState = scope["app"].state.backprop
        response: Response
        try:
            key = await run_in_threadpool(authenticate, st, Headers(scope=scope).get("authorization"))
        except AppError as exc:
            response = app_error_response(exc)
        except DBAPIError as exc:
            response = database_error_response(exc, method=scope["method"], path=scope["path"])
        else:
            state = scope.setdefault("state", {})
            state["owner"], state["key_prefix"] = key.owner, key.prefix
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


class HeadAsGet:
    """HEAD on a path that a GET route serves (and no route declares HEAD for) runs that route as a GET and answers
    with its status and headers, Content-Length included, and no body (RFC 9110 §9.3.2). Every other HEAD answer
    (a 404, a 405, a route that declares HEAD itself) loses its body too, whatever the server does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        app = scope.get("app")
        shapes = routes_at(app, route_path(scope)) if isinstance(app, FastAPI) else []
        methods = {m for shape in shapes for m in shape.methods}
        as_get = "GET" in methods and "HEAD" not in methods
        ended = False

        async def head_send(message: Message) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
            elif not ended:
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def head_receive() -> Message:
            # Once the answer is complete the request is over, as a server would tell a streaming route.
            if ended:
                return {"type": "http.disconnect"}
            return await receive()

        if as_get:
            scope["method"] = "GET"   # in place, so that the outer middleware see the route the router picks
        try:
            await self.app(scope, head_receive, head_send)
        finally:
            scope["method"] = "HEAD"


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_upload_bytes: int) -> None:
        self.app, self.max_json, self.max_upload = app, max_json_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        limit = self.max_upload if multipart else self.max_json
        name = "max_upload_bytes" if multipart else "max_json_bytes"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_413(scope, receive, send, limit, name)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_413(scope, receive, send, limit, name)
        except Exception as exc:  # a multipart parser wraps our exception; unwrap it
            if isinstance(exc.__cause__ or exc.__context__, BodyTooLarge) and not started:
                await _send_413(scope, receive, send, limit, name)
            else:
                raise


async def _send_413(scope: Scope, receive: Receive, send: Send, limit: int, name: str) -> None:
    response = problem(413, f"the request body exceeds {limit} bytes (limit {name})", headers={"Connection": "close"})
    await response(scope, receive, send)


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round((time.perf_counter() - t0) * 1000, 2),
                        "key": state.get("key_prefix"),
                    }
                )
            )
