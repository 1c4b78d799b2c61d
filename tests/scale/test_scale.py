"""Scale-out on PostgreSQL (README "Scaling out"): 4 `backprop worker --workers 1` processes and 2 `backprop serve
--workers 0` API processes on one fresh database, 200 small jobs submitted over HTTP, alternating between the APIs.

- Burst: the first 100 jobs are submitted at once by 16 client threads, so all four workers claim from a deep queue
  at the same time (FOR UPDATE SKIP LOCKED).
- Paced: the other 100 by 4 client threads, each submitting its next job once its previous one has finished, so
  every job arrives while a worker is idle. The workers poll only every 2 s (BACKPROP_POLL_SECONDS=2): a start within
  a fraction of that comes from LISTEN/NOTIFY. The paced start latency is asserted (p50 < 1 s); the burst one, mostly
  time spent queueing behind other jobs, is only reported.

Every job must succeed exactly once: one 'running' status event, attempt 1, one model row, one "claimed" log line
across all workers. Runs only when BACKPROP_TEST_DATABASE_URL is set. Figures go to the "scale figures" section.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from app.db.session import Database
from tests.backends import create_pg_database, drop_pg_database, require_pg
from tests.scale.conftest import FIGURES
from tests.support.server import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
N_WORKERS, N_APIS = 4, 2
N_BURST, BURST_CLIENTS = 100, 16
N_PACED, PACED_CLIENTS = 100, N_WORKERS
POLL_SECONDS = 2.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 300.0
JOB_TIMEOUT = 60.0
TERMINAL = ("succeeded", "failed", "cancelled")

NETWORK = {
    "input_dim": 2,
    "layers": [{"units": 8, "activation": "tanh"}, {"units": 2, "activation": "softmax"}],
    "loss": "cross_entropy",
}


def tiny_dataset() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return {"features": np.round(x, 4).tolist(), "targets": ["a" if v == 0 else "b" for v in y]}


def job_body(network_id: str, dataset_id: str, seed: int) -> dict[str, Any]:
    return {"network_id": network_id, "dataset_id": dataset_id, "epochs": 5, "batch_size": 8, "seed": seed}


# --- processes -----------------------------------------------------------------------------------------------------



def cli(env: dict[str, str], *args: str, timeout: float = 120.0) -> str:
    """Run `python -m app.cli ARGS` to completion; its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"backprop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


class Proc:
    """A `python -m app.cli ...` process in its own session (so its training children are stopped with it)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.log_path = directory / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with code {self.proc.returncode}:\n{self.log()[-3000:]}")

    def stop(self) -> bool:
        """SIGTERM, a bounded wait, then SIGKILL to whatever is left of its process group. True if it exited alone."""
        clean = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                clean = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its children share the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return clean


@dataclass
class Cluster:
    url: str
    key: str
    db: Database
    apis: list[str]
    workers: list[Proc]
    servers: list[Proc]
    _local: threading.local = field(default_factory=threading.local)
    _clients: list[httpx.Client] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, i: int) -> httpx.Client:
        """This thread's client of API process `i`."""
        mine = getattr(self._local, "by_api", None)
        if mine is None:
            mine = self._local.by_api = {}
        if i not in mine:
            mine[i] = httpx.Client(
                base_url=self.apis[i], headers={"Authorization": f"Bearer {self.key}"}, timeout=30.0
            )
            with self._lock:
                self._clients.append(mine[i])
        return mine[i]

    def close_clients(self) -> None:
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()

    def logs(self) -> dict[str, str]:
        return {p.name: p.log() for p in [*self.workers, *self.servers]}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_pg()
    name, url = create_pg_database("scale")
    procs: list[Proc] = []
    db: Database | None = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
        env.update(
            BACKPROP_DATABASE_URL=url,
            BACKPROP_DATA_DIR=str(tmp_path / "var"),
            BACKPROP_LOG_LEVEL="info",
            BACKPROP_POLL_SECONDS=str(POLL_SECONDS),
            BACKPROP_MAX_ACTIVE_JOBS_PER_OWNER="1000",
            PYTHONUNBUFFERED="1",
        )
        cli(env, "migrate")
        key = cli(env, "keys", "create", "scale").strip().splitlines()[-1]
        workers = [
            Proc(f"worker-{i + 1}", ["worker", "--workers", "1"], env, tmp_path) for i in range(N_WORKERS)
        ]
        procs += workers
        ports = [free_port() for _ in range(N_APIS)]
        servers = [
            Proc(f"api-{i + 1}", ["serve", "--workers", "0", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
            for i, port in enumerate(ports)
        ]
        procs += servers
        apis = [f"http://127.0.0.1:{port}" for port in ports]

        def ready(i: int) -> bool:
            servers[i].check_alive()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{apis[i]}/readyz", timeout=2).status_code == 200
            return False

        for i in range(N_APIS):
            wait_until(lambda i=i: ready(i), timeout=START_TIMEOUT, what=f"API process {i + 1} to be ready")
        for w in workers:
            wait_until(
                lambda w=w: (w.check_alive(), " started" in w.log())[1],
                timeout=START_TIMEOUT,
                what=f"{w.name} to start",
            )
        db = Database(url)
        made = Cluster(url=url, key=key, db=db, apis=apis, workers=workers, servers=servers)
        try:
            yield made
        finally:
            made.close_clients()
    finally:
        unclean = [p.name for p in procs if not p.stop()]
        if db is not None:
            db.dispose()
        drop_pg_database(name)
    assert not unclean, f"these processes needed SIGKILL after {STOP_TIMEOUT:.0f} s of SIGTERM: {unclean}"


# --- the test ------------------------------------------------------------------------------------------------------


def ts(value: str) -> float:
    d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()


def pcts(values: list[float]) -> str:
    a = np.asarray(values)
    return (
        f"p50 {np.percentile(a, 50) * 1000:.0f} ms, p95 {np.percentile(a, 95) * 1000:.0f} ms, "
        f"max {a.max() * 1000:.0f} ms (n={len(a)})"
    )


def statuses(db: Database, ids: list[str]) -> dict[str, str]:
    with db.read_session() as s:
        rows = s.execute(text("SELECT id, status FROM job WHERE id = ANY(:ids)"), {"ids": ids}).all()
    return {r[0]: r[1] for r in rows}


def test_four_workers_two_apis_run_two_hundred_jobs_exactly_once(cluster: Cluster):
    c0 = cluster.client(0)
    r = c0.post("/v1/networks", json=NETWORK)
    assert r.status_code == 201, r.text
    network_id = r.json()["id"]
    r = c0.post("/v1/datasets", json=tiny_dataset())
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    answers: Counter[int] = Counter()
    lock = threading.Lock()

    def submit(i: int) -> str:
        r = cluster.client(i % N_APIS).post("/v1/jobs", json=job_body(network_id, dataset_id, seed=i))
        with lock:
            answers[r.status_code] += 1
        assert r.status_code == 202, f"POST /v1/jobs to API {i % N_APIS + 1}: {r.status_code} {r.text}"
        return str(r.json()["id"])

    # Burst: everything at once, a deep queue for the four workers to claim from.
    t0 = time.monotonic()
    with ThreadPoolExecutor(BURST_CLIENTS) as pool:
        burst = list(pool.map(submit, range(N_BURST)))
    submitted_in = time.monotonic() - t0
    wait_until(
        lambda: all(s in TERMINAL for s in statuses(cluster.db, burst).values()),
        timeout=DRAIN_TIMEOUT,
        what=f"the {N_BURST} burst jobs to finish",
        interval=0.2,
    )
    burst_seconds = time.monotonic() - t0

    # Paced: each client's next job goes in once its previous one has finished, so there is always an idle worker,
    # waiting on its queue listener (its poll is 2 s).
    def paced_client(k: int) -> list[str]:
        ids = []
        for n in range(N_PACED // PACED_CLIENTS):
            i = N_BURST + k + n * PACED_CLIENTS
            job_id = submit(i)
            ids.append(job_id)
            wait_until(
                lambda job_id=job_id: statuses(cluster.db, [job_id]).get(job_id) in TERMINAL,
                timeout=JOB_TIMEOUT,
                what=f"paced job {job_id} to finish",
                interval=0.02,
            )
        return ids

    t1 = time.monotonic()
    with ThreadPoolExecutor(PACED_CLIENTS) as pool:
        paced = [j for ids in pool.map(paced_client, range(PACED_CLIENTS)) for j in ids]
    paced_seconds = time.monotonic() - t1
    all_ids = burst + paced
    assert len(set(all_ids)) == N_BURST + N_PACED
    assert answers == {202: N_BURST + N_PACED}, answers

    # What a client sees, from both API processes.
    views = {}
    for n, job_id in enumerate(all_ids):
        r = cluster.client(n % N_APIS).get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        views[job_id] = r.json()
    for job_id, v in views.items():
        assert (v["status"], v["attempt"]) == ("succeeded", 1), (job_id, v["status"], v["attempt"], v["error"])
        assert v["model_id"] is not None, job_id
    latency = {job_id: ts(v["started_at"]) - ts(v["created_at"]) for job_id, v in views.items()}

    # Exactly once, in the database: one 'running' transition, one model, one claiming worker.
    with cluster.db.read_session() as s:
        running = dict(
            s.execute(
                text(
                    "SELECT job_id, count(*) FROM job_event WHERE type = 'status' AND status = 'running' "
                    "AND job_id = ANY(:ids) GROUP BY job_id"
                ),
                {"ids": all_ids},
            ).all()
        )
        models = dict(
            s.execute(
                text("SELECT job_id, count(*) FROM model WHERE job_id = ANY(:ids) GROUP BY job_id"), {"ids": all_ids}
            ).all()
        )
        owners = dict(s.execute(text("SELECT id, worker_id FROM job WHERE id = ANY(:ids)"), {"ids": all_ids}).all())
    assert {j: running.get(j, 0) for j in all_ids} == dict.fromkeys(all_ids, 1)
    assert {j: models.get(j, 0) for j in all_ids} == dict.fromkeys(all_ids, 1)

    logs = cluster.logs()
    claims: Counter[str] = Counter()
    ran_by: Counter[str] = Counter()
    for w in cluster.workers:
        pid = str(w.proc.pid)
        for job_id in all_ids:
            n = logs[w.name].count(f"job {job_id}: claimed")
            claims[job_id] += n
            if n:
                ran_by[w.name] += n
                assert owners[job_id].split(":")[-2] == pid, (job_id, owners[job_id], w.name)
    assert claims == dict.fromkeys(all_ids, 1), {j: n for j, n in claims.items() if n != 1}
    for name, log in logs.items():
        assert "Traceback" not in log, f"{name}:\n{log[-4000:]}"
        assert "database busy" not in log, f"{name}:\n{log[-4000:]}"
    for w in cluster.workers:
        w.check_alive()

    burst_latency = [latency[j] for j in burst]
    paced_latency = [latency[j] for j in paced]
    FIGURES.append(
        f"scale: {N_BURST + N_PACED}/{N_BURST + N_PACED} jobs succeeded exactly once (1 'running' event, attempt 1, "
        f"1 model, 1 claim each) on {N_WORKERS} worker processes {dict(sorted(ran_by.items()))} behind {N_APIS} API "
        f"processes; 0 double claims"
    )
    FIGURES.append(
        f"scale: burst of {N_BURST} ({BURST_CLIENTS} client threads, submitted in {submitted_in:.1f} s) drained in "
        f"{burst_seconds:.1f} s = {N_BURST / burst_seconds:.2f} jobs/s; start latency (queueing included) "
        f"{pcts(burst_latency)}"
    )
    FIGURES.append(
        f"scale: paced {N_PACED} ({PACED_CLIENTS} closed-loop clients, {N_PACED / paced_seconds:.2f} jobs/s), "
        f"submission-to-start latency with idle workers polling every {POLL_SECONDS:g} s: {pcts(paced_latency)}"
    )
    assert float(np.percentile(paced_latency, 50)) < 1.0, pcts(paced_latency)
