"""Cancellation over HTTP (the app in process) against a real worker process: a queued job is cancelled at once, a
running one within an epoch plus 2 s with its history kept (and a partial model only on request), a finished one is
a 409 that changes nothing (DESIGN.md §6, acceptance check 5)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.errors import Conflict
from app.main import create_app
from app.services import keys
from app.services import resources as svc
from app.worker.loop import CANCEL_POLL_SECONDS
from tests.durability.conftest import (
    OWNER,
    SEED,
    Env,
    Jobs,
    Reference,
    audit,
    epoch_records,
    figure,
    get_job,
    model_rows,
    p50_max,
    transitions,
    wait_for,
)

pytestmark = pytest.mark.integration
log = logging.getLogger("durability")

RUNNING_CANCELS = [False, True, False, True, False]  # keep_partial_model per running job


def test_cancel_queued_running_and_finished_jobs(env: Env, reference: Reference):
    with env.db.session() as s:
        _, key = keys.create_key(s, owner=OWNER, name="durability")
    jobs = Jobs(env.db)
    jobs.resources("crash")
    jobs.resources("tiny")
    settings = Settings(database_url=env.url, max_active_jobs_per_owner=1000)
    app = create_app(settings, db=env.db)
    rng = np.random.default_rng(SEED + 4)
    delays = [float(d) for d in rng.uniform(0.0, 1.0, len(RUNNING_CANCELS))]
    log.warning("cancellation seed %d; cancel delays after the first checkpoint: %s", SEED + 4, delays)
    epoch_budget = max(reference.epoch_seconds) + 2.0  # one epoch's time + 2 s

    async def scenario() -> list[float]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {key}"}
        ) as c:

            async def post_job(kind: str, **extra: Any) -> dict[str, Any]:
                r = await c.post("/v1/jobs", json=jobs.body(kind, **extra))
                assert r.status_code == 202, r.text
                return r.json()

            async def cancel(job_id: str) -> httpx.Response:
                return await c.post(f"/v1/jobs/{job_id}/cancel")

            # Queued (no worker yet): cancelled at once, never attempted.
            queued = await post_job("crash")
            r = await cancel(queued["id"])
            assert r.status_code == 202, r.text
            assert (r.json()["status"], r.json()["attempt"]) == ("cancelled", 0)
            row = get_job(env.db, queued["id"])
            assert (row.status, row.attempt, row.lease_token) == ("cancelled", 0, None)
            assert row.finished_at is not None
            assert [s for s, _ in transitions(env.db, queued["id"])] == ["queued", "cancelled"]

            env.cluster.start("w1")
            latencies: list[float] = []
            for keep, delay in zip(RUNNING_CANCELS, delays, strict=True):
                job = await post_job("crash", keep_partial_model=keep)
                job_id = job["id"]
                await _until(lambda job_id=job_id: _checkpointed(env, job_id), f"job {job_id} to train an epoch")
                await asyncio.sleep(delay)  # the seeded cancel moment
                r = await cancel(job_id)
                t_cancel = time.monotonic()
                assert r.status_code == 202, r.text
                if r.json()["status"] != "running":  # finished in between: the 4th case, not this one
                    pytest.fail(f"job {job_id} was {r.json()['status']} when cancelled")
                assert r.json()["cancel_requested"] is True
                await _until(
                    lambda job_id=job_id: get_job(env.db, job_id).status != "running",
                    f"job {job_id} to stop",
                    timeout=15,
                    interval=0.01,
                )
                latencies.append(time.monotonic() - t_cancel)
                _check_cancelled(env, job_id, keep, reference)
                r = await c.get(f"/v1/jobs/{job_id}/history")
                assert r.status_code == 200
                assert [e["epoch"] for e in r.json()["data"]] == list(range(1, get_job(env.db, job_id).epoch + 1))

            # Finished: a succeeded and a cancelled job answer 409 and stay exactly as they were.
            done = await post_job("tiny", seed=1)
            await _until(lambda: get_job(env.db, done["id"]).status == "succeeded", "the tiny job to succeed")
            for job_id in (done["id"], queued["id"]):
                before = _snapshot(env, job_id)
                r = await cancel(job_id)
                assert r.status_code == 409, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                assert _snapshot(env, job_id) == before
                with pytest.raises(Conflict), env.db.session() as s:
                    svc.cancel_job(s, owner=OWNER, job_id=job_id)
                assert _snapshot(env, job_id) == before
            return latencies

    latencies = asyncio.run(scenario())
    assert max(latencies) <= epoch_budget, (latencies, epoch_budget)
    assert "database is locked" not in env.cluster.logs()
    figure("cancellation: queued -> cancelled at once (attempt 0); finished -> 409, row unchanged")
    figure(
        f"cancellation: running -> cancelled {p50_max(latencies)} (budget one epoch + 2 s = {epoch_budget:.2f} s; "
        f"keep_partial_model {RUNNING_CANCELS})"
    )


async def _until(condition, what: str, *, timeout: float = 60, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return value


def _checkpointed(env: Env, job_id: str) -> bool:
    job = get_job(env.db, job_id)
    assert job.status in ("queued", "running"), (job.status, job.error_code, job.error)
    return job.status == "running" and job.epoch >= 1


def _snapshot(env: Env, job_id: str) -> tuple[Any, ...]:
    job = get_job(env.db, job_id)
    return (
        job.status,
        job.attempt,
        job.finished_at,
        job.model_id,
        job.cancel_requested_at,
        job.epoch,
        len(transitions(env.db, job_id)),
    )


def _check_cancelled(env: Env, job_id: str, keep: bool, reference: Reference) -> None:
    job = get_job(env.db, job_id)
    assert job.status == "cancelled", (job.status, job.error_code, job.error)
    assert job.finished_at is not None
    assert job.lease_token is None
    assert 1 <= job.epoch < reference.epochs
    # The history up to the stop is kept, and it is the uninterrupted run's history so far.
    records = epoch_records(env.db, job_id)
    assert records == reference.records[: job.epoch]
    assert [s for s, _ in transitions(env.db, job_id)] == ["queued", "running", "cancelled"]
    models = model_rows(env.db, job_id)
    if keep:
        assert len(models) == 1
        assert models[0].partial is True
        assert job.model_id == models[0].id
    else:
        assert models == []
        assert job.model_id is None


def test_cancel_requested_while_the_child_is_starting_is_honoured(env: Env, reference: Reference):
    """A cancel that reaches the supervisor before its training child has finished loading (a cold child still
    importing, or a large dataset being read) must still stop the run: here the child is held (SIGSTOP) from the
    claim until the supervisor has polled the cancel and set its stop event, then let go."""
    jobs = Jobs(env.db)
    job_id = jobs.submit()
    w1 = env.cluster.start("w1", wait=False)  # its first child is spawned right before the claim: still importing
    wait_for(
        lambda: get_job(env.db, job_id).status == "running", timeout=60, what="the job to be claimed", interval=0.005
    )
    child = w1.training_child()
    os.kill(child, signal.SIGSTOP)
    try:
        assert audit(env.db, job_id) == []  # it has not trained an epoch yet
        with env.db.session() as s:
            assert svc.cancel_job(s, owner=OWNER, job_id=job_id).status == "running"
        t_cancel = time.monotonic()
        # Not observable from outside: give the supervisor two of its cancel polls to set the child's stop event.
        time.sleep(2 * CANCEL_POLL_SECONDS + 0.2)
    finally:
        os.kill(child, signal.SIGCONT)
    wait_for(lambda: get_job(env.db, job_id).status != "running", timeout=30, what="the job to stop")
    latency = time.monotonic() - t_cancel
    job = get_job(env.db, job_id)
    figure(f"cancel during child start-up: {job.status} {latency:.2f} s after the cancel, at epoch {job.epoch}")
    assert job.status == "cancelled", (
        f"the job was cancelled while its training child was starting, yet it ended {job.status} at epoch "
        f"{job.epoch}/{job.epochs} with model {job.model_id}"
    )
    assert job.model_id is None
    assert latency <= 2 * CANCEL_POLL_SECONDS + 0.2 + max(reference.epoch_seconds) + 2.0
