"""Durability fixtures: real `backprop worker` processes on a migrated database, killed at seeded, logged times.

Every test runs on each backend (tests/backends.py): [sqlite], a file copied from a template file, and [postgresql]
(when BACKPROP_TEST_DATABASE_URL is set, else skipped saying why), a clone of a template database. The reference run
is always the SQLite one, so the PostgreSQL variants also check that both backends train bit for bit alike.

Every worker is `python -m app.cli worker --workers 1` in its own session (so its process group can be stopped
and continued as a whole) with its output in a log file the tests read. Jobs are queued through the services the
API uses. The reference result (per-epoch metrics, final weights) comes from the same job trained uninterrupted
by a worker process, once per session: the training child runs BLAS on one thread, the test process may not.

The database carries one piece of test instrumentation: a trigger that copies every committed `checkpoint` insert
(job, seq, epoch, attempt, time) into `test_audit_checkpoint` (AUDIT_SQL on SQLite, AUDIT_SQL_PG on PostgreSQL).
The checkpoint table itself keeps only the newest two rows and is emptied when a job ends, so the audit is what
tells which attempt wrote what, and when.

Seeds come from DURABILITY_SEED (default below); each test logs its seed and every kill time, and the figures it
measures are printed in a "durability figures" section at the end of the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, text

from app.api.schemas import JobCreate, NetworkCreate
from app.db import repositories as repo
from app.db.models import EpochMetric, Job
from app.db.models import Model as ModelRow
from app.db.session import Database
from app.engine import Model as EngineModel
from app.services import resources as svc
from app.services.dataset_codec import ParsedDataset
from app.storage import blobs
from tests.backends import BACKENDS, POSTGRESQL, clone, create_pg_database, drop_template, release, require_backend
from tests.support.server import wait_until

log = logging.getLogger("durability")

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("DURABILITY_SEED", "20240611"))
OWNER = "durability"
LIMITS = svc.Limits(max_active_jobs=10_000)
TIMINGS = {
    "BACKPROP_LEASE_SECONDS": "2",
    "BACKPROP_HEARTBEAT_SECONDS": "0.5",
    "BACKPROP_REAPER_SECONDS": "0.5",
    "BACKPROP_POLL_SECONDS": "0.05",
}
LEASE_SECONDS = float(TIMINGS["BACKPROP_LEASE_SECONDS"])
REAPER_SECONDS = float(TIMINGS["BACKPROP_REAPER_SECONDS"])
WORKER_START_TIMEOUT = 30.0
POLL = 0.02

AUDIT_SQL = """
CREATE TABLE test_audit_checkpoint (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL, batch INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TRIGGER test_audit_checkpoint_insert AFTER INSERT ON checkpoint BEGIN
    INSERT INTO test_audit_checkpoint (job_id, seq, epoch, batch, attempt)
    VALUES (NEW.job_id, NEW.seq, NEW.epoch, NEW.batch, NEW.attempt);
END;
"""

# The same on PostgreSQL: `at` is the insert's wall-clock time (clock_timestamp, not the transaction's start).
AUDIT_SQL_PG = """
CREATE TABLE test_audit_checkpoint (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL, batch INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM clock_timestamp())::double precision
);
CREATE FUNCTION test_audit_checkpoint_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_audit_checkpoint (job_id, seq, epoch, batch, attempt)
    VALUES (NEW.job_id, NEW.seq, NEW.epoch, NEW.batch, NEW.attempt);
    RETURN NULL;
END
$$;
CREATE TRIGGER test_audit_checkpoint_insert AFTER INSERT ON checkpoint
    FOR EACH ROW EXECUTE FUNCTION test_audit_checkpoint_insert();
"""

# --- the figures each test measures, printed at the end of the run ---------------------------------------------------

FIGURES: list[str] = []


def figure(line: str) -> None:
    """Log a measured figure and keep it for the end-of-run summary."""
    log.warning("%s", line)
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("durability figures")
        terminalreporter.write_line(f"seed {SEED} (DURABILITY_SEED)")
        for line in FIGURES:
            terminalreporter.write_line(line)


def p50_max(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {float(np.median(values)):.2f} s, max {max(values):.2f} s (n={len(values)})"


# --- waiting -------------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = POLL) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    return wait_until(condition, timeout=timeout, what=what, interval=interval)

class Background(threading.Thread):
    """Runs a callable in a thread and keeps its result or exception for the test to re-raise."""

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


# --- processes (Linux /proc) ---------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a live process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: the fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def children_of(pid: int) -> list[int]:
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st is not None and st[1] == pid and st[0] != "Z":
            out.append(p)
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st is not None and st[2] == pgid and st[0] != "Z":
            out.append(p)
    return out


def is_training_child(pid: int) -> bool:
    cmd = cmdline(pid)
    return "multiprocessing" in cmd and "spawn_main" in cmd and "resource_tracker" not in cmd


class Worker:
    """One `backprop worker --workers 1` process in its own session, its output in `log_path`."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--workers", "1"],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self.started = time.monotonic()

    def __repr__(self) -> str:
        return f"Worker({self.name}, pid {self.pid})"

    def log(self, since: int = 0) -> str:
        try:
            return self.log_path.read_bytes()[since:].decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wait_started(self, timeout: float = WORKER_START_TIMEOUT) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self} exited with code {self.proc.returncode}:\n{self.log()[-3000:]}")
            return " started" in self.log()

        wait_for(started, timeout=timeout, what=f"{self} to start")

    def owns(self, worker_id: str | None) -> bool:
        """Whether a job row's `worker_id` (host:pid:suffix) names this process."""
        return worker_id is not None and worker_id.split(":")[-2] == str(self.pid)

    def training_children(self) -> list[int]:
        return [p for p in children_of(self.pid) if is_training_child(p)]

    def training_child(self, timeout: float = 10.0) -> int:
        """The pid of the one training child (while a job runs, the supervisor has exactly one)."""

        def one() -> int | None:
            kids = self.training_children()
            return kids[0] if len(kids) == 1 else None

        return int(wait_for(one, timeout=timeout, what=f"the training child of {self}"))

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        os.killpg(self.pid, sig)

    def wait_exit(self, timeout: float) -> float:
        """Wait for the process to exit; the seconds waited. Fails (and kills it) past `timeout`."""
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"{self} did not exit within {timeout} s:\n{self.log()[-3000:]}")
        return time.monotonic() - t0

    def kill_all(self) -> None:
        """SIGKILL this worker and every process left in its group, one pid at a time (and reap the worker)."""
        pids = {self.pid, *group_members(self.pid)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@dataclass
class Cluster:
    """The workers of one test on one database."""

    env: dict[str, str]
    directory: Path
    workers: list[Worker] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str | None = None, *, wait: bool = True) -> Worker:
        with self._lock:
            name = name or f"w{len(self.workers) + 1}"
            worker = Worker(name, self.env, self.directory / f"worker-{name}.log")
            self.workers.append(worker)
        log.info("started %s", worker)
        if wait:
            worker.wait_started()
        return worker

    def by_worker_id(self, worker_id: str | None) -> Worker:
        with self._lock:
            found = [w for w in self.workers if w.owns(worker_id)]
        assert len(found) == 1, (worker_id, self.workers)
        return found[0]

    def logs(self) -> str:
        """Every worker's log lines (the training children's included), merged in time order."""
        lines = [line for w in self.workers for line in w.log().splitlines()]
        return "\n".join(sorted(lines, key=lambda line: line[:23] if line[:4].isdigit() else ""))

    def stop_all(self) -> None:
        for w in self.workers:
            w.kill_all()


# --- the database --------------------------------------------------------------------------------------------------


def worker_env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env.update(TIMINGS)
    env.update(BACKPROP_DATABASE_URL=url, BACKPROP_DATA_DIR=str(data_dir), BACKPROP_LOG_LEVEL="info")
    return env


def copy_db(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        part = src.with_name(src.name + suffix)
        if part.exists():
            shutil.copyfile(part, dst.with_name(dst.name + suffix))
    return dst


def migrate(url: str, directory: Path) -> None:
    """`backprop migrate`, as operators run it."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=REPO_ROOT,
        env=worker_env(url, directory / "var"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return require_backend(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated by `backprop migrate`, plus the checkpoint audit trigger."""
    directory = tmp_path_factory.mktemp("durability-template")
    path = directory / "d.db"
    migrate(f"sqlite:///{path}", directory)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(AUDIT_SQL)
        conn.commit()
    finally:
        conn.close()
    return path


@pytest.fixture(scope="session")
def template_db(
    backend: str, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path | str]:
    """This backend's template: the SQLite file's path, or the name of a PostgreSQL template database (migrated by
    `backprop migrate`, plus the audit trigger)."""
    if backend != POSTGRESQL:
        yield sqlite_template
        return
    name, url = create_pg_database("durability_template")
    try:
        migrate(url, tmp_path_factory.mktemp("durability-pg-template"))
        db = Database(url)
        try:
            with db.write_engine.begin() as conn:
                conn.exec_driver_sql(AUDIT_SQL_PG)
        finally:
            db.dispose()
        yield name
    finally:
        drop_template(name)


@dataclass
class Env:
    """One test's database (`path` is its SQLite file, None on PostgreSQL), a Database on it for the test process,
    and its workers."""

    path: Path | None
    url: str
    db: Database
    cluster: Cluster

    @property
    def backend(self) -> str:
        return self.db.dialect


@pytest.fixture
def env(tmp_path: Path, template_db: Path | str) -> Iterator[Env]:
    pg_name: str | None = None
    path: Path | None = None
    if isinstance(template_db, str):
        pg_name, url = clone(template_db, "durability")
    else:
        path = copy_db(template_db, tmp_path / "d.db")
        url = f"sqlite:///{path}"
    db = Database(url)
    cluster = Cluster(env=worker_env(url, tmp_path / "var"), directory=tmp_path)
    try:
        yield Env(path=path, url=url, db=db, cluster=cluster)
    finally:
        cluster.stop_all()
        db.dispose()
        if pg_name is not None:
            assert isinstance(template_db, str)
            release(template_db, pg_name)


# --- jobs ----------------------------------------------------------------------------------------------------------

# The crash job: 100 epochs of ~30 ms on 3,200 training rows (batches of 4), a few seconds in all, so a kill at a
# random moment lands mid-training with many checkpoints before and after it. Fixed data and seed.
CRASH_NETWORK = {
    "input_dim": 4,
    "layers": [{"units": 32, "activation": "tanh"}, {"units": 2, "activation": "softmax"}],
    "loss": "cross_entropy",
}
CRASH_JOB = {
    "epochs": 100,
    "batch_size": 4,
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "validation_split": 0.2,
    "seed": 11,
}
TINY_JOB = {"epochs": 3, "batch_size": 8, "optimizer": {"name": "adam", "learning_rate": 0.05}}


def crash_data() -> ParsedDataset:
    rng = np.random.default_rng(1234)
    x = rng.normal(size=(4000, 4))
    y = ((x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) - 0.3 * x[:, 3]) > 0).astype(np.int64)
    return ParsedDataset(x=x, y=y, task="classification", classes=["neg", "pos"])


def tiny_data() -> ParsedDataset:
    rng = np.random.default_rng(99)
    y = np.repeat([0, 1], 24)
    x = rng.normal(size=(48, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return ParsedDataset(x=x, y=y, task="classification", classes=["a", "b"])


TINY_NETWORK = {
    "input_dim": 2,
    "layers": [{"units": 8, "activation": "tanh"}, {"units": 2, "activation": "softmax"}],
    "loss": "cross_entropy",
}


class Jobs:
    """Networks and datasets stored once per database and owner; jobs queued on them through the services."""

    def __init__(self, db: Database, owner: str = OWNER) -> None:
        self.db, self.owner = db, owner
        self._ids: dict[str, tuple[str, str]] = {}

    def resources(self, kind: str) -> tuple[str, str]:
        if kind not in self._ids:
            network, data = (CRASH_NETWORK, crash_data()) if kind == "crash" else (TINY_NETWORK, tiny_data())
            with self.db.session() as s:
                body = NetworkCreate.model_validate(network).model_dump(exclude_none=True)
                net, _ = svc.create_network(s, owner=self.owner, body=body, limits=LIMITS)
                ds = svc.create_dataset(s, owner=self.owner, parsed=data, name=kind, limits=LIMITS)
                self._ids[kind] = (net.id, ds.id)
        return self._ids[kind]

    def body(self, kind: str, **overrides: Any) -> dict[str, Any]:
        network_id, dataset_id = self.resources(kind)
        base = CRASH_JOB if kind == "crash" else TINY_JOB
        return {"network_id": network_id, "dataset_id": dataset_id, **base, **overrides}

    def submit(self, kind: str = "crash", **overrides: Any) -> str:
        body = JobCreate.model_validate(self.body(kind, **overrides)).model_dump()
        with self.db.session() as s:
            job, _ = svc.submit_job(s, owner=self.owner, body=body, limits=LIMITS)
            return job.id


# --- reading results -----------------------------------------------------------------------------------------------


def get_job(db: Database, job_id: str) -> Job:
    with db.read_session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def transitions(db: Database, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with db.read_session() as s:
        return [(str(e.status), dict(e.data or {})) for e in repo.status_events(s, job_id)]


def epoch_records(db: Database, job_id: str) -> list[tuple[int, float, float | None, dict[str, Any]]]:
    """(epoch, loss, val_loss, metrics) of every recorded epoch, in order: `seconds` is wall time, not compared."""
    with db.read_session() as s:
        rows = s.execute(select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch))
        return [(r.epoch, r.loss, r.val_loss, dict(r.metrics or {})) for r in rows.scalars()]


def model_rows(db: Database, job_id: str) -> list[ModelRow]:
    with db.read_session() as s:
        return list(s.execute(select(ModelRow).where(ModelRow.job_id == job_id)).scalars())


def final_params(db: Database, job_id: str) -> np.ndarray:
    job = get_job(db, job_id)
    assert job.model_id is not None, (job.status, job.error_code, job.error)
    with db.read_session() as s:
        row = s.get(ModelRow, job.model_id)
        assert row is not None
        return EngineModel.from_bytes(blobs.get_blob(s, row.blob_id, sha256=row.sha256)).params.copy()


def audit(db: Database, job_id: str, *, after_id: int = 0) -> list[dict[str, Any]]:
    """Committed checkpoint inserts of a job (see the module docstring), oldest first."""
    with db.read_session() as s:
        rows = s.execute(
            text(
                "SELECT id, seq, epoch, batch, attempt, at FROM test_audit_checkpoint "
                "WHERE job_id = :j AND id > :a ORDER BY id"
            ),
            {"j": job_id, "a": after_id},
        ).mappings()
        return [dict(r) for r in rows]


def audit_max_id(db: Database) -> int:
    with db.read_session() as s:
        return int(s.execute(text("SELECT coalesce(max(id), 0) FROM test_audit_checkpoint")).scalar_one())


def count_models(db: Database, job_id: str) -> int:
    with db.read_session() as s:
        return int(s.execute(select(func.count()).select_from(ModelRow).where(ModelRow.job_id == job_id)).scalar_one())


def write_lock_free(path: Path) -> bool:
    """Whether nobody holds the SQLite write lock right now (BEGIN IMMEDIATE succeeds without waiting)."""
    conn = sqlite3.connect(path, timeout=0.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def tcp_ports(pids: list[int]) -> set[int]:
    """The local TCP ports of the sockets these processes hold (Linux /proc): a client's ports are the `client_port`
    of its PostgreSQL backends."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def pg_transaction_open(db: Database, pids: list[int]) -> bool:
    """Whether any PostgreSQL backend serving these processes is inside a transaction or a statement (and so may
    hold row locks) right now."""
    ports = sorted(tcp_ports(pids))
    if not ports:
        return False
    with db.read_session() as s:
        busy = s.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND client_port = ANY(:ports) AND state <> 'idle'"
            ),
            {"ports": ports},
        ).scalar_one()
    return bool(busy)


# --- the uninterrupted reference run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    records: list[tuple[int, float, float | None, dict[str, Any]]]
    params: np.ndarray
    epoch_seconds: list[float]  # compute time of each epoch in the reference run
    train_seconds: float  # claim -> succeeded

    @property
    def epochs(self) -> int:
        return len(self.records)

    def remaining_seconds(self, from_epoch: int) -> float:
        """Compute time of the epochs after `from_epoch` (a lower bound on the wall time they take)."""
        return float(sum(self.epoch_seconds[from_epoch:]))


def moment_seconds(db: Database, job_id: str, reference: Reference, fraction: float, from_epoch: int) -> float:
    """How long to wait for the seeded moment `fraction` of the way through a job's remaining epochs: the reference's
    remaining compute, scaled by this run's pace so far against the reference's (a reference measured while the
    machine was busier than now would otherwise put the moment after the job's end)."""
    with db.read_session() as session:
        ran = list(session.execute(select(EpochMetric.seconds).where(EpochMetric.job_id == job_id)).scalars())
    pace = sum(ran) / max(1e-9, sum(reference.epoch_seconds[: len(ran)])) if ran else 1.0
    # Half the estimate: the pace from the first epochs is noisy (start-up), and a moment past the job's end tests
    # nothing, while any moment inside the run exercises the same recovery.
    return 0.5 * fraction * reference.remaining_seconds(from_epoch) * min(1.0, max(0.2, pace))


@pytest.fixture(scope="session")
def reference(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """CRASH_JOB trained uninterrupted by a worker process (BLAS on one thread, like every training child), on SQLite
    whatever the test's backend."""
    directory = tmp_path_factory.mktemp("durability-reference")
    path = copy_db(sqlite_template, directory / "d.db")
    url = f"sqlite:///{path}"
    db = Database(url)
    cluster = Cluster(env=worker_env(url, directory / "var"), directory=directory)
    try:
        job_id = Jobs(db).submit()
        cluster.start("reference")
        wait_for(
            lambda: get_job(db, job_id).status in ("succeeded", "failed"),
            timeout=120,
            what="the reference job to finish",
        )
        job = get_job(db, job_id)
        assert job.status == "succeeded", (job.error_code, job.error)
        assert job.started_at is not None
        assert job.finished_at is not None
        with db.read_session() as s:
            seconds = list(
                s.execute(
                    select(EpochMetric.seconds).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
                ).scalars()
            )
        ref = Reference(
            records=epoch_records(db, job_id),
            params=final_params(db, job_id),
            epoch_seconds=seconds,
            train_seconds=(job.finished_at - job.started_at).total_seconds(),
        )
        assert [r[0] for r in ref.records] == list(range(1, CRASH_JOB["epochs"] + 1))
        figure(
            f"reference run: {ref.epochs} epochs, {ref.train_seconds:.2f} s claim->succeeded, "
            f"{sum(seconds):.2f} s of epoch compute (max epoch {max(seconds) * 1000:.0f} ms)"
        )
        return ref
    finally:
        cluster.stop_all()
        db.dispose()


def assert_matches_reference(db: Database, job_id: str, ref: Reference) -> None:
    """Every epoch recorded once, equal to the uninterrupted run's, and the final weights bit for bit."""
    records = epoch_records(db, job_id)
    assert [r[0] for r in records] == list(range(1, ref.epochs + 1))
    for got, want in zip(records, ref.records, strict=True):
        assert got == want, f"job {job_id} epoch {got[0]}: {got} != reference {want}"
    params = final_params(db, job_id)
    assert params.dtype == ref.params.dtype
    assert np.array_equal(params, ref.params), f"job {job_id}: final weights differ from the reference run"
