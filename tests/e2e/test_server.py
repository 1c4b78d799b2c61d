"""End to end against `backprop serve` in a subprocess: train on iris over HTTP, then restart on the same database."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_iris

from tests.support.server import Server, wait_until

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "cancelled"}
SPECIES = ["setosa", "versicolor", "virginica"]
# Seeded so the run is reproducible; with these settings the 30 held-out rows are all classified correctly.
IRIS_JOB = {
    "epochs": 500,
    "batch_size": 4,
    "optimizer": {"name": "adam", "learning_rate": 0.002},
    "validation_split": 0.2,
    "seed": 4,
}
IRIS_NETWORK = {
    "name": "iris-mlp",
    "input_dim": 4,
    "layers": [{"units": 16, "activation": "tanh"}, {"units": 3, "activation": "softmax"}],
    "loss": "cross_entropy",
}


def iris_rows() -> tuple[list[list[float]], list[str]]:
    iris = load_iris()
    names = [str(n) for n in iris.target_names]
    assert names == SPECIES
    return iris.data.tolist(), [names[i] for i in iris.target]


def iris_csv() -> bytes:
    features, species = iris_rows()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
    writer.writerows([*row, label] for row, label in zip(features, species, strict=True))
    return out.getvalue().encode()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def upload_iris(c: httpx.Client) -> dict[str, Any]:
    r = c.post(
        "/v1/datasets", files={"file": ("iris.csv", iris_csv(), "text/csv")}, data={"target": "species", "name": "iris"}
    )
    dataset = ok(r, 201)
    assert (dataset["n_samples"], dataset["n_features"], dataset["n_targets"]) == (150, 4, 3)
    assert dataset["classes"] == SPECIES
    return dataset


def follow(c: httpx.Client, job_id: str, *, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Poll the job and its history?after=N until the job ends: (final job, every epoch record, growing polls)."""
    records: list[dict[str, Any]] = []
    grew = 0
    deadline = time.monotonic() + timeout
    while True:
        job = ok(c.get(f"/v1/jobs/{job_id}"))
        after = records[-1]["epoch"] if records else 0
        page = ok(c.get(f"/v1/jobs/{job_id}/history", params={"after": after}))["data"]
        assert all(r["epoch"] > after for r in page), (after, [r["epoch"] for r in page])
        if page:
            grew += 1
        records += page
        if job["status"] in TERMINAL:
            # Everything the job published before it ended is visible now.
            tail = ok(c.get(f"/v1/jobs/{job_id}/history", params={"after": records[-1]["epoch"] if records else 0}))
            records += tail["data"]
            return job, records, grew
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout} s"
        time.sleep(0.05)


def test_iris_trains_over_http_to_high_validation_accuracy(start_server: Callable[[], Server]):
    server = start_server()
    key = server.printed_key()
    assert key.startswith("bp_live_")
    with server.client(key) as c:
        assert ok(c.get("/readyz"))["status"] == "ok"
        dataset = upload_iris(c)
        network = ok(c.post("/v1/networks", json=IRIS_NETWORK), 201)
        job = ok(c.post("/v1/jobs", json={"network_id": network["id"], "dataset_id": dataset["id"], **IRIS_JOB}), 202)
        assert job["status"] == "queued"

        job, records, grew = follow(c, job["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        epochs = [r["epoch"] for r in records]
        assert epochs == list(range(1, 501))  # no epoch missing, none twice
        assert grew >= 1
        assert (job["epoch"], job["progress"]) == (500, 1.0)
        assert job["metrics"]["val_accuracy"] >= 0.9
        assert records[-1]["metrics"]["val_accuracy"] == job["metrics"]["val_accuracy"]
        assert records[-1]["loss"] < records[0]["loss"]
        assert [t["status"] for t in job["transitions"]] == ["queued", "running", "succeeded"]

        model = ok(c.get(f"/v1/models/{job['model_id']}"))
        assert model["classes"] == SPECIES
        features, species = iris_rows()
        pred = ok(c.post(f"/v1/models/{model['id']}/predict", json={"inputs": features}))
        assert set(pred["labels"]) == set(SPECIES)
        accuracy = sum(p == s for p, s in zip(pred["labels"], species, strict=True)) / len(species)
        assert accuracy >= 0.9
        sample = ok(
            c.post(f"/v1/models/{model['id']}/predict", json={"inputs": [features[0], features[50], features[100]]})
        )
        assert sample["labels"] == SPECIES


def snapshot(c: httpx.Client, ids: dict[str, str]) -> dict[str, Any]:
    """Everything a client can read about the resources in `ids`."""
    return {
        "networks": ok(c.get("/v1/networks")),
        "datasets": ok(c.get("/v1/datasets")),
        "jobs": ok(c.get("/v1/jobs")),
        "models": ok(c.get("/v1/models")),
        "network": ok(c.get(f"/v1/networks/{ids['network']}")),
        "dataset": ok(c.get(f"/v1/datasets/{ids['dataset']}")),
        "job": ok(c.get(f"/v1/jobs/{ids['job']}")),
        "cancelled": ok(c.get(f"/v1/jobs/{ids['cancelled']}")),
        "history": ok(c.get(f"/v1/jobs/{ids['job']}/history")),
        "model": ok(c.get(f"/v1/models/{ids['model']}")),
        "weights": ok(c.get(f"/v1/models/{ids['model']}/weights")),
        "predict": ok(c.post(f"/v1/models/{ids['model']}/predict", json={"inputs": iris_rows()[0][::25]})),
    }


def test_restart_keeps_networks_datasets_jobs_histories_and_models(start_server: Callable[[], Server]):
    server = start_server()
    key = server.printed_key()
    ids: dict[str, str] = {}
    with server.client(key) as c:
        ids["dataset"] = upload_iris(c)["id"]
        ids["network"] = ok(c.post("/v1/networks", json=IRIS_NETWORK), 201)["id"]
        body = {"network_id": ids["network"], "dataset_id": ids["dataset"], **IRIS_JOB, "epochs": 40}
        ids["job"] = ok(c.post("/v1/jobs", json=body), 202)["id"]
        job, records, _ = follow(c, ids["job"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        assert [r["epoch"] for r in records] == list(range(1, 41))
        ids["model"] = job["model_id"]
        # A second job, cancelled while queued or running: its final state must survive too.
        ids["cancelled"] = ok(c.post("/v1/jobs", json={**body, "epochs": 10_000}), 202)["id"]
        ok(c.post(f"/v1/jobs/{ids['cancelled']}/cancel"), 202)
        wait_until(
            lambda: ok(c.get(f"/v1/jobs/{ids['cancelled']}"))["status"] == "cancelled",
            timeout=30,
            what="the second job to be cancelled",
        )
        before = snapshot(c, ids)

    assert server.stop() == 0

    again = start_server()
    with again.client(key) as c:
        assert ok(c.get("/readyz"))["status"] == "ok"
        after = snapshot(c, ids)
        assert after == before
        assert after["job"]["status"] == "succeeded"
        assert [r["epoch"] for r in after["history"]["data"]] == list(range(1, 41))
        assert set(after["predict"]["labels"]) <= set(SPECIES)
        # The restarted server's worker trains new jobs too.
        body = {"network_id": ids["network"], "dataset_id": ids["dataset"], **IRIS_JOB, "epochs": 5}
        job, records, _ = follow(c, ok(c.post("/v1/jobs", json=body), 202)["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    # Keys already existed, so the second start printed none.
    assert not any(line.startswith("bp_live_") for line in again.stdout)


def test_job_running_at_shutdown_resumes_after_restart_without_losing_or_repeating_epochs(
    start_server: Callable[[], Server],
):
    server = start_server()
    key = server.printed_key()
    with server.client(key) as c:
        dataset = upload_iris(c)
        network = ok(c.post("/v1/networks", json=IRIS_NETWORK), 201)
        # Batches of one: a few seconds of training, long enough to be interrupted.
        body = {**IRIS_JOB, "network_id": network["id"], "dataset_id": dataset["id"], "epochs": 1000, "batch_size": 1}
        job_id = ok(c.post("/v1/jobs", json=body), 202)["id"]
        wait_until(
            lambda: ok(c.get(f"/v1/jobs/{job_id}"))["epoch"] >= 20, timeout=60, what="the job to publish 20 epochs"
        )
    assert server.stop() == 0

    again = start_server()
    with again.client(key) as c:
        interrupted = ok(c.get(f"/v1/jobs/{job_id}"))
        assert interrupted["status"] in {"queued", "running"}, interrupted
        assert 20 <= interrupted["epoch"] < 1000
        job, records, _ = follow(c, job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert [r["epoch"] for r in records] == list(range(1, 1001))
    assert job["attempt"] == 1  # a graceful release is not a failed attempt
    statuses = [t["status"] for t in job["transitions"]]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
