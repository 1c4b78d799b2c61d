"""Benchmark the service end to end: a real `backprop serve` process on loopback, driven over HTTP with httpx.

It migrates a fresh SQLite database in a temporary directory, starts `python -m app.cli serve --workers 1` on a free
port, reads the first API key from its stdout and measures:

1. predict latency (p50/p99) for 1 row and for 1,000 rows on a trained model, sequential requests on one keep-alive
   connection after a warm-up (the service caches loaded models); plus /healthz and GET /v1/models/{id} as floors;
2. the time from a job's submission to its start on an idle worker: the job's own `started_at - created_at` and the
   client-observed time (submit, then poll GET /v1/jobs/{id} tightly), over several small jobs;
3. the wall time of one training job through the API (POST /v1/jobs until `succeeded`, client-observed) divided by
   the engine's own `Trainer.fit()` time for the same spec, config, seed and data, run directly in a subprocess with
   BLAS pinned to one thread like the worker's training child; with a breakdown of where the difference goes (queue
   wait, child start-up until its first epoch record, publishing, finishing, noticing the end).

    .venv/bin/python bench/service.py            # full run (about two minutes)
    .venv/bin/python bench/service.py --quick    # smoke run with tiny sizes (well under a minute)

Writes bench/results/service-latest.json. The server is stopped with SIGTERM (bounded wait, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "backprop.bench.service/1"
BLAS_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TERMINAL = ("succeeded", "failed", "cancelled")

TARGET_PREDICT_1ROW_P50_MS = 5.0
TARGET_START_LATENCY_S = 0.5
TARGET_OVERHEAD_RATIO = 1.05

SIZES: dict[str, dict[str, Any]] = {
    # rows x features, classes, hidden layers, epochs, batch: about 15 s of engine time on one core.
    "full": {"rows": 20_000, "features": 50, "classes": 10, "hidden": (256, 128), "epochs": 120, "batch": 64,
             "predict_1": 400, "predict_1000": 200, "warmup": 30, "floor_n": 100, "start_jobs": 10,
             "import_runs": 3},
    "quick": {"rows": 2_000, "features": 20, "classes": 10, "hidden": (64, 32), "epochs": 5, "batch": 64,
              "predict_1": 60, "predict_1000": 20, "warmup": 5, "floor_n": 20, "start_jobs": 4, "import_runs": 1},
}

# Runs in a subprocess with BLAS pinned to one thread: the engine alone, timing Trainer(...) and trainer.fit().
ENGINE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from app.engine import NetworkSpec, TrainConfig, Trainer
t_import = time.perf_counter() - t0
args = json.loads(sys.argv[1])
with np.load(args["data"]) as d:
    x, y = d["x"], d["y"]
spec, config = NetworkSpec.from_dict(args["spec"]), TrainConfig.from_dict(args["config"])
t1 = time.perf_counter()
trainer = Trainer(spec, config, x, y)
t_init = time.perf_counter() - t1
t2 = time.perf_counter()
result = trainer.fit()
t_fit = time.perf_counter() - t2
t3 = time.perf_counter()
ck = trainer.checkpoint()  # what every publish serializes
t_ck = time.perf_counter() - t3
h = result.history
print(json.dumps({"import_s": t_import, "init_s": t_init, "fit_s": t_fit, "epochs": len(h),
                  "checkpoint_ms": t_ck * 1000, "checkpoint_bytes": len(ck),
                  "epoch_seconds": [r["seconds"] for r in h], "final_loss": h[-1]["loss"],
                  "final_accuracy": h[-1]["metrics"].get("accuracy")}))
"""


# --- helpers ----------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ts(value: str | None) -> float | None:
    """An API timestamp (ISO 8601, UTC) as seconds since the epoch, comparable with time.time() on this host."""
    if value is None:
        return None
    d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(client: httpx.Client, method: str, url: str, *, ok: tuple[int, ...] = (200, 201, 202), **kw: Any) -> Any:
    r = client.request(method, url, **kw)
    if r.status_code not in ok:
        raise RuntimeError(f"{method} {url} -> {r.status_code}: {r.text[:800]}")
    return r.json() if r.content else None


class Server:
    """`backprop migrate` then `backprop serve --workers 1` on a fresh SQLite file; stopped with SIGTERM."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db_path = workdir / "bench.db"
        self.log_path = workdir / "server.log"
        self.env = os.environ.copy()
        self.env.update({"BACKPROP_DATABASE_URL": f"sqlite:///{self.db_path}", "BACKPROP_DATA_DIR": str(workdir),
                         "PYTHONUNBUFFERED": "1"})
        self.proc: subprocess.Popen[str] | None = None
        self.key: str | None = None
        self.port = 0
        self.worker_pids: list[int] = []
        self._key_ready = threading.Event()
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> dict[str, float]:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=ROOT, env=self.env, check=True,
                       capture_output=True, text=True, timeout=180)
        t_migrate = time.perf_counter() - t0
        self.port = free_port()
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        t1 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True,
        )
        threading.Thread(target=self._read_stdout, daemon=True, name="serve-stdout").start()
        deadline = time.monotonic() + timeout
        while not self._key_ready.wait(0.05):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("serve printed no bp_live_ key in time\n" + self.log_tail())
        while True:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not become ready in time\n" + self.log_tail())
            time.sleep(0.05)
        t_ready = time.perf_counter() - t1
        self.worker_pids = self._children(self.proc.pid)
        return {"migrate_s": t_migrate, "serve_ready_s": t_ready}

    def _read_stdout(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # keep draining: the worker shares this pipe
            if self.key is None and line.startswith("bp_live_"):
                self.key = line.strip()
                self._key_ready.set()

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"serve exited with code {self.proc.returncode}\n" + self.log_tail())

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    out += [int(c) for c in (task / "children").read_text().split()]
        return out

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-n:])
        return ""

    def log_offset(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0

    def access_ms(self, start: int, path_part: str) -> list[float]:
        """Server-side milliseconds of the requests logged after byte `start` whose path contains `path_part`."""
        time.sleep(0.05)
        with open(self.log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            i = line.find("backprop.access ")
            if i < 0:
                continue
            with contextlib.suppress(ValueError):
                rec = json.loads(line[i + len("backprop.access "):])
                if path_part in rec.get("path", ""):
                    out.append(float(rec["ms"]))
        return out

    def stop(self, timeout: float = 45.0) -> dict[str, Any]:
        info: dict[str, Any] = {"killed": False}
        if self.proc is None:
            return info
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                info["killed"] = True
        info["stop_s"] = time.perf_counter() - t0
        info["exit_code"] = self.proc.returncode
        # serve stops its worker itself; if serve had to be killed, the worker (its own session) is ours to end.
        for pid in self.worker_pids:
            with contextlib.suppress(OSError):
                if "app.cli" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
                    info["killed_worker"] = pid
        if self._log is not None:
            self._log.close()
        return info


# --- data -------------------------------------------------------------------------------------------------------


def make_data(rows: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A classification set as CSV bytes, and the arrays exactly as the server parses them (float() of each cell)."""
    try:
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=rows, n_features=features, n_informative=max(4, features * 3 // 5),
                                   n_redundant=features // 5, n_classes=classes, random_state=seed)
    except ImportError:  # Gaussian blobs are enough to time
        rng = np.random.default_rng(seed)
        centers = rng.normal(0, 2, (classes, features))
        y = rng.integers(0, classes, rows)
        x = centers[y] + rng.normal(0, 1, (rows, features))
    cells = [[f"{v:.6g}" for v in row] for row in x.tolist()]
    lines = [",".join([*(f"f{i}" for i in range(features)), "label"])]
    lines += [",".join([*r, str(int(label))]) for r, label in zip(cells, y.tolist(), strict=True)]
    x_exact = np.array([[float(c) for c in r] for r in cells], dtype=np.float64)
    return x_exact, y.astype(np.int64), ("\n".join(lines) + "\n").encode()


def network_body(features: int, hidden: tuple[int, ...], classes: int, name: str) -> dict[str, Any]:
    return {"name": name, "input_dim": features, "loss": "cross_entropy",
            "layers": [*({"units": h, "activation": "relu"} for h in hidden),
                       {"units": classes, "activation": "softmax"}]}


# --- measurements -----------------------------------------------------------------------------------------------


def run_engine(data_path: Path, spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    env = os.environ.copy()
    env.update(BLAS_ONE_THREAD)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    arg = json.dumps({"data": str(data_path), "spec": spec, "config": config})
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", ENGINE_CHILD, arg], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=False, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"engine subprocess failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def child_import_seconds(runs: int) -> dict[str, Any]:
    """What a spawned training child imports before it can train: a cold `import app.cli, app.worker.runner`."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import app.cli, app.worker.runner"], cwd=ROOT, check=True,
                       env={**os.environ, **BLAS_ONE_THREAD})
        walls.append(time.perf_counter() - t0)
    top: dict[str, float] = {}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import app.cli, app.worker.runner"], cwd=ROOT,
                         capture_output=True, text=True, check=False, env={**os.environ, **BLAS_ONE_THREAD})
    wanted = ("sqlalchemy", "sqlalchemy.orm", "psycopg", "pydantic", "pydantic_settings", "numpy", "app.engine",
              "app.db", "app.config", "app.cli", "app.worker.runner", "app.services.resources")
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() in wanted:
            with contextlib.suppress(ValueError):
                top.setdefault(parts[2].strip(), int(parts[1]) / 1e6)
    return {"wall_s": walls, "min_wall_s": min(walls), "cumulative_import_s": top}


def time_posts(client: httpx.Client, url: str, body: bytes, n: int, warmup: int) -> list[float]:
    headers = {"Content-Type": "application/json"}
    for _ in range(warmup):
        call(client, "POST", url, content=body, headers=headers)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post(url, content=body, headers=headers)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"POST {url} -> {r.status_code}: {r.text[:500]}")
    return out


def time_gets(client: httpx.Client, url: str, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call(client, "GET", url)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} -> {r.status_code}: {r.text[:500]}")
    return out


def wait_job(client: httpx.Client, job_id: str, *, poll: float, timeout: float) -> tuple[dict[str, Any], float | None]:
    """Poll until terminal: (final view, time.time() when epoch >= 1 was first seen)."""
    first_epoch_seen = None
    deadline = time.monotonic() + timeout
    while True:
        j = call(client, "GET", f"/v1/jobs/{job_id}")
        if first_epoch_seen is None and j["epoch"] >= 1:
            first_epoch_seen = time.time()
        if j["status"] in TERMINAL:
            return j, first_epoch_seen
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {j['status']} after {timeout:.0f} s")
        time.sleep(poll)


def db_peek(db_path: Path, job_id: str) -> dict[str, Any] | None:
    """Read-only look at the job's rows: when each epoch record was written (= publish times) and the publish count."""
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT epoch, created_at FROM epoch_metric WHERE job_id = ? ORDER BY epoch",
                               (job_id,)).fetchall()
            seq = con.execute("SELECT checkpoint_seq FROM job WHERE id = ?", (job_id,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return {"error": str(exc)}

    def parse(v: str) -> float:
        d = dt.datetime.fromisoformat(v)
        return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()

    return {"epoch_written_at": [parse(r[1]) for r in rows], "checkpoint_seq": seq[0] if seq else None}


def start_latency(client: httpx.Client, network_id: str, dataset_id: str, n: int, seed: int) -> dict[str, Any]:
    """Small jobs, one at a time, each submitted to an idle worker at a random phase of its poll loop."""
    rng = random.Random(seed)
    runs = []
    body = {"network_id": network_id, "dataset_id": dataset_id, "epochs": 1, "batch_size": 32, "seed": 1}
    for _ in range(n):
        time.sleep(rng.uniform(0.0, 0.7))
        t0 = time.time()
        job = call(client, "POST", "/v1/jobs", json=body)
        t_posted = time.time()
        polls = 0
        while True:
            j = call(client, "GET", f"/v1/jobs/{job['id']}")
            polls += 1
            if j["started_at"] is not None or j["status"] != "queued":
                t_seen = time.time()
                break
        final, _ = wait_job(client, job["id"], poll=0.01, timeout=120)
        t_done = time.time()
        if final["status"] != "succeeded":
            raise RuntimeError(f"small job {job['id']} ended {final['status']}: {final.get('error')}")
        created, started, finished = ts(final["created_at"]), ts(final["started_at"]), ts(final["finished_at"])
        assert created is not None
        assert started is not None
        assert finished is not None
        runs.append({"server_s": started - created, "client_s": t_seen - t0, "post_ms": (t_posted - t0) * 1000,
                     "polls": polls, "run_s": finished - started, "submit_to_succeeded_client_s": t_done - t0})
    return {"runs": runs,
            **{f"{k}_p50": statistics.median(r[k] for r in runs) for k in ("server_s", "client_s", "run_s",
                                                                          "submit_to_succeeded_client_s")},
            **{f"{k}_max": max(r[k] for r in runs) for k in ("server_s", "client_s", "run_s")}}


# --- the run ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    size = dict(SIZES["quick" if args.quick else "full"])
    for k in ("rows", "epochs"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "httpx": httpx.__version__,
            "backprop_env": {k: v for k, v in os.environ.items() if k.startswith("BACKPROP_")},
            "poll_seconds": float(os.environ.get("BACKPROP_POLL_SECONDS", "0.1")), "loadavg_start": os.getloadavg()}
    print(f"service bench{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, python {info['python']}, "
          f"numpy {info['numpy']}; worker poll {info['poll_seconds']} s; workdir {workdir}")
    if info["loadavg_start"][0] > 0.5:
        print(f"  warning: load average {info['loadavg_start'][0]:.2f} before starting; other processes will skew "
              f"the timings (this bench wants an otherwise idle machine)")
    report: dict[str, Any] = {"schema": SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "quick": args.quick, "machine": info, "sizes": {**size, "hidden": list(size["hidden"])}}
    server = Server(workdir)
    report["server"] = server.start()
    print(f"  migrate {report['server']['migrate_s']:.2f} s, serve ready {report['server']['serve_ready_s']:.2f} s "
          f"on port {server.port}")
    client = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"}, timeout=300)
    try:
        measure(args, size, server, client, workdir, report)
    finally:
        client.close()
        report["server"]["stop"] = server.stop()
        print(f"  server stopped in {report['server']['stop'].get('stop_s', 0):.2f} s"
              f"{' (killed)' if report['server']['stop']['killed'] else ''}")
    info["loadavg_end"] = os.getloadavg()
    report["table"] = table(report)
    return report


def measure(args: argparse.Namespace, size: dict[str, Any], server: Server, client: httpx.Client, workdir: Path,
            report: dict[str, Any]) -> None:
    # Data, network, engine config.
    x, y, csv_bytes = make_data(size["rows"], size["features"], size["classes"], args.seed)
    data_path = workdir / "train.npz"
    np.savez(data_path, x=x, y=y)
    t0 = time.perf_counter()
    ds = call(client, "POST", "/v1/datasets", files={"file": ("bench.csv", csv_bytes, "text/csv")},
              data={"target": "label", "task": "classification", "name": "bench"})
    upload_s = time.perf_counter() - t0
    net_body = network_body(size["features"], size["hidden"], size["classes"], "bench")
    net = call(client, "POST", "/v1/networks", json=net_body)
    job_body = {"network_id": net["id"], "dataset_id": ds["id"], "epochs": size["epochs"],
                "batch_size": size["batch"], "optimizer": {"name": "adam", "learning_rate": 0.001},
                "seed": args.seed + 7, "dtype": "float32", "standardize": True}
    from app.engine import TrainConfig  # the same normalization the service applies

    engine_cfg = TrainConfig.from_dict({k: v for k, v in job_body.items() if k in TrainConfig.FIELDS}).to_dict()
    engine_spec = {k: v for k, v in net_body.items() if k != "name"}
    print(f"  dataset {size['rows']:,} x {size['features']} ({len(csv_bytes) / 1e6:.1f} MB CSV) uploaded in "
          f"{upload_s:.2f} s; network {net['n_params']:,} params; job {size['epochs']} epochs, batch {size['batch']}")

    # 3. Training overhead: engine alone, the API job, engine alone again.
    engine_runs = [run_engine(data_path, engine_spec, engine_cfg)]
    print(f"  engine fit #1: {engine_runs[0]['fit_s']:.2f} s")
    t_submit = time.time()
    p0 = time.perf_counter()
    job = call(client, "POST", "/v1/jobs", json=job_body)
    final, first_epoch_seen = wait_job(client, job["id"], poll=args.poll_ms / 1000,
                                       timeout=60 + 20 * engine_runs[0]["fit_s"])
    api_wall = time.perf_counter() - p0
    t_end_seen = time.time()
    if final["status"] != "succeeded":
        raise RuntimeError(f"training job ended {final['status']}: {final.get('error')}")
    print(f"  API job: {api_wall:.2f} s submit -> succeeded (client)")
    # The job's own timestamps: submission accepted -> final state written, free of the client's poll interval.
    server_wall = ts(final["finished_at"]) - ts(final["created_at"])
    for i in range(1, args.engine_runs):
        engine_runs.append(run_engine(data_path, engine_spec, engine_cfg))
        print(f"  engine fit #{i + 1}: {engine_runs[-1]['fit_s']:.2f} s")
    hist = call(client, "GET", f"/v1/jobs/{job['id']}/history")["data"]
    job_engine_cfg = {k: v for k, v in final["spec"].items() if k in TrainConfig.FIELDS}
    fits = [r["fit_s"] for r in engine_runs]
    engine_fit = statistics.median(fits)
    created, started, finished = ts(final["created_at"]), ts(final["started_at"]), ts(final["finished_at"])
    assert created is not None
    assert started is not None
    assert finished is not None
    claim_at = next((ts(t["at"]) for t in final["transitions"] if t["status"] == "running"), started)
    assert claim_at is not None
    epoch_s = [h["seconds"] for h in hist]
    peek = db_peek(server.db_path, job["id"])
    written = peek.get("epoch_written_at") if peek else None
    first_written = written[0] if written else None
    # A publish writes the epoch records pending since the previous one in one transaction: records written less
    # than half an epoch apart form one group. The time between two groups' writes, minus the epochs trained in
    # between, is what one publish costs (checkpoint, blob transaction, fenced transaction). The last group is
    # written with the model.
    publish_excess: list[float] = []
    finish_excess = None
    starts: list[int] = []
    if written and len(written) == len(epoch_s):
        gap = max(0.0005, min(0.05, 0.5 * min(epoch_s)))
        starts = [i for i in range(len(written)) if i == 0 or written[i] - written[i - 1] > gap]
        bounds = list(zip(starts, [*starts[1:], len(written)], strict=True))
        for (a0, _), (a, b) in itertools.pairwise(bounds):
            publish_excess.append(written[a] - written[a0] - sum(epoch_s[a:b]))
        if publish_excess:
            finish_excess = publish_excess.pop()
    train = {
        "job_id": job["id"], "epochs": len(hist), "api_wall_s": api_wall, "engine_fit_s": fits,
        "engine_fit_median_s": engine_fit, "ratio": api_wall / engine_fit,
        "server_wall_s": server_wall, "server_ratio": server_wall / engine_fit,
        "ratio_range": [api_wall / max(fits), api_wall / min(fits)],
        "engine_import_s": [r["import_s"] for r in engine_runs], "engine_init_s": [r["init_s"] for r in engine_runs],
        "config_matches_job": job_engine_cfg == engine_cfg,
        "final_loss_api": hist[-1]["loss"] if hist else None, "final_loss_engine": engine_runs[0]["final_loss"],
        "post_ms": (created - t_submit) * 1000,  # request -> row created (clock of this host)
        "queue_wait_s": started - created,
        "claim_to_finished_s": finished - claim_at,
        "sum_epoch_seconds_api": sum(epoch_s),
        "sum_epoch_seconds_engine": [sum(r["epoch_seconds"]) for r in engine_runs],
        "median_epoch_s_api": statistics.median(epoch_s) if epoch_s else None,
        "median_epoch_s_engine": statistics.median(engine_runs[0]["epoch_seconds"]),
        "child_outside_epochs_s": (finished - claim_at) - sum(epoch_s),
        "end_noticed_after_s": t_end_seen - finished,
        "first_epoch_seen_client_after_claim_s": None if first_epoch_seen is None else first_epoch_seen - claim_at,
        "first_epoch_written_after_claim_s": None if first_written is None else first_written - claim_at,
        "child_startup_s": None if first_written is None else first_written - claim_at - epoch_s[0],
        "publishes": len(starts) or None,
        "publish_cost_ms_p50": statistics.median(publish_excess) * 1000 if publish_excess else None,
        "publish_cost_total_s": sum(publish_excess) if publish_excess else None,
        "finish_cost_s": finish_excess,
        "checkpoint_ms": engine_runs[0]["checkpoint_ms"], "checkpoint_bytes": engine_runs[0]["checkpoint_bytes"],
        "api_minus_engine_s": api_wall - engine_fit,
        "ratio_vs_child_epochs": api_wall / sum(epoch_s) if epoch_s else None,
        "checkpoint_seq": None if peek is None else peek.get("checkpoint_seq"),
        "poll_ms": args.poll_ms,
    }
    train["bit_identical"] = train["final_loss_api"] == train["final_loss_engine"]
    report["training"] = train
    report["child_import"] = child_import_seconds(size["import_runs"])

    # 1. Predict latency on the trained model, plus two floors: /healthz (no auth, no DB) and GET model (auth + DB).
    model_id = final["model_id"]
    url = f"/v1/models/{model_id}/predict"
    rng = np.random.default_rng(args.seed)
    one = json.dumps({"inputs": x[:1].tolist()}).encode()
    thousand = json.dumps({"inputs": x[rng.choice(len(x), 1000, replace=len(x) < 1000)].tolist()}).encode()
    pred: dict[str, Any] = {"model_id": model_id, "body_bytes_1": len(one), "body_bytes_1000": len(thousand)}
    for name, body, n in (("1", one, size["predict_1"]), ("1000", thousand, size["predict_1000"])):
        off = server.log_offset()
        ms = time_posts(client, url, body, n, size["warmup"])
        server_ms = server.access_ms(off, "/predict")[size["warmup"]:]
        pred[f"rows_{name}"] = {"n": n, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": statistics.mean(ms),
                                "max_ms": max(ms), "samples_ms": [round(v, 3) for v in ms],
                                "server_p50_ms": pct(server_ms, 50) if server_ms else None,
                                "server_p99_ms": pct(server_ms, 99) if server_ms else None}
    for name, path in (("healthz", "/healthz"), ("get_model", f"/v1/models/{model_id}"),
                       ("get_job", f"/v1/jobs/{job['id']}")):
        off = server.log_offset()
        ms = time_gets(client, path, size["floor_n"], size["warmup"])
        server_ms = server.access_ms(off, path)[size["warmup"]:]
        pred[name] = {"n": size["floor_n"], "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
                      "server_p50_ms": pct(server_ms, 50) if server_ms else None}
    report["predict"] = pred
    print(f"  predict 1 row p50 {pred['rows_1']['p50_ms']:.2f} ms, 1000 rows p50 {pred['rows_1000']['p50_ms']:.2f} ms")

    # 2. Start latency on an idle worker, with small jobs.
    small_x = np.round(np.random.default_rng(1).normal(size=(64, 4)), 4)
    small_ds = call(client, "POST", "/v1/datasets",
                    json={"features": small_x.tolist(), "targets": [int(v > 0) for v in small_x[:, 0]]})
    small_net = call(client, "POST", "/v1/networks", json=network_body(4, (8,), 2, "small"))
    report["start"] = start_latency(client, small_net["id"], small_ds["id"], size["start_jobs"], args.seed)
    print(f"  start latency p50 {report['start']['server_s_p50']:.3f} s (job timestamps), "
          f"{report['start']['client_s_p50']:.3f} s (client)")


def table(report: dict[str, Any]) -> list[dict[str, Any]]:
    p, s, t = report["predict"], report["start"], report["training"]

    def row(metric: str, value: float, unit: str, target: float | None = None, cmp: str = "<") -> dict[str, Any]:
        ok = None if target is None else (value < target if cmp == "<" else value <= target)
        return {"metric": metric, "value": value, "unit": unit, "target": target, "cmp": cmp, "pass": ok}

    rows = [
        row("predict 1 row p50", p["rows_1"]["p50_ms"], "ms", TARGET_PREDICT_1ROW_P50_MS),
        row("predict 1 row p99", p["rows_1"]["p99_ms"], "ms"),
        row("predict 1000 rows p50", p["rows_1000"]["p50_ms"], "ms"),
        row("predict 1000 rows p99", p["rows_1000"]["p99_ms"], "ms"),
        row("start latency p50 (job timestamps)", s["server_s_p50"], "s", TARGET_START_LATENCY_S),
        row("start latency max (job timestamps)", s["server_s_max"], "s", TARGET_START_LATENCY_S),
        row("start latency p50 (client)", s["client_s_p50"], "s", TARGET_START_LATENCY_S),
        row("start latency max (client)", s["client_s_max"], "s", TARGET_START_LATENCY_S),
        row("training wall via API", t["api_wall_s"], "s"),
        row(f"engine fit (median of {len(t['engine_fit_s'])} runs)", t["engine_fit_median_s"], "s"),
        row("API wall / engine fit", t["ratio"], "x", TARGET_OVERHEAD_RATIO, "<="),
        row("  job's own created_at -> finished_at / engine fit", t["server_ratio"], "x", TARGET_OVERHEAD_RATIO, "<="),
        row("  API wall - engine fit", t["api_minus_engine_s"], "s"),
        row("  API wall / child's own epoch seconds", t["ratio_vs_child_epochs"] or float("nan"), "x"),
    ]
    if t.get("first_epoch_written_after_claim_s") is not None:
        rows.append(row("claim -> first epoch record written", t["first_epoch_written_after_claim_s"], "s"))
        rows.append(row("  of which child start-up (minus epoch 1)", t["child_startup_s"], "s"))
    return rows


def print_report(report: dict[str, Any]) -> None:
    t, s, p, ci = report["training"], report["start"], report["predict"], report["child_import"]
    print(f"\n{'metric':44s} {'value':>10s}  {'target':>9s}  result")
    for r in report["table"]:
        v = f"{r['value']:.3f} {r['unit']}" if r["unit"] != "ms" else f"{r['value']:.2f} ms"
        tg = "-" if r["target"] is None else f"{r['cmp']} {r['target']:g} {r['unit']}"
        res = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        print(f"{r['metric']:44s} {v:>10s}  {tg:>9s}  {res}")
    print("\nwhere the time goes")
    print(f"  training job: POST {t['post_ms']:.1f} ms; queue wait {t['queue_wait_s']:.3f} s; claim -> finished "
          f"{t['claim_to_finished_s']:.2f} s of which epochs {t['sum_epoch_seconds_api']:.2f} s and outside epochs "
          f"{t['child_outside_epochs_s']:.2f} s; end noticed {t['end_noticed_after_s'] * 1000:.0f} ms after "
          f"finished_at (poll {t['poll_ms']:g} ms)")
    print(f"  per-epoch compute: median {t['median_epoch_s_api'] * 1000:.1f} ms in the child vs "
          f"{t['median_epoch_s_engine'] * 1000:.1f} ms engine alone; epochs sum {t['sum_epoch_seconds_api']:.2f} s vs "
          f"{', '.join(f'{v:.2f}' for v in t['sum_epoch_seconds_engine'])} s")
    if t.get("publishes") is not None:
        nan = float("nan")
        print(f"  publishes: epoch records written in {t['publishes']} batches over {t['epochs']} epochs "
              f"({t['checkpoint_seq']} with a checkpoint, the last with the model); cost per publish p50 "
              f"{t['publish_cost_ms_p50'] or nan:.1f} ms, total {t['publish_cost_total_s'] or nan:.2f} s; last "
              f"(model + finish) {t['finish_cost_s'] or nan:.2f} s; checkpoint() alone {t['checkpoint_ms']:.1f} ms, "
              f"{t['checkpoint_bytes'] / 1e6:.2f} MB")
    print(f"  engine runs: fit {', '.join(f'{v:.2f}' for v in t['engine_fit_s'])} s (ratio range "
          f"{t['ratio_range'][0]:.3f}-{t['ratio_range'][1]:.3f}); same config as the job: {t['config_matches_job']}; "
          f"final loss identical: {t['bit_identical']}")
    imp = ", ".join(f"{k} {v:.2f}" for k, v in sorted(ci["cumulative_import_s"].items(), key=lambda kv: -kv[1]))
    print(f"  child imports: cold `import app.cli, app.worker.runner` {ci['min_wall_s']:.2f} s (min of "
          f"{len(ci['wall_s'])}); cumulative s: {imp}")
    print(f"  small jobs: claim -> finished p50 {s['run_s_p50']:.2f} s (max {s['run_s_max']:.2f}); submit -> "
          f"succeeded (client) p50 {s['submit_to_succeeded_client_s_p50']:.2f} s")
    srv = ", ".join(f"{k} {p[k]['p50_ms']:.2f} ms (server {p[k]['server_p50_ms'] or float('nan'):.2f})"
                    for k in ("healthz", "get_model", "get_job"))
    print(f"  request floors p50: {srv}")
    print(f"  predict server-side p50: 1 row {p['rows_1']['server_p50_ms'] or float('nan'):.2f} ms, 1000 rows "
          f"{p['rows_1000']['server_p50_ms'] or float('nan'):.2f} ms (request bodies {p['body_bytes_1']:,} / "
          f"{p['body_bytes_1000']:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, well under a minute")
    p.add_argument("--rows", type=int, default=None, help="override the training set's rows")
    p.add_argument("--epochs", type=int, default=None, help="override the training job's epochs")
    p.add_argument("--engine-runs", type=int, default=3, help="direct engine runs: one before the API job, the "
                   "rest after; the ratio uses their median")
    p.add_argument("--poll-ms", type=float, default=50.0, help="client poll interval while the training job runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service-latest.json")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, server.log)")
    args = p.parse_args(argv)
    args.engine_runs = max(1, args.engine_runs)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    tmp = tempfile.mkdtemp(prefix="backprop-bench-")
    try:
        report = run(args, Path(tmp))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
