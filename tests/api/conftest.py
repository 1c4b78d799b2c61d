"""API fixtures: the app in process behind httpx's ASGITransport, on a fresh migrated database per test.

Every test runs on each backend (tests/backends.py): [sqlite] always, [postgresql] when BACKPROP_TEST_DATABASE_URL is
set (skipped, saying why, otherwise). Migrating takes a while, so the schema (and two owners' API keys) is built once
per session and backend into a template (a SQLite file, or a PostgreSQL template database) that each test copies.
`trained_template` goes further: it holds a succeeded job and its model, trained once per session by a real
`Supervisor.run_once()`, for the tests that need a model or a finished job.
"""

from __future__ import annotations

import csv
import io
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db.migrate import upgrade
from app.db.session import Database
from app.main import create_app
from app.services import keys
from app.worker.loop import Supervisor
from app.worker.runner import EXIT_OK, ChildArgs, JobRun
from tests.backends import (
    BACKENDS,
    POSTGRESQL,
    clone,
    create_pg_database,
    drop_pg_database,
    drop_template,
    release,
    require_backend,
)

OWNER, OTHER = "alice", "bob"
PROBLEM = "application/problem+json"
DB_NAME = "api.db"

# The classifier the trained template learns: three string labels on three separable blobs.
COLORS = ("red", "green", "blue")
CENTERS = ((0.0, 0.0), (6.0, 0.0), (0.0, 6.0))


@dataclass(frozen=True)
class Template:
    """A migrated database and what it already holds: a SQLite file (`path`), or a PostgreSQL template database
    (`pg_name`, with `url` to reach it)."""

    path: Path | None
    keys: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)
    pg_name: str | None = None
    url: str = ""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def small_settings(url: str) -> Settings:
    """Settings for tests: short leases so a lost worker is noticed quickly, and a fast idle poll."""
    return Settings(database_url=url, lease_seconds=2.0, heartbeat_seconds=0.5, poll_seconds=0.1, reaper_seconds=1.0)


def copy_db(src: Path, dst_dir: Path) -> Path:
    """Copy a SQLite database (with its WAL, should one be left) into `dst_dir`."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    for suffix in ("", "-wal", "-shm"):
        part = src.with_name(src.name + suffix)
        if part.exists():
            shutil.copyfile(part, dst.with_name(dst.name + suffix))
    return dst


def random_id() -> str:
    return uuid.uuid4().hex


def make_key(db: Database, owner: str, name: str = "test") -> str:
    with db.session() as session:
        _, key = keys.create_key(session, owner=owner, name=name)
    return key


def assert_problem(response: httpx.Response, status: int, *needles: str, field: str | None = None) -> dict[str, Any]:
    """`response` is a problem+json answer with this status whose detail mentions every needle."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    for needle in needles:
        assert needle.lower() in body["detail"].lower(), (needle, body)
    if field is not None:
        assert body.get("field") == field, body
    return body


def network_body(input_dim: int = 2, units: tuple[int, ...] = (8, 3), **extra: Any) -> dict[str, Any]:
    """A tanh MLP with a softmax output (cross_entropy) of `units[-1]` classes."""
    layers = [{"units": u, "activation": "tanh"} for u in units[:-1]]
    layers.append({"units": units[-1], "activation": "softmax"})
    return {"input_dim": input_dim, "layers": layers, "loss": "cross_entropy", **extra}


def blobs(n_per_class: int = 20, seed: int = 0) -> tuple[list[list[float]], list[str]]:
    """Three well separated 2-D blobs labelled with COLORS, interleaved so any split sees every class."""
    rng = np.random.default_rng(seed)
    features: list[list[float]] = []
    labels: list[str] = []
    for _ in range(n_per_class):
        for color, center in zip(COLORS, CENTERS, strict=True):
            features.append([round(float(v), 4) for v in rng.normal(center, 0.5)])
            labels.append(color)
    return features, labels


def blobs_csv(n_per_class: int = 20) -> bytes:
    features, labels = blobs(n_per_class)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["x", "y", "color"])
    writer.writerows([*row, label] for row, label in zip(features, labels, strict=True))
    return out.getvalue().encode()


class Api:
    """Shortcuts for creating resources through the API (each asserts its success status)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def network(self, *, input_dim: int = 2, units: tuple[int, ...] = (8, 3), **overrides: Any) -> dict[str, Any]:
        body = {**network_body(input_dim, units), **overrides}
        r = await self.client.post("/v1/networks", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    async def dataset(self, **overrides: Any) -> dict[str, Any]:
        features, labels = blobs(4)
        body = {"features": features, "targets": labels, **overrides}
        r = await self.client.post("/v1/datasets", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    async def job(self, network_id: str, dataset_id: str, **overrides: Any) -> dict[str, Any]:
        body = {"network_id": network_id, "dataset_id": dataset_id, "epochs": 3, "batch_size": 4, "seed": 1}
        r = await self.client.post("/v1/jobs", json={**body, **overrides})
        assert r.status_code == 202, r.text
        return r.json()


def train_queued_job(settings: Settings, db: Database, job_id: str) -> None:
    """Claim the job as a worker would and train it with the training child's code (`JobRun`), in this process."""
    claimed = Supervisor(settings, db, worker_id="api-test").claim()
    assert claimed is not None
    assert claimed[0] == job_id
    _, token, attempt = claimed
    args = ChildArgs(
        database_url=str(settings.database_url),
        job_id=job_id,
        token=token,
        attempt=attempt,
        lease_seconds=60.0,
        checkpoint_seconds=60.0,
    )
    assert JobRun(db, args).run() == EXIT_OK


def client_for(app: FastAPI, key: str | None) -> httpx.AsyncClient:
    """A client of the app in process. An unhandled error comes back as the 500 a real client would get (the
    app logs its traceback), so a test shows the status it asserted against, not an exception."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


# --- templates (once per session and backend) ----------------------------------------------------------------------


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """'sqlite' or 'postgresql': every test that reaches a database runs once on each."""
    return require_backend(request.param)


def build_empty_template(directory: Path, backend: str = "sqlite") -> Template:
    """A migrated database holding one API key for each of OWNER and OTHER."""
    if backend == POSTGRESQL:
        name, url = create_pg_database("api_template")
        path = None
    else:
        directory.mkdir(parents=True, exist_ok=True)
        name, path = None, directory / DB_NAME
        url = sqlite_url(path)
    try:
        upgrade(url)
        db = Database(url)
        try:
            owner_keys = {OWNER: make_key(db, OWNER), OTHER: make_key(db, OTHER)}
        finally:
            db.dispose()
    except BaseException:
        if name is not None:
            drop_pg_database(name)
        raise
    return Template(path=path, keys=owner_keys, pg_name=name, url=url)


def _drop_template(template: Template) -> None:
    if template.pg_name is not None:
        drop_template(template.pg_name)


@pytest.fixture(scope="session")
def empty_template(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    template = build_empty_template(tmp_path_factory.mktemp("empty-template"), backend)
    yield template
    _drop_template(template)


@pytest.fixture(scope="session")
def trained_template(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    """Alice's network, CSV dataset (string labels), a job that succeeded, and its model."""
    base = build_empty_template(tmp_path_factory.mktemp("trained-template"), backend)
    settings = small_settings(base.url)
    db = Database(settings.database_url)
    ids: dict[str, str] = {}

    async def build() -> None:
        async with client_for(create_app(settings, db=db), base.keys[OWNER]) as client:
            api = Api(client)
            ids["network"] = (await api.network(name="blobs-mlp", units=(16, 3)))["id"]
            r = await client.post(
                "/v1/datasets",
                files={"file": ("blobs.csv", blobs_csv(), "text/csv")},
                data={"target": "color", "name": "blobs"},
            )
            assert r.status_code == 201, r.text
            ids["dataset"] = r.json()["id"]
            job = await api.job(
                ids["network"],
                ids["dataset"],
                epochs=12,
                batch_size=8,
                optimizer={"name": "adam", "learning_rate": 0.05},
                validation_split=0.25,
                seed=7,
            )
            ids["job"] = job["id"]
            assert Supervisor(settings, db).run_once() is True
            r = await client.get(f"/v1/jobs/{ids['job']}")
            assert r.json()["status"] == "succeeded", r.text
            ids["model"] = r.json()["model_id"]

    try:
        anyio.run(build)
    except BaseException:
        _drop_template(base)
        raise
    finally:
        db.dispose()
    yield Template(path=base.path, keys=base.keys, ids=ids, pg_name=base.pg_name, url=base.url)
    _drop_template(base)


# --- per test ------------------------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def template(empty_template: Template) -> Template:
    """The database a test starts from; test classes that need a trained model override this."""
    return empty_template


@pytest.fixture
def db_url(tmp_path: Path, template: Template) -> Iterator[str]:
    """This test's own copy of the template: a file in tmp_path, or a PostgreSQL database dropped afterwards."""
    if template.pg_name is None:
        assert template.path is not None
        yield sqlite_url(copy_db(template.path, tmp_path / "var"))
        return
    name, url = clone(template.pg_name, "api")
    try:
        yield url
    finally:
        release(template.pg_name, name)


@pytest.fixture
def empty_db_url(tmp_path: Path, backend: str) -> Iterator[str]:
    """A database on this test's backend that was never migrated."""
    if backend != POSTGRESQL:
        yield sqlite_url(tmp_path / "empty.db")
        return
    name, url = create_pg_database("api_empty")
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return small_settings(db_url)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def app(settings: Settings, db: Database) -> FastAPI:
    return create_app(settings, db=db)


@pytest.fixture
def ids(template: Template) -> dict[str, str]:
    return template.ids


@pytest.fixture
async def client(app: FastAPI, template: Template) -> AsyncIterator[httpx.AsyncClient]:
    """Alice's client."""
    async with client_for(app, template.keys[OWNER]) as c:
        yield c


@pytest.fixture
async def other(app: FastAPI, template: Template) -> AsyncIterator[httpx.AsyncClient]:
    """Bob's client: another owner."""
    async with client_for(app, template.keys[OTHER]) as c:
        yield c


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """No Authorization header."""
    async with client_for(app, None) as c:
        yield c


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)
