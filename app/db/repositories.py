"""All SQL of the service. Functions take a Session and flush, never commit: the caller owns the transaction.

Job state changes are guarded UPDATEs (`WHERE status IN (...)`); the worker's writes are also fenced by its lease
token, so a worker that lost its lease changes nothing (DESIGN.md §2-§4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import (
    ApiKey,
    Checkpoint,
    Dataset,
    EpochMetric,
    IdempotencyKey,
    Job,
    JobEvent,
    Model,
    Network,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSecret,
    Worker,
)
from app.db.notify import notify_queue
from app.domain import TERMINAL, JobEventType, JobStatus
from app.errors import InvalidRequest

T = TypeVar("T", Network, Dataset, Job, Model)


# --- generic owned resources ------------------------------------------------------------------------------------


def get_owned(session: Session, cls: type[T], owner: str, id_: str) -> T | None:
    """The row with this id if it belongs to `owner` and is not deleted; None otherwise (the same either way)."""
    conds: list[ColumnElement[bool]] = [cls.id == id_, cls.owner == owner]
    if hasattr(cls, "deleted_at"):
        conds.append(cls.deleted_at.is_(None))  # type: ignore[union-attr]
    return session.execute(select(cls).where(*conds)).scalar_one_or_none()


def list_owned(
    session: Session,
    cls: type[T],
    owner: str,
    *,
    limit: int,
    after: str | None,
    extra: Sequence[ColumnElement[bool]] = (),
) -> tuple[list[T], bool]:
    """Newest first, keyset-paginated on (created_at, id): `after` is the id of the last item of the previous page.

    Any other cursor (empty, unknown, or another owner's id: the same answer) is InvalidRequest naming `after`; an
    empty page would read as the end of the list. A cursor deleted since its page was read still works."""
    conds: list[ColumnElement[bool]] = [cls.owner == owner, *extra]
    if hasattr(cls, "deleted_at"):
        conds.append(cls.deleted_at.is_(None))  # type: ignore[union-attr]
    if after is not None:
        cursor = session.execute(
            select(cls.created_at, cls.id).where(cls.id == after, cls.owner == owner)
        ).one_or_none()
        if cursor is None:
            raise InvalidRequest(
                f"unknown cursor {after!r}: `after` takes the id of the last item of a page of this list",
                field="after",
            )
        conds.append(or_(cls.created_at < cursor[0], and_(cls.created_at == cursor[0], cls.id < cursor[1])))
    rows = list(
        session.execute(
            select(cls).where(*conds).order_by(cls.created_at.desc(), cls.id.desc()).limit(limit + 1)
        ).scalars()
    )
    return rows[:limit], len(rows) > limit


def soft_delete(session: Session, cls: type[Network] | type[Dataset] | type[Model], owner: str, id_: str) -> bool:
    result = session.execute(
        update(cls).where(cls.id == id_, cls.owner == owner, cls.deleted_at.is_(None)).values(deleted_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def model_for_job(session: Session, job_id: str) -> Model | None:
    return session.execute(select(Model).where(Model.job_id == job_id)).scalar_one_or_none()


# --- api keys ---------------------------------------------------------------------------------------------------


def key_by_prefix(session: Session, prefix: str) -> ApiKey | None:
    return session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()


def lock_owner(session: Session, owner: str) -> None:
    """Serialize an owner's quota checks across API processes: lock its key rows until the transaction ends.

    (PostgreSQL row locks; SQLite's BEGIN IMMEDIATE already serializes every write transaction.)"""
    session.execute(select(ApiKey.id).where(ApiKey.owner == owner).with_for_update()).all()


def count_keys(session: Session, *, active_only: bool = True) -> int:
    q = select(func.count()).select_from(ApiKey)
    if active_only:
        q = q.where(ApiKey.revoked_at.is_(None))
    return int(session.execute(q).scalar_one())


# --- jobs: API side ---------------------------------------------------------------------------------------------


def add_event(
    session: Session,
    job_id: str,
    type_: JobEventType,
    *,
    status: JobStatus | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    seq = session.execute(
        select(func.coalesce(func.max(JobEvent.seq), 0)).where(JobEvent.job_id == job_id)
    ).scalar_one()
    session.add(JobEvent(job_id=job_id, seq=int(seq) + 1, type=type_, status=status, data=data or {}))
    session.flush()
    if status in TERMINAL:
        enqueue_webhook(session, job_id, status)


def status_events(session: Session, job_id: str) -> list[JobEvent]:
    return list(
        session.execute(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.type == JobEventType.STATUS)
            .order_by(JobEvent.seq)
        ).scalars()
    )


def events_after(session: Session, job_id: str, *, after: int, limit: int) -> list[JobEvent]:
    """A job's events with seq > `after`, in order (seqs are gap-free: each is max + 1 under the job's PK)."""
    return list(
        session.execute(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit)
        ).scalars()
    )


def history(session: Session, job_id: str, *, after: int = 0, limit: int = 10_000) -> list[EpochMetric]:
    return list(
        session.execute(
            select(EpochMetric)
            .where(EpochMetric.job_id == job_id, EpochMetric.epoch > after)
            .order_by(EpochMetric.epoch)
            .limit(limit)
        ).scalars()
    )


def count_active_jobs(session: Session, owner: str) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        ).scalar_one()
    )


def cancel_queued(session: Session, job_id: str, now: datetime) -> bool:
    """queued -> cancelled at once. False if the job was not queued (any more)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested_at=now, finished_at=now, lease_token=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def request_cancel(session: Session, job_id: str, now: datetime) -> bool:
    """Mark a running job for cancellation; its worker stops it at the next batch boundary."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, now))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def find_idempotency(session: Session, owner: str, key: str, resource_type: str) -> IdempotencyKey | None:
    return session.get(IdempotencyKey, (owner, key, resource_type))


# --- jobs: worker side ------------------------------------------------------------------------------------------


def claim_job(session: Session, *, worker_id: str, lease_seconds: float, now: datetime) -> tuple[str, str, int] | None:
    """Atomically move the oldest runnable queued job to running under a fresh lease: (job_id, token, attempt)."""
    token = new_id()
    pick = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.run_after <= now)
        .order_by(Job.priority, Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = session.execute(
        update(Job)
        .where(Job.id == pick, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker_id=worker_id,
            lease_token=token,
            heartbeat_at=now,
            progress_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
        )
        .returning(Job.id, Job.attempt)
    ).one_or_none()
    if row is None:
        return None
    add_event(
        session,
        row[0],
        JobEventType.STATUS,
        status=JobStatus.RUNNING,
        data={"attempt": int(row[1]), "worker_id": worker_id},
    )
    return str(row[0]), token, int(row[1])


def fence(
    session: Session,
    job_id: str,
    token: str,
    *,
    now: datetime,
    lease_seconds: float,
    values: dict[str, Any] | None = None,
) -> bool:
    """Renew the lease and apply `values` iff this token still owns the running job. Every worker write starts here."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds), **(values or {}))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_job(
    session: Session,
    job_id: str,
    token: str,
    status: JobStatus,
    *,
    now: datetime,
    values: dict[str, Any] | None = None,
    reason: str | None = None,
) -> bool:
    """running -> a terminal status (or back to queued), fenced by the token."""
    fields: dict[str, Any] = {"status": status, "lease_token": None, "lease_expires_at": None, **(values or {})}
    if status in TERMINAL:
        fields["finished_at"] = now
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING).values(**fields)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, JobEventType.STATUS, status=status, data={"reason": reason} if reason else {})
    return True


def cancel_requested(session: Session, job_id: str) -> bool:
    return session.execute(select(Job.cancel_requested_at).where(Job.id == job_id)).scalar_one_or_none() is not None


def add_epochs(session: Session, job_id: str, records: Sequence[dict[str, Any]]) -> None:
    """Insert epoch records (and their events) unless already recorded: a resumed run never duplicates one."""
    if not records:
        return
    epochs = [int(r["epoch"]) for r in records]
    have = set(session.execute(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id,
                                                               EpochMetric.epoch.in_(epochs))).scalars())
    new = [r for r in records if int(r["epoch"]) not in have]
    if not new:
        return
    now = utcnow()
    session.execute(insert(EpochMetric), [
        {"job_id": job_id, "epoch": int(r["epoch"]), "loss": r["loss"], "val_loss": r.get("val_loss"),
         "metrics": r.get("metrics") or {}, "seconds": r.get("seconds", 0.0), "created_at": now} for r in new])
    seq = int(session.execute(select(func.coalesce(func.max(JobEvent.seq), 0))
                              .where(JobEvent.job_id == job_id)).scalar_one())
    session.execute(insert(JobEvent), [
        {"job_id": job_id, "seq": seq + i + 1, "type": JobEventType.EPOCH, "status": None, "data": r,
         "created_at": now} for i, r in enumerate(new)])


def latest_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.execute(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.seq.desc())).scalars()
    )


def add_checkpoint(session: Session, ck: Checkpoint, *, keep: int = 2) -> list[str]:
    """Publish a checkpoint row; drop all but the newest `keep`. Returns the blob ids no longer referenced."""
    session.add(ck)
    session.flush()
    old = latest_checkpoints(session, ck.job_id)[keep:]
    for row in old:
        session.delete(row)
    session.flush()
    return [row.blob_id for row in old]


def delete_checkpoints(session: Session, job_id: str) -> list[str]:
    rows = latest_checkpoints(session, job_id)
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    return [row.blob_id for row in rows]


def reap_expired(session: Session, *, now: datetime) -> list[tuple[str, JobStatus]]:
    """Running jobs whose lease expired: cancelled if cancel was asked, failed (worker_lost) past max_attempts,
    else back to the queue with backoff. Returns (job_id, new status)."""
    rows = list(
        session.execute(
            select(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    out = []
    for job in rows:
        if job.cancel_requested_at is not None:
            new, values = JobStatus.CANCELLED, {"finished_at": now}
        elif job.attempt >= job.max_attempts:
            new, values = (
                JobStatus.FAILED,
                {
                    "finished_at": now,
                    "error_code": "worker_lost",
                    "error": f"the worker running this job stopped responding {job.attempt} times "
                    f"(max_attempts {job.max_attempts}); it was given up",
                },
            )
        else:
            new, values = JobStatus.QUEUED, {"run_after": now + timedelta(seconds=min(60, 2 ** (job.attempt - 1)))}
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.lease_token == job.lease_token)
            .values(status=new, lease_token=None, lease_expires_at=None, rescue_count=Job.rescue_count + 1, **values)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            add_event(session, job.id, JobEventType.STATUS, status=new, data={"reason": "lease expired"})
            out.append((job.id, new))
    if any(status == JobStatus.QUEUED for _, status in out):
        notify_queue(session)
    return out


def requeue(
    session: Session,
    job_id: str,
    token: str,
    *,
    now: datetime,
    count_attempt: bool,
    reason: str,
    max_attempts_reached_error: str | None = None,
) -> JobStatus | None:
    """Give a running job back (graceful release: attempt not counted) or fail it past max_attempts."""
    job = session.execute(
        select(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)
    ).scalar_one_or_none()
    if job is None:
        return None
    if job.cancel_requested_at is not None:
        finish_job(session, job_id, token, JobStatus.CANCELLED, now=now, reason="cancel requested")
        return JobStatus.CANCELLED
    if count_attempt and job.attempt >= job.max_attempts:
        finish_job(
            session,
            job_id,
            token,
            JobStatus.FAILED,
            now=now,
            reason=reason,
            values={
                "error_code": "worker_lost",
                "error": max_attempts_reached_error
                or f"the job's training process died {job.attempt} times (max_attempts {job.max_attempts}): {reason}",
            },
        )
        return JobStatus.FAILED
    values: dict[str, Any] = {"worker_id": None}
    if count_attempt:
        values["run_after"] = now + timedelta(seconds=min(60, 2 ** (job.attempt - 1)))
        values["rescue_count"] = Job.rescue_count + 1
    else:
        values["attempt"] = Job.attempt - 1
        values["run_after"] = now
    finish_job(session, job_id, token, JobStatus.QUEUED, now=now, values=values, reason=reason)
    notify_queue(session)
    return JobStatus.QUEUED


def now_db(session: Session) -> datetime:
    """The clock leases are measured by: the database's on PostgreSQL, this host's on SQLite (one machine)."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(select(func.now())).scalar_one()
        return value if isinstance(value, datetime) else utcnow()
    return utcnow()


# --- webhooks and the worker registry ---------------------------------------------------------------------------


def terminal_summary(job: Any) -> dict[str, Any]:
    """What a finished job ended with (a Job or a row with its columns): final metrics, model id and error."""
    last = job.last_metrics or {}
    metrics = {"loss": last.get("loss"), "val_loss": last.get("val_loss"), **(last.get("metrics") or {})}
    return {
        "metrics": metrics if last else None,
        "model_id": job.model_id,
        "error": {"code": job.error_code, "message": job.error or ""} if job.error_code else None,
    }


def enqueue_webhook(session: Session, job_id: str, status: JobStatus) -> None:
    """Outbox: in the transaction that makes a job terminal, record the event to POST to its webhook_url (if any).
    Column reads, not the ORM object: the identity map may hold the job as it was before this transaction's UPDATE."""
    row = session.execute(
        select(
            Job.owner, Job.webhook_url, Job.last_metrics, Job.model_id, Job.error_code, Job.error, Job.epoch,
            Job.epochs,
        ).where(Job.id == job_id)
    ).one_or_none()
    if row is None or not row.webhook_url:
        return
    now = now_db(session)
    delivery_id = new_id()
    payload = {
        "id": delivery_id,
        "type": f"job.{status}",
        "created_at": now.isoformat(),
        "job_id": job_id,
        "status": str(status),
        **terminal_summary(row),
        "epoch": row.epoch,
        "epochs": row.epochs,
    }
    session.add(
        WebhookDelivery(
            id=delivery_id, job_id=job_id, owner=row.owner, event=payload["type"], url=row.webhook_url,
            payload=payload, next_attempt_at=now,
        )
    )
    session.flush()


def claim_delivery(session: Session, *, now: datetime, lease_seconds: float) -> WebhookDelivery | None:
    """Take the most overdue pending delivery: count the attempt and push next_attempt_at past its timeout (the
    lease), so no other sender takes it meanwhile and a sender that dies leaves it due again."""
    pick = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    delivery_id = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == pick, WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + timedelta(seconds=lease_seconds))
        .returning(WebhookDelivery.id)
    ).scalar_one_or_none()
    if delivery_id is None:
        return None
    return session.execute(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).execution_options(populate_existing=True)
    ).scalar_one()


def record_attempt(
    session: Session,
    delivery: WebhookDelivery,
    *,
    worker_id: str,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    retry_at: datetime | None,
    now: datetime,
) -> str:
    """Log one POST and move the delivery on: delivered (2xx), pending until `retry_at`, or failed (no retry left).
    Returns the delivery's new status."""
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id, attempt=delivery.attempts, worker_id=worker_id, status_code=status_code,
            error=error, duration_ms=duration_ms, created_at=now,
        )
    )
    ok = status_code is not None and 200 <= status_code < 300
    if ok:
        values: dict[str, Any] = {"status": "delivered", "delivered_at": now}
    elif retry_at is None:
        values = {"status": "failed"}
    else:
        values = {"next_attempt_at": retry_at}
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == "pending")
        .values(**values)
    )
    return str(values.get("status", "pending"))


def deliveries_for(session: Session, job_id: str) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    deliveries = list(
        session.execute(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.created_at)
        ).scalars()
    )
    if not deliveries:
        return []
    attempts = session.execute(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_([d.id for d in deliveries]))
        .order_by(WebhookAttempt.attempt)
    ).scalars()
    by_delivery: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    for a in attempts:
        by_delivery[a.delivery_id].append(a)
    return [(d, by_delivery[d.id]) for d in deliveries]


def webhook_secret(session: Session, owner: str, *, create: Callable[[], str]) -> WebhookSecret:
    """The owner's signing secret, made with `create()` on first use (a concurrent first use keeps one)."""
    row = session.get(WebhookSecret, owner)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = WebhookSecret(owner=owner, secret=create())
            session.add(row)
    except IntegrityError:
        row = session.get(WebhookSecret, owner, populate_existing=True)
        assert row is not None
    return row


def rotate_webhook_secret(session: Session, owner: str, secret: str) -> WebhookSecret:
    row = session.get(WebhookSecret, owner)
    if row is None:
        row = WebhookSecret(owner=owner, secret=secret)
        session.add(row)
    else:
        row.secret, row.created_at = secret, now_db(session)
    session.flush()
    return row


def beat_workers(
    session: Session, workers: dict[str, str | None], *, hostname: str, pid: int, now: datetime, started_at: datetime
) -> None:
    """Upsert each supervisor's row with a fresh heartbeat and its current job."""
    for worker_id, job_id in workers.items():
        row = session.get(Worker, worker_id)
        if row is None:
            session.add(
                Worker(
                    id=worker_id, hostname=hostname, pid=pid, job_id=job_id, started_at=started_at, heartbeat_at=now
                )
            )
        else:
            row.job_id, row.heartbeat_at, row.stopped_at = job_id, now, None
    session.flush()


def stop_workers(session: Session, worker_ids: list[str], *, now: datetime) -> None:
    session.execute(update(Worker).where(Worker.id.in_(worker_ids)).values(stopped_at=now, job_id=None))

