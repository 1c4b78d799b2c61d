from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import StateDep
from app.api.schemas import Health
from app.db.migrate import is_current

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="The database is reachable and its schema is current",
)
def readyz(st: StateDep) -> object:
    try:
        with st.db.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if not is_current(st.db.read_engine):
            return JSONResponse(
                {"status": "unavailable", "detail": "database migrations are not current; run `backprop migrate`"},
                status_code=503,
            )
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "detail": f"database unreachable: {type(exc).__name__}"}, status_code=503
        )
    return {"status": "ok"}
