"""Benchmark scale-out: jobs per second completed by 1, 2 and 4 worker processes on SQLite and on PostgreSQL, and the
time from a job's submission to its start.

For each backend and worker count it makes a fresh database (a SQLite file in a temporary directory, or a new
PostgreSQL database it drops afterwards), runs `backprop migrate` and `backprop keys create`, starts one API process
(`backprop serve --workers 0`) and N `backprop worker --workers 1` processes, warms them up with one job each, then:

1. burst: submits all the small jobs at once (8 client threads over HTTP) and waits for them: jobs/s is the number of
   jobs over the time from the first job's `created_at` to the last one's `finished_at` (the database's clock); the
   start latency (`started_at - created_at`) of these jobs includes their time waiting in the queue;
2. idle start: a few more jobs, each submitted by one of N closed-loop clients once its previous job has finished, so
   that a worker is idle when it arrives: the start latency is then the wake-up time (a poll every 0.1 s on SQLite,
   LISTEN/NOTIFY on PostgreSQL, whose workers poll only every 2 s).

Jobs are tiny (2-8-2 MLP, 40 rows, 5 epochs): the figures measure the service's per-job cost (claim, a training
process per job, publishing), not the engine.

    .venv/bin/python bench/scale.py              # 48 jobs per configuration (a few minutes)
    .venv/bin/python bench/scale.py --quick      # 8 jobs per configuration (about a minute)

PostgreSQL: `--pg-url URL` or BACKPROP_TEST_DATABASE_URL (a server URL such as
postgresql+psycopg://postgres@127.0.0.1:5432/postgres; the benchmark creates and drops its own databases there).
Without one, the PostgreSQL rows are skipped. Prints a table and writes bench/results/scale-latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "backprop.bench.scale/1"
TERMINAL = ("succeeded", "failed", "cancelled")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
BURST_CLIENTS = 8

NETWORK = {
    "name": "bench-scale",
    "input_dim": 2,
    "layers": [{"units": 8, "activation": "tanh"}, {"units": 2, "activation": "softmax"}],
    "loss": "cross_entropy",
}
SIZES = {"full": {"jobs": 48, "idle_jobs": 12}, "quick": {"jobs": 8, "idle_jobs": 4}}


def tiny_dataset() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return {"name": "bench-scale", "features": np.round(x, 4).tolist(), "targets": ["a" if v else "b" for v in y]}


# --- helpers ----------------------------------------------------------------------------------------------------


def ts(value: str) -> float:
    d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()


def summary(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_s": float(np.percentile(a, 50)), "p95_s": float(np.percentile(a, 95)),
            "max_s": float(a.max())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Any, *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"backprop {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


class Proc:
    """A `python -m app.cli ...` process in its own session, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.log_path = directory / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes().decode(errors="replace")
        return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL to whatever is left of its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class PgAdmin:
    """Creates and drops the benchmark's own databases on a PostgreSQL server."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, make_url

        self.url = make_url(url)
        self.engine = create_engine(self.url, isolation_level="AUTOCOMMIT")

    def create(self) -> tuple[str, str]:
        name = f"bp_bench_scale_{uuid.uuid4().hex[:12]}"
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return name, self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, name: str) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.engine.dispose()


# --- one configuration ------------------------------------------------------------------------------------------


def run_config(backend: str, n_workers: int, url: str, workdir: Path, jobs: int, idle_jobs: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env.update(BACKPROP_DATABASE_URL=url, BACKPROP_DATA_DIR=str(workdir / "var"), BACKPROP_LOG_LEVEL="info",
               BACKPROP_MAX_ACTIVE_JOBS_PER_OWNER="100000", PYTHONUNBUFFERED="1")
    cli(env, "migrate")
    key = cli(env, "keys", "create", "bench").strip().splitlines()[-1]
    port = free_port()
    procs: list[Proc] = []
    clients: list[httpx.Client] = []
    local = threading.local()
    lock = threading.Lock()

    def client() -> httpx.Client:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0,
                                            headers={"Authorization": f"Bearer {key}"})
            with lock:
                clients.append(c)
        return c

    try:
        api = Proc("api", ["serve", "--workers", "0", "--host", "127.0.0.1", "--port", str(port)], env, workdir)
        procs.append(api)
        workers = [Proc(f"worker-{i + 1}", ["worker", "--workers", "1"], env, workdir) for i in range(n_workers)]
        procs += workers

        def api_ready() -> bool:
            api.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            return False

        wait_until(api_ready, timeout=START_TIMEOUT, what="the API process")
        for w in workers:
            wait_until(lambda w=w: (w.check_alive(), " started" in w.log())[1], timeout=START_TIMEOUT,
                       what=f"{w.name} to start")
        c = client()
        network_id = c.post("/v1/networks", json=NETWORK).raise_for_status().json()["id"]
        dataset_id = c.post("/v1/datasets", json=tiny_dataset()).raise_for_status().json()["id"]
        seeds = iter(range(1_000_000))

        def submit() -> str:
            body = {"network_id": network_id, "dataset_id": dataset_id, "epochs": 5, "batch_size": 8,
                    "seed": next(seeds)}
            r = client().post("/v1/jobs", json=body)
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/jobs -> {r.status_code}: {r.text[:500]}")
            return str(r.json()["id"])

        def view(job_id: str) -> dict[str, Any]:
            return dict(client().get(f"/v1/jobs/{job_id}").raise_for_status().json())

        def wait_done(ids: list[str], timeout: float) -> list[dict[str, Any]]:
            views: dict[str, dict[str, Any]] = {}

            def done() -> bool:
                for job_id in ids:
                    if job_id not in views:
                        v = view(job_id)
                        if v["status"] not in TERMINAL:
                            return False
                        views[job_id] = v
                return True

            wait_until(done, timeout=timeout, what=f"{len(ids)} jobs to finish", interval=0.05)
            return [views[j] for j in ids]

        # Warm-up: one job per worker (first imports, first connections), not measured.
        with ThreadPoolExecutor(n_workers) as pool:
            warm = list(pool.map(lambda _: submit(), range(n_workers)))
        wait_done(warm, timeout=120)

        # 1. burst
        t0 = time.monotonic()
        with ThreadPoolExecutor(BURST_CLIENTS) as pool:
            burst_ids = list(pool.map(lambda _: submit(), range(jobs)))
        burst = wait_done(burst_ids, timeout=60 + 10 * jobs)
        wall = time.monotonic() - t0
        span = max(ts(v["finished_at"]) for v in burst) - min(ts(v["created_at"]) for v in burst)

        # 2. idle start: closed-loop clients, one job in flight each, never more than the workers.
        def closed_loop(k: int) -> list[dict[str, Any]]:
            out = []
            for _ in range(k):
                out += wait_done([submit()], timeout=120)
            return out

        per_client = [idle_jobs // n_workers + (1 if i < idle_jobs % n_workers else 0) for i in range(n_workers)]
        with ThreadPoolExecutor(n_workers) as pool:
            idle = [v for views in pool.map(closed_loop, [k for k in per_client if k]) for v in views]

        finished = burst + idle
        outcome = Counter(f"{v['status']}/attempt {v['attempt']}" for v in finished)
        logs = "".join(p.log() for p in procs)
        return {
            "backend": backend,
            "workers": n_workers,
            "jobs": jobs,
            "jobs_per_s": jobs / span,
            "span_s": span,
            "client_wall_s": wall,
            "burst_start_latency": summary([ts(v["started_at"]) - ts(v["created_at"]) for v in burst]),
            "idle_start_latency": summary([ts(v["started_at"]) - ts(v["created_at"]) for v in idle]),
            "outcomes": dict(outcome),
            "all_succeeded_once": outcome == Counter({"succeeded/attempt 1": len(finished)}),
            "tracebacks_in_logs": logs.count("Traceback"),
        }
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.stop()


# --- main -------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "loadavg_before": os.getloadavg()}


def fmt_ms(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "-"
    return f"{s['p50_s'] * 1000:.0f} / {s['p95_s'] * 1000:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'backend':<11} {'workers':>7} {'jobs':>5} {'jobs/s':>7} {'burst start p50/p95 ms':>23} "
            f"{'idle start p50/p95 ms':>22}  ok")
    lines = [head, "-" * len(head)]
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['backend']:<11} {r['workers']:>7} {'-':>5} {'-':>7} {'-':>23} {'-':>22}  "
                         f"skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['backend']:<11} {r['workers']:>7} {r['jobs']:>5} {r['jobs_per_s']:>7.2f} "
            f"{fmt_ms(r['burst_start_latency']):>23} {fmt_ms(r['idle_start_latency']):>22}  "
            f"{'yes' if r['all_succeeded_once'] and not r['tracebacks_in_logs'] else 'NO ' + str(r['outcomes'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 jobs per configuration")
    p.add_argument("--jobs", type=int, help="burst jobs per configuration (default 48, quick 8)")
    p.add_argument("--idle-jobs", type=int, help="idle-start jobs per configuration (default 12, quick 4)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    p.add_argument("--pg-url", default=os.environ.get("BACKPROP_TEST_DATABASE_URL"),
                   help="a PostgreSQL server URL (default BACKPROP_TEST_DATABASE_URL)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    jobs = args.jobs or size["jobs"]
    idle_jobs = args.idle_jobs or size["idle_jobs"]

    report: dict[str, Any] = {"schema": SCHEMA, "quick": args.quick, "created": dt.datetime.now(dt.UTC).isoformat(),
                              "machine": machine(), "jobs": jobs, "idle_jobs": idle_jobs, "results": []}
    pg = PgAdmin(args.pg_url) if "postgresql" in args.backends and args.pg_url else None
    t_start = time.monotonic()
    try:
        for backend in args.backends:
            for n in args.workers:
                if backend == "postgresql" and pg is None:
                    report["results"].append({"backend": backend, "workers": n,
                                              "skipped": "no --pg-url or BACKPROP_TEST_DATABASE_URL"})
                    continue
                print(f"{backend}, {n} worker(s): {jobs} jobs ...", flush=True)
                with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
                    workdir = Path(tmp)
                    name = None
                    if backend == "postgresql":
                        assert pg is not None
                        name, url = pg.create()
                    else:
                        url = f"sqlite:///{workdir / 'bench.db'}"
                    try:
                        result = run_config(backend, n, url, workdir, jobs, idle_jobs)
                    finally:
                        if name is not None and pg is not None:
                            pg.drop(name)
                report["results"].append(result)
                print(f"  {result['jobs_per_s']:.2f} jobs/s; idle start {fmt_ms(result['idle_start_latency'])} ms",
                      flush=True)
    finally:
        if pg is not None:
            pg.close()
    report["seconds"] = time.monotonic() - t_start
    report["machine"]["loadavg_after"] = os.getloadavg()
    print()
    print(table(report["results"]))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "scale-latest.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out} ({report['seconds']:.0f} s)")
    bad = [r for r in report["results"] if "skipped" not in r and
           (not r["all_succeeded_once"] or r["tracebacks_in_logs"])]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
