"""Worker fixtures: a migrated database per test (copied from a session template) and jobs queued through the same
services and schemas the API uses, so the worker sees exactly what a real request would leave behind.

Every test runs on each backend (tests/backends.py): [sqlite], a file copied from a template file, and [postgresql]
(when BACKPROP_TEST_DATABASE_URL is set, else skipped saying why), a clone of a template database."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from app.api.schemas import JobCreate, NetworkCreate
from app.config import Settings
from app.db.migrate import upgrade
from app.db.models import EpochMetric, Job
from app.db.session import Database
from app.services import resources as svc
from app.services.dataset_codec import ParsedDataset
from tests.backends import BACKENDS, POSTGRESQL, clone, create_pg_database, drop_template, release, require_backend
from tests.support.server import wait_until

OWNER = "worker-tests"
LIMITS = svc.Limits(max_active_jobs=1000)


def small_settings(url: str) -> Settings:
    return Settings(database_url=url, lease_seconds=2.0, heartbeat_seconds=0.5, poll_seconds=0.1, reaper_seconds=1.0)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return require_backend(request.param)


@pytest.fixture(scope="session")
def template_db(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | str]:
    """A migrated database: a SQLite file's path, or the name of a PostgreSQL template database."""
    if backend == POSTGRESQL:
        name, url = create_pg_database("worker_template")
        try:
            upgrade(url)
            yield name
        finally:
            drop_template(name)
        return
    path = tmp_path_factory.mktemp("worker-template") / "worker.db"
    upgrade(f"sqlite:///{path}")
    yield path


@pytest.fixture
def settings(tmp_path: Path, template_db: Path | str) -> Iterator[Settings]:
    if isinstance(template_db, str):
        name, url = clone(template_db, "worker")
        try:
            yield small_settings(url)
        finally:
            release(template_db, name)
        return
    path = tmp_path / "var" / template_db.name
    path.parent.mkdir()
    shutil.copyfile(template_db, path)
    yield small_settings(f"sqlite:///{path}")


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    try:
        yield database
    finally:
        database.dispose()


def submit(
    db: Database,
    *,
    x: np.ndarray,
    y: np.ndarray,
    network: dict[str, Any],
    classes: list[Any] | None = None,
    **job: Any,
) -> str:
    """Store a network and a dataset and queue a job on them; its id.

    `y` holds class indices into `classes` for a classifier, else (n, k) regression targets.
    """
    parsed = ParsedDataset(
        x=np.asarray(x, dtype=np.float64),
        y=y,
        task="classification" if classes is not None else "regression",
        classes=classes,
    )
    with db.session() as s:
        net, _ = svc.create_network(
            s, owner=OWNER, body=NetworkCreate.model_validate(network).model_dump(exclude_none=True), limits=LIMITS
        )
        ds = svc.create_dataset(s, owner=OWNER, parsed=parsed, name=None, limits=LIMITS)
        body = JobCreate.model_validate({"network_id": net.id, "dataset_id": ds.id, **job}).model_dump()
        row, _ = svc.submit_job(s, owner=OWNER, body=body, limits=LIMITS)
        return row.id


def blobs_job(db: Database, *, epochs: int = 8, seed: int = 0, **job: Any) -> str:
    """A small 2-class problem that trains in well under a second."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 2)) + np.where(y[:, None] == 1, 3.0, -3.0)
    network = {
        "input_dim": 2,
        "layers": [{"units": 8, "activation": "tanh"}, {"units": 2, "activation": "softmax"}],
        "loss": "cross_entropy",
    }
    defaults = {"epochs": epochs, "batch_size": 8, "optimizer": {"name": "adam", "learning_rate": 0.05}, "seed": seed}
    return submit(db, x=x, y=y, network=network, classes=["no", "yes"], **{**defaults, **job})


def get_job(db: Database, job_id: str) -> Job:
    with db.read_session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def epochs_recorded(db: Database, job_id: str) -> list[int]:
    with db.read_session() as s:
        return list(
            s.execute(
                select(EpochMetric.epoch).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
            ).scalars()
        )


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    return wait_until(condition, timeout=timeout, what=what, interval=interval)

class Background(threading.Thread):
    """Runs a callable in a thread and keeps its result or exception for the test to check."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result
