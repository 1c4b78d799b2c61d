"""Supervisor.run_once() against a real training child process on a migrated database (each backend)."""

import re
import threading
from collections import Counter
from datetime import timedelta

import numpy as np
from sqlalchemy import func, select, update

from app.config import Settings
from app.db import repositories as repo
from app.db.base import utcnow
from app.db.models import Checkpoint, EpochMetric, Job, JobEvent
from app.db.models import Model as ModelRow
from app.db.session import Database
from app.domain import JobEventType, JobStatus
from app.engine import Model as EngineModel
from app.services import resources as svc
from app.storage import blobs
from app.worker.loop import Supervisor
from tests.worker.conftest import (
    OWNER,
    Background,
    blobs_job,
    epochs_recorded,
    get_job,
    submit,
    wait_for,
)


def test_run_once_returns_false_on_an_empty_queue(settings: Settings, db: Database):
    assert Supervisor(settings, db).run_once() is False


def test_run_once_skips_jobs_that_are_not_runnable(settings: Settings, db: Database):
    cancelled = blobs_job(db)
    with db.session() as s:
        svc.cancel_job(s, owner=OWNER, job_id=cancelled)
    later = blobs_job(db)
    with db.session() as s:
        s.execute(update(Job).where(Job.id == later).values(run_after=utcnow() + timedelta(hours=1)))
    assert Supervisor(settings, db).run_once() is False
    assert get_job(db, later).status == JobStatus.QUEUED


def test_job_succeeds_with_every_epoch_recorded_once(settings: Settings, db: Database):
    job_id = blobs_job(db, epochs=8, validation_split=0.25)
    assert Supervisor(settings, db, worker_id="w1").run_once() is True

    job = get_job(db, job_id)
    assert job.status == JobStatus.SUCCEEDED, (job.error_code, job.error)
    assert (job.epoch, job.epochs, job.progress) == (8, 8, 1.0)
    assert job.attempt == 1
    assert job.error_code is None
    assert job.lease_token is None
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.started_at <= job.finished_at
    assert job.last_metrics is not None
    assert job.last_metrics["metrics"]["val_accuracy"] == 1.0
    assert epochs_recorded(db, job_id) == list(range(1, 9))

    with db.read_session() as s:
        epoch_events = Counter(
            e.data["epoch"]
            for e in s.execute(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == JobEventType.EPOCH)
            ).scalars()
        )
        statuses = [str(e.status) for e in repo.status_events(s, job_id)]
        n_checkpoints = s.execute(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id))
        model_row = s.get(ModelRow, job.model_id)
        assert model_row is not None
        model = EngineModel.from_bytes(blobs.get_blob(s, model_row.blob_id, sha256=model_row.sha256))
    assert epoch_events == dict.fromkeys(range(1, 9), 1)
    assert statuses == ["queued", "running", "succeeded"]
    assert n_checkpoints.scalar_one() == 0  # dropped once the model is stored
    assert (model_row.job_id, model_row.owner, model_row.partial) == (job_id, OWNER, False)
    assert model_row.classes == ["no", "yes"]
    probs = model.predict(np.array([[-3.0, -3.0], [3.0, 3.0]]))
    assert probs.argmax(axis=1).tolist() == [0, 1]

    assert Supervisor(settings, db).run_once() is False


def test_same_seed_trains_the_same_model(settings: Settings, db: Database):
    first, second = blobs_job(db, seed=3), blobs_job(db, seed=3)
    sup = Supervisor(settings, db)
    assert sup.run_once()
    assert sup.run_once()
    with db.read_session() as s:
        losses = [
            list(
                s.execute(select(EpochMetric.loss).where(EpochMetric.job_id == j).order_by(EpochMetric.epoch)).scalars()
            )
            for j in (first, second)
        ]
    assert losses[0] == losses[1]


def test_divergent_job_fails_naming_epoch_and_batch(settings: Settings, db: Database):
    rng = np.random.default_rng(0)
    x = rng.uniform(1e5, 1e6, size=(64, 3))  # unscaled, and left that way
    y = x @ np.array([[3.0], [-2.0], [5.0]])
    network = {
        "input_dim": 3,
        "layers": [{"units": 16, "activation": "relu"}, {"units": 1, "activation": "linear"}],
        "loss": "mse",
    }
    job_id = submit(
        db,
        x=x,
        y=y,
        network=network,
        epochs=50,
        batch_size=8,
        standardize=False,
        optimizer={"name": "sgd", "learning_rate": 1000.0},
        seed=0,
    )
    assert Supervisor(settings, db).run_once() is True

    job = get_job(db, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error_code == "divergence"
    assert job.error is not None
    match = re.search(r"epoch (\d+), batch (\d+)", job.error)
    assert match, job.error
    assert int(match[1]) >= 1
    assert 1 <= int(match[2]) <= 8
    assert "learning_rate" in job.error
    assert job.model_id is None
    assert job.finished_at is not None
    assert job.attempt == 1  # a divergence is final, not retried
    with db.read_session() as s:
        view = svc.job_view(s, job)
    assert view["error"]["code"] == "divergence"
    assert view["transitions"][-1]["status"] == "failed"
    # Epochs finished before the divergence stay in the history.
    assert epochs_recorded(db, job_id) == list(range(1, int(match[1])))
    assert Supervisor(settings, db).run_once() is False


def slow_job(db: Database) -> str:
    """Regression on 64k rows in batches of 4: roughly a second per epoch, so a cancel lands mid-epoch."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64_000, 4))
    y = np.tanh(x @ rng.normal(size=(4, 1)))
    network = {
        "input_dim": 4,
        "layers": [
            {"units": 64, "activation": "tanh"},
            {"units": 64, "activation": "tanh"},
            {"units": 1, "activation": "linear"},
        ],
        "loss": "mse",
    }
    return submit(db, x=x, y=y, network=network, epochs=200, batch_size=4, seed=1)


def test_cancel_while_running_stops_within_an_epoch_and_keeps_history(settings: Settings, db: Database):
    job_id = slow_job(db)
    runner = Background(Supervisor(settings, db).run_once, name="supervisor")
    runner.start()
    try:
        wait_for(lambda: get_job(db, job_id).epoch >= 1, timeout=60, what="the first epoch to be published")
        with db.session() as s:
            cancelling = svc.cancel_job(s, owner=OWNER, job_id=job_id)
            assert cancelling.status == JobStatus.RUNNING  # a running job is only asked to stop
            epoch_at_cancel = cancelling.epoch
    finally:
        assert runner.finish(timeout=60) is True

    job = get_job(db, job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.finished_at is not None
    assert job.model_id is None
    assert job.lease_token is None
    history = epochs_recorded(db, job_id)
    assert history == list(range(1, job.epoch + 1))
    assert epoch_at_cancel <= job.epoch <= epoch_at_cancel + 1
    assert job.epoch < job.epochs
    with db.read_session() as s:
        statuses = [str(e.status) for e in repo.status_events(s, job_id)]
        leftover = s.execute(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id))
        assert leftover.scalar_one() == 0
    assert statuses == ["queued", "running", "cancelled"]


def test_two_supervisors_never_claim_the_same_job(tmp_path, settings: Settings, db: Database):
    jobs = {blobs_job(db, seed=i) for i in range(12)}
    # Two processes' worth of state: separate Database objects (connection pools) on the same file.
    other_db = Database(settings.database_url)
    sups = [Supervisor(settings, d, worker_id=f"w{i}") for i, d in enumerate((db, other_db, db, other_db))]
    start = threading.Barrier(len(sups))
    claims: list[list[str]] = [[] for _ in sups]

    def claim_all(i: int) -> None:
        start.wait()
        while (claimed := sups[i].claim()) is not None:
            claims[i].append(claimed[0])

    threads = [Background(lambda i=i: claim_all(i), name=f"claimer-{i}") for i in range(len(sups))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.finish(timeout=60)
    finally:
        other_db.dispose()
    every_claim = [job for claimed in claims for job in claimed]
    assert sorted(every_claim) == sorted(jobs)  # each job exactly once
    with db.read_session() as s:
        rows = s.execute(select(Job.worker_id, Job.status, Job.attempt).where(Job.id.in_(jobs))).all()
    assert all(status == JobStatus.RUNNING and attempt == 1 for _, status, attempt in rows)
    owners = {job: f"w{i}" for i, claimed in enumerate(claims) for job in claimed}
    with db.read_session() as s:
        assert {j.id: j.worker_id for j in s.execute(select(Job).where(Job.id.in_(jobs))).scalars()} == owners


def test_two_supervisors_running_jobs_each_run_every_job_once(settings: Settings, db: Database):
    jobs = {blobs_job(db, epochs=4, seed=i) for i in range(4)}
    other_db = Database(settings.database_url)
    ran: list[list[str]] = [[], []]

    class Recording(Supervisor):
        def __init__(self, index: int, database: Database) -> None:
            super().__init__(settings, database, worker_id=f"sup{index}")
            self.index = index

        def claim(self):
            claimed = super().claim()
            if claimed is not None:
                ran[self.index].append(claimed[0])
            return claimed

    def drain(sup: Supervisor) -> int:
        n = 0
        while sup.run_once():
            n += 1
        return n

    workers = [
        Background(lambda s=sup: drain(s), name=f"sup{sup.index}") for sup in (Recording(0, db), Recording(1, other_db))
    ]
    for w in workers:
        w.start()
    try:
        counts = [w.finish(timeout=120) for w in workers]
    finally:
        other_db.dispose()
    assert sum(counts) == 4
    assert sorted(ran[0] + ran[1]) == sorted(jobs)
    assert not set(ran[0]) & set(ran[1])
    for job_id in jobs:
        job = get_job(db, job_id)
        assert (job.status, job.attempt) == (JobStatus.SUCCEEDED, 1)
        assert epochs_recorded(db, job_id) == [1, 2, 3, 4]
        assert job.worker_id in {"sup0", "sup1"}
