"""Claim exclusivity: three worker processes draining one database run every job exactly once, without ever
surfacing "database is locked" (DESIGN.md §3, §7, acceptance check 1 at CI size)."""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter

import pytest

from tests.durability.conftest import Env, Jobs, count_models, figure, get_job, transitions, wait_for

pytestmark = pytest.mark.integration
log = logging.getLogger("durability")

N_JOBS = 30
N_WORKERS = 3


def test_three_workers_run_each_of_thirty_jobs_exactly_once(env: Env):
    jobs = Jobs(env.db)
    ids = [jobs.submit("tiny", seed=i) for i in range(N_JOBS)]
    cluster = env.cluster
    workers = [cluster.start(f"w{i + 1}", wait=False) for i in range(N_WORKERS)]
    t0 = time.monotonic()

    def finished() -> bool:
        return all(get_job(env.db, j).status in ("succeeded", "failed", "cancelled") for j in ids)

    wait_for(finished, timeout=150, what=f"all {N_JOBS} jobs to finish", interval=0.2)
    elapsed = time.monotonic() - t0

    ran_by: Counter[str] = Counter()
    for job_id in ids:
        job = get_job(env.db, job_id)
        assert job.status == "succeeded", (job_id, job.status, job.error_code, job.error)
        assert (job.attempt, job.rescue_count) == (1, 0), job_id
        statuses = transitions(env.db, job_id)
        assert [s for s, _ in statuses] == ["queued", "running", "succeeded"], (job_id, statuses)
        assert statuses[1][1]["worker_id"] == job.worker_id
        assert count_models(env.db, job_id) == 1
        owner = [w for w in workers if w.owns(job.worker_id)]
        assert len(owner) == 1, job.worker_id
        ran_by[owner[0].name] += 1

    for w in workers:
        w.send(signal.SIGTERM)
    exits = [w.wait_exit(30) for w in workers]
    for w in workers:
        text = w.log()
        assert w.proc.returncode == 0, text[-3000:]
        assert "database is locked" not in text, text
        assert "database busy" not in text, text  # the supervisor's loop logs a swallowed SQLITE_BUSY this way
        assert "Traceback" not in text, text
    figure(
        f"claim exclusivity: {N_JOBS}/{N_JOBS} jobs once each by {N_WORKERS} workers {dict(sorted(ran_by.items()))}, "
        f"0 double claims, 0 'database is locked'; {N_JOBS / elapsed:.1f} jobs/s end to end ({elapsed:.1f} s); "
        f"SIGTERM exits when idle {max(exits):.2f} s max"
    )
