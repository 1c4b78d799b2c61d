from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from app.api.deps import After, JsonBody, Limit, OwnerDep, ReadSession, StateDep, WriteSession, committed
from app.api.schemas import History, JobCreate, JobRead, Page
from app.db import repositories as repo
from app.db.models import Job
from app.domain import JobStatus
from app.errors import InvalidRequest
from app.services import resources as svc

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
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


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    status_code=202,
    summary="Cancel a job: a queued one at once, a running one at its next batch boundary",
    responses={409: {"description": "The job already finished."}},
)
def cancel_job(job_id: str, owner: OwnerDep, session: WriteSession) -> dict[str, object]:
    return committed(session, svc.job_view(session, svc.cancel_job(session, owner=owner, job_id=job_id)))
