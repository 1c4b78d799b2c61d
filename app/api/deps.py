"""Request dependencies: the process's services (from app.state), a database session, and the caller's owner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db.models import ApiKey
from app.db.session import Database, is_busy_error
from app.errors import UnsupportedMedia
from app.services import keys
from app.services.resources import Limits, ModelCache

T = TypeVar("T")

# Every list is paginated the same way.
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page (max 100).")]
After = Annotated[
    str | None,
    Query(max_length=64, description="Id of the last item of the previous page (another value is a 422)."),
]


@dataclass
class AppState:
    settings: Settings
    db: Database
    models: ModelCache
    limits: Limits


async def state(request: Request) -> AppState:
    return request.app.state.backprop  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(state)]


def write_session(st: StateDep) -> Iterator[Session]:
    """One write transaction per request, committed when the route returns without raising."""
    with st.db.session() as session:
        yield session


def read_session(st: StateDep) -> Iterator[Session]:
    with st.db.read_session() as session:
        yield session


def committed(session: Session, value: T) -> T:
    """Commit now, inside the route: the write lock is released before FastAPI validates and serializes the
    response (which may wait for a worker thread), and a 2xx means the change is durable."""
    session.commit()
    return value


# scope="function": the transaction ends before the response is sent, so a 201/202 means it is durable.
WriteSession = Annotated[Session, Depends(write_session, scope="function")]
ReadSession = Annotated[Session, Depends(read_session, scope="function")]


def authenticate(st: AppState, authorization: str | None) -> ApiKey:
    """The active key in `Authorization: Bearer <key>`; Unauthorized (401, one body for all) for a missing,
    malformed, revoked or unknown one. Records the key's use (at most once a minute, best effort)."""
    with st.db.read_session() as session:
        key = keys.authenticate(session, authorization)
    if keys.needs_touch(key):
        try:
            with st.db.session() as session:
                keys.touch(session, key)
        except DBAPIError as exc:   # best effort: a busy database must not fail a read over a usage stamp
            if not is_busy_error(exc):
                raise
    return key


async def owner(request: Request, st: StateDep) -> str:
    """The owner of the request's API key. middleware.Authenticate checks the key of every /v1 request before its
    body is read and leaves the owner in the request state; a route outside /v1 that needs an owner checks it here.
    Async, so that the common case (a read of the request state) costs no hop to the thread pool (~1 ms here)."""
    found = getattr(request.state, "owner", None)
    if isinstance(found, str):
        return found
    key = await run_in_threadpool(authenticate, st, request.headers.get("authorization"))
    request.state.owner, request.state.key_prefix = key.owner, key.prefix
    return key.owner


OwnerDep = Annotated[str, Depends(owner)]


async def require_json(request: Request) -> None:
    """Routes with a JSON body answer 415 to any other declared content type (a missing one is read as JSON)."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return
    media = ctype.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(f"unsupported content type {media!r}: this route takes application/json")


JsonBody = Depends(require_json)
