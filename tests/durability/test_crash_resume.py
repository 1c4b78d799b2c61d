"""Crash-resume: SIGKILL a job's training child, or its whole worker, at seeded uniform moments mid-training; every job
still succeeds, resumes from its newest checkpoint, records each epoch once and ends bit for bit on the weights of an
uninterrupted run (DESIGN.md §4-§5, acceptance check 2)."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.durability.conftest import (
    LEASE_SECONDS,
    REAPER_SECONDS,
    SEED,
    Background,
    Env,
    Jobs,
    Reference,
    alive,
    assert_matches_reference,
    audit,
    figure,
    get_job,
    moment_seconds,
    p50_max,
    transitions,
    wait_for,
)

pytestmark = pytest.mark.integration
log = logging.getLogger("durability")

KILLS_PER_JOB = 2  # max_attempts is 3: two deaths are recovered, the third attempt must finish
CHILD_KILL_JOBS = 3  # 6 child SIGKILLs
WORKER_KILL_JOBS = 2  # 4 worker SIGKILLs


@dataclass
class Kill:
    job: str
    kind: str  # "child" | "worker"
    attempt: int
    at: float  # seconds since the test started
    delay: float  # seconds after the attempt's first checkpoint
    checkpoint: tuple[int, int] = (0, 0)  # (epoch, batch) of the attempt's newest checkpoint: where the next resumes
    requeued: float | None = None  # kill -> the job is out of the dead attempt's hands (back in the queue)
    recovery: float | None = None  # kill -> running again


@dataclass
class Plan:
    job: str
    kind: str
    fractions: list[float]
    kills: list[Kill] = field(default_factory=list)


def test_sigkilled_jobs_resume_bit_exact_from_their_checkpoint(env: Env, reference: Reference):
    rng = np.random.default_rng(SEED)
    jobs = Jobs(env.db)
    plans = [
        Plan(jobs.submit(), kind, [float(f) for f in rng.uniform(0.05, 0.8, KILLS_PER_JOB)])
        for kind in ["child"] * CHILD_KILL_JOBS + ["worker"] * WORKER_KILL_JOBS
    ]
    log.warning(
        "crash-resume seed %d; kill moments as fractions of each attempt's remaining compute: %s",
        SEED,
        {p.job[:8]: (p.kind, [round(f, 3) for f in p.fractions]) for p in plans},
    )
    cluster = env.cluster
    cluster.start("w1")
    cluster.start("w2")
    t0 = time.monotonic()
    lock = threading.Lock()
    replacements = iter(range(3, 100))

    def drive(plan: Plan) -> None:
        previous: Kill | None = None
        for k, fraction in enumerate(plan.fractions, start=1):
            job = wait_for(
                lambda k=k: _running(env, plan.job, attempt=k), timeout=60, what=f"job {plan.job} running attempt {k}"
            )
            if previous is not None:
                previous.recovery = time.monotonic() - t0 - previous.at
            token, worker = job.lease_token, cluster.by_worker_id(job.worker_id)
            # Training has started once this attempt published its first checkpoint (an epoch end).
            first = wait_for(
                lambda k=k: [a for a in audit(env.db, plan.job) if a["attempt"] == k],
                timeout=30,
                what=f"the first checkpoint of attempt {k} of job {plan.job}",
            )[0]
            delay = moment_seconds(env.db, plan.job, reference, fraction, first["epoch"])
            time.sleep(delay)  # the seeded kill moment itself, not a wait for a condition
            now = get_job(env.db, plan.job)
            assert (now.status, now.lease_token) == ("running", token), (
                f"job {plan.job} attempt {k} was no longer running at its kill moment ({now.status}): "
                f"the kill window missed"
            )
            child = worker.training_child()
            if plan.kind == "child":
                os.kill(child, signal.SIGKILL)
                at = time.monotonic() - t0
            else:
                worker.send(signal.SIGKILL)
                at = time.monotonic() - t0
                worker.wait_exit(10)
                # The child dies with its supervisor (PR_SET_PDEATHSIG): no orphan keeps training.
                wait_for(lambda child=child: not alive(child), timeout=5, what=f"orphan child {child} to die")
                with lock:
                    name = f"w{next(replacements)}"
                cluster.start(name, wait=False)
            kill = Kill(plan.job, plan.kind, k, round(at, 3), round(delay, 3))
            log.warning("kill: %s", kill)
            wait_for(
                lambda token=token: get_job(env.db, plan.job).lease_token != token,
                timeout=60,
                what=f"job {plan.job} to be recovered from attempt {k}",
            )
            kill.requeued = time.monotonic() - t0 - kill.at
            plan.kills.append(kill)
            previous = kill
        wait_for(
            lambda: _running(env, plan.job, attempt=len(plan.fractions) + 1),
            timeout=60,
            what=f"job {plan.job} running its last attempt",
        )
        assert previous is not None
        previous.recovery = time.monotonic() - t0 - previous.at
        wait_for(
            lambda: get_job(env.db, plan.job).status in ("succeeded", "failed", "cancelled"),
            timeout=90,
            what=f"job {plan.job} to finish",
        )

    drivers = [Background(lambda p=p: drive(p), name=f"driver-{p.job[:8]}") for p in plans]
    for d in drivers:
        d.start()
    for d in drivers:
        d.finish(timeout=200)

    logs = cluster.logs()
    child_recoveries: list[float] = []
    worker_recoveries: list[float] = []
    child_requeues: list[float] = []
    worker_requeues: list[float] = []
    rescues = 0
    for plan in plans:
        job = get_job(env.db, plan.job)
        assert job.status == "succeeded", (plan, job.status, job.error_code, job.error)
        assert job.attempt == KILLS_PER_JOB + 1
        assert job.rescue_count == KILLS_PER_JOB
        rescues += job.rescue_count
        statuses = transitions(env.db, plan.job)
        expected_reason = "exited with code -9" if plan.kind == "child" else "lease expired"
        assert [s for s, _ in statuses] == ["queued", *["running", "queued"] * KILLS_PER_JOB, "running", "succeeded"]
        requeues = [d.get("reason") or "" for s, d in statuses[1:-1] if s == "queued"]
        assert all(expected_reason in r for r in requeues), requeues
        assert_matches_reference(env.db, plan.job, reference)
        # Each new attempt resumed from the newest checkpoint its predecessor had published before the kill.
        written = audit(env.db, plan.job)
        for kill in plan.kills:
            newest = [a for a in written if a["attempt"] == kill.attempt][-1]
            kill.checkpoint = (newest["epoch"], newest["batch"])
        pattern = rf"job {plan.job}: resumed at epoch (\d+), batch (\d+)"
        resumed = [(int(e), int(b)) for e, b in re.findall(pattern, logs)]
        assert resumed == [kill.checkpoint for kill in plan.kills], (resumed, plan.kills)
        for kill in plan.kills:
            assert kill.recovery is not None
            assert kill.requeued is not None
            (child_recoveries if kill.kind == "child" else worker_recoveries).append(kill.recovery)
            (child_requeues if kill.kind == "child" else worker_requeues).append(kill.requeued)
    assert "database is locked" not in logs

    kills = [k for p in plans for k in p.kills]
    assert len(kills) >= 10
    assert rescues == len(kills)
    # The supervisor re-queues at once when its child dies. "Running again" also includes the 1-2 s backoff and
    # waiting for a free worker (5 jobs share 2), so it is reported, with only a loose bound against starvation.
    assert max(child_requeues) <= 2.0, child_requeues
    assert max(child_recoveries + worker_recoveries) <= 30.0
    figure(
        f"crash-resume: {len(plans)} jobs, {len(kills)} SIGKILLs ({len(child_recoveries)} child, "
        f"{len(worker_recoveries)} worker), {rescues} recoveries, {len(plans)}/{len(plans)} succeeded bit-exact"
    )
    figure(f"crash-resume: kills at (s, resumed from epoch) {[(k.at, k.checkpoint[0]) for k in kills]}")
    figure(
        f"crash-resume: child kill -> re-queued {p50_max(child_requeues)}; -> running again (1-2 s backoff, "
        f"queueing) {p50_max(child_recoveries)}"
    )
    figure(
        f"crash-resume: worker kill -> reaped (lease {LEASE_SECONDS:g} s, reaper {REAPER_SECONDS:g} s) "
        f"{p50_max(worker_requeues)}; -> running again {p50_max(worker_recoveries)}"
    )


def _running(env: Env, job_id: str, *, attempt: int):
    job = get_job(env.db, job_id)
    if job.status == "running" and job.attempt == attempt and job.worker_id is not None:
        return job
    assert job.status in ("queued", "running"), (job_id, job.status, job.error_code, job.error)
    return None
