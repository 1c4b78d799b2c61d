"""Request dependencies: the process's services (from app.state), a database session, and the caller's owner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.session import Database
from app.services import keys
from app.services.resources import Limits, ModelCache


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


WriteSession = Annotated[Session, Depends(write_session)]
ReadSession = Annotated[Session, Depends(read_session)]


def owner(
    request: Request, st: StateDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> str:
    """The owner of the API key in `Authorization: Bearer <key>`; 401 for a missing, malformed, revoked or
    unknown key (one body for all)."""
    with st.db.read_session() as session:
        key = keys.authenticate(session, authorization)
    request.state.key_prefix = key.prefix
    return key.owner


OwnerDep = Annotated[str, Depends(owner)]
