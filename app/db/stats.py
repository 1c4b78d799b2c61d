"""Aggregate reads for GET /metrics: one cheap query per metric family, run at scrape time on a read session.

Each query uses an index or touches only a few rows (running jobs, live workers), except the plain `count(*)` of
epoch records, which is an index-only count. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from app.db.models import Dataset, EpochMetric, Job, Worker
from app.db.repositories import now_db
from app.domain import JobStatus


@dataclass(frozen=True)
class Snapshot:
    """What the database says at one instant (one read transaction)."""

    now: datetime
    jobs: dict[JobStatus, int]
    queue_depth: int
    epochs_completed: int
    training_samples_per_second: float
    heartbeats: dict[str, datetime]   # worker id -> last heartbeat, for workers not stopped


def snapshot(session: Session, *, heartbeat_horizon: timedelta | None = None) -> Snapshot:
    """Every figure /metrics reports from the database. `heartbeat_horizon` bounds the workers listed to those that
    beat within it: a worker that died without stopping keeps its row forever, and would stay a time series."""
    now = now_db(session)   # the clock workers stamp heartbeats with (the database's on PostgreSQL)
    return Snapshot(
        now=now,
        jobs=jobs_by_status(session),
        queue_depth=queue_depth(session, now=now),
        epochs_completed=epochs_completed(session),
        training_samples_per_second=training_samples_per_second(session),
        heartbeats=worker_heartbeats(session, since=None if heartbeat_horizon is None else now - heartbeat_horizon),
    )


def jobs_by_status(session: Session) -> dict[JobStatus, int]:
    """Jobs per status, every status present (0 if none)."""
    counts = dict.fromkeys(JobStatus, 0)
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[JobStatus(status)] = int(n)
    return counts


def queue_depth(session: Session, *, now: datetime) -> int:
    """Queued jobs a worker may claim now (`run_after` has passed)."""
    stmt = select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED, Job.run_after <= now)
    return int(session.execute(stmt).scalar_one())


def epochs_completed(session: Session) -> int:
    """Epoch records ever written (one per job and epoch: a replayed epoch adds none)."""
    return int(session.execute(select(func.count()).select_from(EpochMetric)).scalar_one())


def training_rows(spec: dict[str, Any], n_samples: int) -> int:
    """Rows a job trains on each epoch: the dataset minus the validation split, which the engine sizes as
    `max(1, round(n * validation_split))` (app.engine.training.split_indices)."""
    split = spec.get("validation_split") or 0.0
    if not isinstance(split, int | float) or split <= 0:
        return n_samples
    return max(0, n_samples - max(1, round(n_samples * split)))


def training_samples_per_second(session: Session) -> float:
    """Sum over running jobs of (training rows / seconds of the job's latest epoch record); a running job without
    an epoch record yet adds nothing."""
    latest = aliased(EpochMetric)
    last_epoch = (
        select(func.max(latest.epoch)).where(latest.job_id == Job.id).correlate(Job).scalar_subquery()
    )
    stmt = (
        select(Job.spec, Dataset.n_samples, EpochMetric.seconds)
        .join(Dataset, Dataset.id == Job.dataset_id)
        .join(EpochMetric, and_(EpochMetric.job_id == Job.id, EpochMetric.epoch == last_epoch))
        .where(Job.status == JobStatus.RUNNING)
    )
    total = 0.0
    for spec, n_samples, seconds in session.execute(stmt):
        if seconds and seconds > 0:
            total += training_rows(spec if isinstance(spec, dict) else {}, int(n_samples)) / float(seconds)
    return total


def worker_heartbeats(session: Session, *, since: datetime | None = None) -> dict[str, datetime]:
    """Last heartbeat of each worker that has not stopped (and beat at or after `since`, when given)."""
    stmt = select(Worker.id, Worker.heartbeat_at).where(Worker.stopped_at.is_(None)).order_by(Worker.id)
    if since is not None:
        stmt = stmt.where(Worker.heartbeat_at >= since)
    return dict(session.execute(stmt).all())
