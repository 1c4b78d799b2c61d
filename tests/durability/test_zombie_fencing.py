"""Zombie fencing: a worker frozen (SIGSTOP on its whole process group) past its lease loses the job to another
worker; once it runs again (SIGCONT) none of its writes lands, its training child exits, and the job ends exactly as
an uninterrupted run would (DESIGN.md §4, acceptance check 3). Odd trials wake the stale training child first, so it
is the child's own fenced publish that is rejected; even trials wake the group and the supervisor's heartbeat is."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest

from tests.durability.conftest import (
    SEED,
    Env,
    Jobs,
    Reference,
    Worker,
    alive,
    assert_matches_reference,
    audit,
    audit_max_id,
    figure,
    get_job,
    group_members,
    moment_seconds,
    p50_max,
    pg_transaction_open,
    transitions,
    wait_for,
    write_lock_free,
)

pytestmark = pytest.mark.integration
log = logging.getLogger("durability")

TRIALS = 3


def test_a_frozen_worker_past_its_lease_writes_nothing_after_the_takeover(env: Env, reference: Reference):
    rng = np.random.default_rng(SEED + 2)
    fractions = [float(f) for f in rng.uniform(0.05, 0.6, TRIALS)]
    log.warning("zombie fencing seed %d; freeze moments (fraction of the remaining compute): %s", SEED + 2, fractions)
    jobs = Jobs(env.db)
    cluster = env.cluster
    cluster.start("w1")
    takeovers: list[float] = []
    rejected: list[str] = []
    for trial, fraction in enumerate(fractions, start=1):
        child_first = trial % 2 == 1  # odd trials wake the training child before its supervisor
        job_id = jobs.submit()
        job = wait_for(lambda job_id=job_id: _running(env, job_id), timeout=60, what=f"job {job_id} to be claimed")
        stale_token, stale_worker_id = job.lease_token, job.worker_id
        victim = cluster.by_worker_id(stale_worker_id)
        first = wait_for(
            lambda job_id=job_id: audit(env.db, job_id), timeout=30, what=f"the first checkpoint of job {job_id}"
        )[0]
        time.sleep(moment_seconds(env.db, job_id, reference, fraction, first["epoch"]))  # the seeded freeze moment
        child = victim.training_child()
        stopped_at = _freeze(env, victim)
        log.warning(
            "trial %d: froze %s (child %d) at epoch %d, %.2f s into the run",
            trial,
            victim,
            child,
            get_job(env.db, job_id).epoch,
            stopped_at - first["at"],
        )
        try:
            if len(cluster.workers) == 1:
                cluster.start("w2")
            # The other worker's reaper expires the lease, and it claims the job (attempt 2) after the backoff.
            taken = wait_for(
                lambda job_id=job_id: _running(env, job_id, attempt=2),
                timeout=30,
                what=f"another worker to take job {job_id} over",
            )
            takeovers.append(time.time() - stopped_at)
            assert not victim.owns(taken.worker_id)
            new_worker_id = taken.worker_id
            # Let the new owner publish under its token before the zombie wakes up.
            wait_for(
                lambda job_id=job_id: [a for a in audit(env.db, job_id) if a["attempt"] == 2],
                timeout=30,
                what=f"a checkpoint of attempt 2 of job {job_id}",
            )
            audit_mark = audit_max_id(env.db)
            log_mark = victim.log_size()
            if child_first:
                # Wake the child alone: it trains on until its next publish, whose fenced UPDATE matches no row.
                os.kill(child, signal.SIGCONT)
                wait_for(lambda child=child: not alive(child), timeout=15, what=f"the stale child {child} to exit")
        finally:
            victim.signal_group(signal.SIGCONT)
        # The zombie's child exits: its own fenced write fails (LeaseLost) or its supervisor's heartbeat does.
        wait_for(lambda child=child: not alive(child), timeout=15, what=f"the stale child {child} to exit")
        wait_for(
            lambda job_id=job_id: get_job(env.db, job_id).status in ("succeeded", "failed", "cancelled"),
            timeout=60,
            what=f"job {job_id} to finish",
        )

        late = victim.log(log_mark)
        assert "lease lost" in late, f"trial {trial}: no rejected fenced write in {victim}'s log:\n{late[-3000:]}"
        rejected.append("child" if "lease lost; dropping this run" in late else "supervisor heartbeat")
        if child_first:
            assert "lease lost; dropping this run" in late, late[-3000:]
        stale = [a for a in audit(env.db, job_id, after_id=audit_mark) if a["attempt"] == 1]
        assert stale == [], f"trial {trial}: checkpoints written under the stale lease after the takeover: {stale}"
        assert all(a["attempt"] == 2 for a in audit(env.db, job_id) if a["at"] > stopped_at)
        done = get_job(env.db, job_id)
        assert done.status == "succeeded", (done.error_code, done.error)
        assert done.worker_id == new_worker_id
        assert (done.attempt, done.rescue_count) == (2, 1)
        assert done.lease_token is None
        assert stale_token != taken.lease_token
        statuses = transitions(env.db, job_id)
        assert [s for s, _ in statuses] == ["queued", "running", "queued", "running", "succeeded"]
        assert statuses[2][1].get("reason") == "lease expired"
        assert [d.get("worker_id") for s, d in statuses if s == "running"] == [stale_worker_id, new_worker_id]
        assert_matches_reference(env.db, job_id, reference)
        assert victim.proc.poll() is None, f"{victim} should survive losing a lease"
    assert "database is locked" not in cluster.logs()
    figure(f"zombie fencing: {TRIALS}/{TRIALS} trials, 0 stale writes landed; rejected fenced write by {rejected}")
    figure(f"zombie fencing: freeze -> takeover by another worker {p50_max(takeovers)}")


def _running(env: Env, job_id: str, *, attempt: int = 1):
    job = get_job(env.db, job_id)
    assert job.status in ("queued", "running"), (job.status, job.error_code, job.error)
    return job if job.status == "running" and job.attempt == attempt and job.worker_id else None


def _freeze(env: Env, victim: Worker) -> float:
    """SIGSTOP the victim's process group at a moment it holds no SQLite write lock, or on PostgreSQL no open
    transaction (wall-clock time of the stop).

    A process frozen inside a write transaction would block every writer of the file until it runs again: that is
    SQLite's single-writer design; on PostgreSQL it would hold the job row's lock, and the takeover would wait for
    idle_in_transaction_session_timeout (60 s). Neither is what this test is about."""
    for _ in range(50):
        victim.signal_group(signal.SIGSTOP)
        if env.path is not None:
            free = write_lock_free(env.path)
        else:
            time.sleep(0.02)  # a statement already sent finishes; its backend then shows the transaction's state
            free = not pg_transaction_open(env.db, group_members(victim.pid))
        if free:
            return time.time()
        victim.signal_group(signal.SIGCONT)
        log.warning("%s was inside a write transaction; freezing it again", victim)
        time.sleep(0.01)
    pytest.fail(f"could not freeze {victim} outside a write transaction")
