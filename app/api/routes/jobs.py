from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import After, JsonBody, Limit, OwnerDep, ReadSession, StateDep, WriteSession, committed
from app.api.schemas import History, JobCreate, JobRead, Page
from app.db import repositories as repo
from app.db.models import Job
from app.domain import TERMINAL, JobStatus
from app.errors import InvalidRequest
from app.services import resources as svc

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
TERMINAL_NAMES = frozenset(str(s) for s in TERMINAL)
IdemKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=(
            "Optional, 1-255 visible ASCII characters. Retrying with the same key and body returns the original job "
            "(with `Idempotent-Replayed: true`); the same key with another body is a 422."
        ),
    ),
]


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not (1 <= len(key) <= 255 and all(33 <= ord(c) <= 126 for c in key)):
        raise InvalidRequest("Idempotency-Key must be 1-255 visible ASCII characters", field="Idempotency-Key")


@router.post(
    "",
    dependencies=[JsonBody],
    status_code=202,
    response_model=JobRead,
    summary="Launch a training job",
    description="Validated up front against the network and dataset (shapes, classes, limits), then "
    "queued for a worker. Poll GET /v1/jobs/{id} or its history.",
)
def create_job(
    body: JobCreate,
    owner: OwnerDep,
    session: WriteSession,
    st: StateDep,
    response: Response,
    idempotency_key: IdemKey = None,
) -> dict[str, object]:
    check_idempotency_key(idempotency_key)
    job, replayed = svc.submit_job(
        session, owner=owner, body=body.model_dump(), limits=st.limits, idempotency_key=idempotency_key
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return committed(session, svc.job_view(session, job))


@router.get("", response_model=Page[JobRead], summary="List jobs, newest first")
def list_jobs(
    owner: OwnerDep,
    session: ReadSession,
    limit: Limit = 20,
    after: After = None,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="Only jobs in this status."),
    ] = None,
) -> dict[str, object]:
    extra = [Job.status == JobStatus(status)] if status else []
    rows, more = repo.list_owned(session, Job, owner, limit=limit, after=after, extra=extra)
    return {"data": [svc.job_view(session, r) for r in rows], "has_more": more}


@router.get("/{job_id}", response_model=JobRead, summary="Get a job: status, progress, latest metrics")
def get_job(job_id: str, owner: OwnerDep, session: ReadSession) -> dict[str, object]:
    return svc.job_view(session, svc.get_job(session, owner=owner, job_id=job_id))


@router.get("/{job_id}/history", response_model=History, summary="Per-epoch records after epoch `after`")
def get_history(
    job_id: str,
    owner: OwnerDep,
    session: ReadSession,
    after: Annotated[int, Query(ge=0, le=10**9, description="Only epochs after this one.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> dict[str, object]:
    job = svc.get_job(session, owner=owner, job_id=job_id)
    return {
        "job_id": job.id,
        "data": [svc.epoch_view(r) for r in repo.history(session, job.id, after=after, limit=limit)],
    }


EVENTS_PAGE = 500
EVENT_STREAM_DOC = """Server-Sent Events, one per status change and per epoch, read from the database (any API
process serves them). Each event has `id:` (the job's event sequence number, 1, 2, ...), `event:` (`status` or
`epoch`) and `data:` (one JSON object). Epoch events carry the epoch record; the terminal status event carries the
final `metrics`, `model_id` and `error`, and the stream ends right after it. Resume after a dropped connection with
`Last-Event-ID` (or `?after=`): only later events are sent, none twice. A `: keepalive` comment is sent every 15 s
of silence."""


def format_event(payload: dict[str, Any]) -> str:
    return f"id: {payload['seq']}\nevent: {payload['type']}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def resume_point(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after or 0
    text = last_event_id.strip()
    if not text.isdigit() or len(text) > 12:
        raise InvalidRequest("Last-Event-ID must be a non-negative integer event id", field="Last-Event-ID")
    return int(text)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Follow a job live: Server-Sent Events for every status change and epoch",
    description=EVENT_STREAM_DOC,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'id: 7\nevent: epoch\ndata: {"job_id":"...","seq":7,"type":"epoch","epoch":6,'
                    '"loss":0.41,"val_loss":0.44,"metrics":{"accuracy":0.9},"seconds":0.02,"at":"..."}\n\n'
                }
            },
        }
    },
)
async def job_events(
    job_id: str,
    owner: OwnerDep,
    st: StateDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", description="Resume after this id.")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=10**9, description="Same as Last-Event-ID, for clients that cannot set headers.")
    ] = None,
) -> StreamingResponse:
    cursor = resume_point(last_event_id, after)

    def read(since: int) -> tuple[list[dict[str, Any]], bool]:
        with st.db.read_session() as session:
            svc.get_job(session, owner=owner, job_id=job_id)
            return svc.job_events(session, job_id=job_id, after=since, limit=EVENTS_PAGE)

    first = await run_in_threadpool(read, cursor)   # a 404 (or a bad database) answers before any byte streams
    poll, keepalive = st.settings.events_poll_seconds, st.settings.events_keepalive_seconds

    async def stream(batch: tuple[list[dict[str, Any]], bool], since: int) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        quiet_since = time.monotonic()
        while True:
            events, terminal = batch
            for payload in events:
                since = payload["seq"]
                yield format_event(payload)
                if payload["type"] == "status" and payload["status"] in TERMINAL_NAMES:
                    return
            if events:
                quiet_since = time.monotonic()
                if len(events) == EVENTS_PAGE:
                    batch = await run_in_threadpool(read, since)
                    continue
            elif terminal:
                return          # resumed after the terminal event: nothing more will come
            if time.monotonic() - quiet_since >= keepalive:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(poll)
            batch = await run_in_threadpool(read, since)

    return StreamingResponse(
        stream(first, cursor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    status_code=202,
    summary="Cancel a job: a queued one at once, a running one at its next batch boundary",
    responses={409: {"description": "The job already finished."}},
)
def cancel_job(job_id: str, owner: OwnerDep, session: WriteSession) -> dict[str, object]:
    return committed(session, svc.job_view(session, svc.cancel_job(session, owner=owner, job_id=job_id)))
