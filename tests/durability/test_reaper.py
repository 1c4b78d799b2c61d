"""The reaper recovers a dead worker's job within lease + reaper interval even while every live worker is busy
training, and a job whose cancel was requested is then cancelled, not re-queued (DESIGN.md §2, §4: "Reaper (each
supervisor, every 15 s) ... Recovery <= lease + reaper"; acceptance check 5: "cancel + expired lease -> cancelled")."""

from __future__ import annotations

import logging
import signal
import time

import numpy as np
import pytest

from app.services import resources as svc
from tests.durability.conftest import (
    LEASE_SECONDS,
    OWNER,
    REAPER_SECONDS,
    SEED,
    Env,
    Jobs,
    Reference,
    alive,
    audit,
    figure,
    get_job,
    transitions,
    wait_for,
)

pytestmark = pytest.mark.integration
log = logging.getLogger("durability")

SLACK = 1.5  # scheduling on a loaded 2-core machine


def test_expired_lease_is_reaped_while_the_live_worker_is_busy(env: Env, reference: Reference):
    rng = np.random.default_rng(SEED + 8)
    delay = float(rng.uniform(0.0, 0.5))
    log.warning("reaper seed %d; worker kill %.3f s after the victim's first checkpoint", SEED + 8, delay)
    jobs = Jobs(env.db)
    cluster = env.cluster
    busy = jobs.submit(epochs=3 * reference.epochs)  # keeps the surviving worker training for ~10 s
    w1 = cluster.start("w1")
    wait_for(lambda: audit(env.db, busy), timeout=60, what="the long job to start training")
    victim_job = jobs.submit()
    w2 = cluster.start("w2")
    wait_for(lambda: audit(env.db, victim_job), timeout=60, what="the victim job to start training")
    assert w1.owns(get_job(env.db, busy).worker_id)
    assert w2.owns(get_job(env.db, victim_job).worker_id)
    time.sleep(delay)  # the seeded kill moment
    child = w2.training_child()
    w2.send(signal.SIGKILL)
    t_kill = time.monotonic()
    w2.wait_exit(10)
    wait_for(lambda: not alive(child), timeout=5, what="the dead worker's child to die with it")
    with env.db.session() as s:
        assert svc.cancel_job(s, owner=OWNER, job_id=victim_job).status == "running"  # only a request: no owner
    wait_for(lambda: get_job(env.db, victim_job).status != "running", timeout=60, what="the victim job to be reaped")
    reaped_after = time.monotonic() - t_kill
    busy_status = get_job(env.db, busy).status

    job = get_job(env.db, victim_job)
    assert job.status == "cancelled", (job.status, job.error_code, job.error)
    assert [s for s, _ in transitions(env.db, victim_job)] == ["queued", "running", "cancelled"]
    assert job.lease_token is None
    figure(
        f"reaper: dead worker's job (cancel requested) -> cancelled {reaped_after:.2f} s after the kill "
        f"(bound lease {LEASE_SECONDS:g} + reaper {REAPER_SECONDS:g} + {SLACK:g} s); the live worker's job was "
        f"{busy_status} by then"
    )
    assert reaped_after <= LEASE_SECONDS + REAPER_SECONDS + SLACK, (
        f"the expired job was reaped only {reaped_after:.2f} s after its worker died (lease {LEASE_SECONDS:g} s, "
        f"reaper every {REAPER_SECONDS:g} s); the one live worker was busy training (its job: {busy_status})"
    )
