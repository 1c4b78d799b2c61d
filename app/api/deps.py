"""Request dependencies: the process's services (from app.state), a database session, and the caller's owner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Query, Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.session import Database, is_busy_error
from app.errors import UnsupportedMedia
from app.services import keys
from app.services.resources import Limits, ModelCache

T = TypeVar("T")

# Every list is paginated the same way.
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page (max 100).")]
After = Annotated[str | None, Query(max_length=64, description="Id of the last item of the previous page.")]


@dataclass
class AppState:
    settings: Settings
    db: Database
    models: ModelCache
    limits: Limits


def state(request: Request) -> AppState:
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


def owner(
    request: Request, st: StateDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> str:
    """The owner of the API key in `Authorization: Bearer <key>`; 401 for a missing, malformed, revoked or
    unknown key (one body for all)."""
    with st.db.read_session() as session:
        key = keys.authenticate(session, authorization)
    if keys.needs_touch(key):
        try:
            with st.db.session() as session:
                keys.touch(session, key)
        except DBAPIError as exc:   # best effort: a busy database must not fail a read over a usage stamp
            if not is_busy_error(exc):
                raise
    request.state.key_prefix = key.prefix
    return key.owner


OwnerDep = Annotated[str, Depends(owner)]


def require_json(request: Request) -> None:
    """Routes with a JSON body answer 415 to any other declared content type (a missing one is read as JSON)."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return
    media = ctype.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(f"unsupported content type {media!r}: this route takes application/json")


JsonBody = Depends(require_json)
