"""Crash loop: a job whose training child dies every time fails with `worker_lost` after exactly max_attempts
attempts, while the other jobs on the same two workers all succeed (DESIGN.md §2, acceptance check 7)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from tests.durability.conftest import (
    POLL,
    Background,
    Env,
    Jobs,
    count_models,
    figure,
    get_job,
    transitions,
    wait_for,
)

pytestmark = pytest.mark.integration
log = logging.getLogger("durability")

N_NORMAL = 6
MAX_ATTEMPTS = 3


def test_a_job_whose_child_always_dies_fails_after_max_attempts(env: Env):
    jobs = Jobs(env.db)
    doomed = jobs.submit()  # long enough that its child is always caught mid-run
    normal = [jobs.submit("tiny", seed=i) for i in range(N_NORMAL)]
    cluster = env.cluster
    cluster.start("w1", wait=False)
    cluster.start("w2", wait=False)
    t0 = time.monotonic()
    stop = threading.Event()
    kills: list[tuple[int, float]] = []  # (attempt, seconds since start)

    def assassin() -> None:
        """Kill the doomed job's training child as soon as each attempt of it is running."""
        killed: set[int] = set()
        while not stop.is_set():
            job = get_job(env.db, doomed)
            if job.status not in ("queued", "running"):
                return
            if job.status == "running" and job.attempt not in killed:
                worker = cluster.by_worker_id(job.worker_id)
                kids = worker.training_children()
                again = get_job(env.db, doomed)
                # Still this attempt on this worker after the scan: the one child is the doomed job's.
                if len(kids) == 1 and (again.status, again.lease_token) == ("running", job.lease_token):
                    os.kill(kids[0], signal.SIGKILL)
                    killed.add(job.attempt)
                    kills.append((job.attempt, round(time.monotonic() - t0, 3)))
                    log.warning("crash loop: killed child %d of %s, attempt %d", kids[0], worker, job.attempt)
            stop.wait(POLL)

    watcher = Background(assassin, name="assassin")
    watcher.start()
    try:
        wait_for(
            lambda: all(get_job(env.db, j).status in ("succeeded", "failed", "cancelled") for j in [doomed, *normal]),
            timeout=90,
            what="every job to finish",
            interval=0.1,
        )
    finally:
        stop.set()
        watcher.finish(timeout=10)
    elapsed = time.monotonic() - t0

    job = get_job(env.db, doomed)
    assert (job.status, job.error_code) == ("failed", "worker_lost"), (job.status, job.error_code, job.error)
    assert job.attempt == MAX_ATTEMPTS == job.max_attempts
    assert [a for a, _ in kills] == [1, 2, 3]
    assert [s for s, _ in transitions(env.db, doomed)] == [
        "queued",
        "running",
        "queued",
        "running",
        "queued",
        "running",
        "failed",
    ]
    assert job.rescue_count == MAX_ATTEMPTS - 1
    assert job.model_id is None
    assert job.finished_at is not None
    for job_id in normal:
        other = get_job(env.db, job_id)
        assert other.status == "succeeded", (job_id, other.status, other.error_code, other.error)
        assert (other.attempt, other.rescue_count) == (1, 0)
        assert count_models(env.db, job_id) == 1
    figure(
        f"crash loop: doomed job failed worker_lost after exactly {job.attempt} attempts (kills at {kills} s); "
        f"{N_NORMAL}/{N_NORMAL} other jobs succeeded; all done in {elapsed:.1f} s on 2 workers"
    )
