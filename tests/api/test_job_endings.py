"""How a job ends, as the API reports it.

- A cancel the API accepts (202) while a job runs is never lost, even when it lands after the last epoch but before
  the worker records the job's end: the job ends cancelled, not succeeded (an audit saw 1 in 8 such cancels lost).
  The cancel is made through the API from inside the finishing step, after training and before the result is
  written: the exact window of the race.
- With early stopping's restored best weights, the job and the model report the metrics of those weights (the best
  epoch's), not the last epoch's.

The training child's code (`JobRun`) runs in this process.
"""

from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from app.config import Settings
from app.db.session import Database
from app.worker import runner
from app.worker.runner import JobRun
from tests.api.conftest import blobs, network_body, train_queued_job

pytestmark = pytest.mark.anyio


async def queued_job(client: httpx.AsyncClient, **extra: Any) -> str:
    r = await client.post("/v1/networks", json=network_body())
    assert r.status_code == 201, r.text
    network_id = r.json()["id"]
    x, y = blobs(n_per_class=10)
    r = await client.post("/v1/datasets", json={"features": x, "targets": y})
    assert r.status_code == 201, r.text
    body = {"network_id": network_id, "dataset_id": r.json()["id"], "epochs": 3, "batch_size": 8, "seed": 1}
    r = await client.post("/v1/jobs", json={**body, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("keep_partial", [False, True])
async def test_a_cancel_accepted_as_training_ends_is_honoured(
    client: httpx.AsyncClient, settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch, keep_partial: bool
):
    job_id = await queued_job(client, keep_partial_model=keep_partial)
    cancels: list[httpx.Response] = []
    succeed = runner.JobRun._succeed

    def cancel_then_succeed(self: JobRun) -> None:
        # Training has finished; the user's cancel arrives before the worker writes the result.
        cancels.append(anyio.from_thread.run(client.post, f"/v1/jobs/{job_id}/cancel"))
        succeed(self)

    monkeypatch.setattr(runner.JobRun, "_succeed", cancel_then_succeed)
    await anyio.to_thread.run_sync(train_queued_job, settings, db, job_id)

    assert [r.status_code for r in cancels] == [202], [r.text for r in cancels]
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "cancelled", job
    assert job["epoch"] == 3                              # the history of the finished epochs is kept
    history = (await client.get(f"/v1/jobs/{job_id}/history")).json()["data"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    if keep_partial:                                     # the model asked for is kept: all epochs ran
        model = (await client.get(f"/v1/models/{job['model_id']}")).json()
        assert model["job_id"] == job_id
        r = await client.post(f"/v1/models/{job['model_id']}/predict", json={"inputs": [[0.0, 0.0]]})
        assert r.status_code == 200, r.text
    else:
        assert job["model_id"] is None
        models = (await client.get("/v1/models", params={"limit": 100})).json()["data"]
        assert all(m["job_id"] != job_id for m in models)
    # A cancel after the end is refused and changes nothing.
    r = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 409, r.text
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"


async def test_a_job_without_a_cancel_still_succeeds(client: httpx.AsyncClient, settings: Settings, db: Database):
    job_id = await queued_job(client)
    await anyio.to_thread.run_sync(train_queued_job, settings, db, job_id)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded", job
    assert job["model_id"] is not None


async def test_restored_best_weights_report_the_best_epochs_metrics(client: httpx.AsyncClient, settings: Settings,
                                                                    db: Database):
    """Random labels: validation loss bottoms out early and then rises, so the best and last epochs differ."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 4)).round(4).tolist()
    y = [str(v) for v in rng.integers(0, 3, size=90)]
    r = await client.post("/v1/networks", json=network_body(input_dim=4, units=(32, 3)))
    network_id = r.json()["id"]
    r = await client.post("/v1/datasets", json={"features": x, "targets": y})
    dataset_id = r.json()["id"]
    jobs = {}
    for restore in (True, False):
        body = {"network_id": network_id, "dataset_id": dataset_id, "epochs": 300, "batch_size": 8, "seed": 3,
                "validation_split": 0.3, "optimizer": {"name": "adam", "learning_rate": 0.02},
                "early_stopping": {"patience": 5, "restore_best_weights": restore}}
        r = await client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        await anyio.to_thread.run_sync(train_queued_job, settings, db, r.json()["id"])
        jobs[restore] = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    for restore, job in jobs.items():
        assert job["status"] == "succeeded", job
        history = (await client.get(f"/v1/jobs/{job['id']}/history", params={"limit": 500})).json()["data"]
        model = (await client.get(f"/v1/models/{job['model_id']}")).json()
        best = model["metrics"]["best_epoch"]
        assert len(history) == job["epoch"] == best + 5 < 300
        held = history[best - 1] if restore else history[-1]      # the epoch whose weights the model holds
        assert model["metrics"]["weights_epoch"] == held["epoch"]
        assert model["metrics"]["final"]["val_loss"] == held["val_loss"]
        assert (job["loss"], job["val_loss"], job["metrics"]) == (held["loss"], held["val_loss"], held["metrics"])
    assert jobs[True]["val_loss"] < jobs[False]["val_loss"]       # the best epoch's is the lower: they differ
