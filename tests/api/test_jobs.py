from datetime import datetime

import httpx
import pytest

from app.worker.loop import Supervisor
from tests.api.conftest import Api, Template, assert_problem, random_id

pytestmark = pytest.mark.anyio


async def network_and_dataset(api: Api) -> tuple[str, str]:
    """A 2-feature, 3-class (string labels) dataset and a network that fits it."""
    return (await api.network())["id"], (await api.dataset())["id"]


# --- submit --------------------------------------------------------------------------------------------------------


async def test_submit_job_is_202_queued(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    body = {"network_id": net, "dataset_id": ds, "epochs": 5, "batch_size": 4, "optimizer": {"name": "sgd"}}
    r = await client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert (job["network_id"], job["dataset_id"]) == (net, ds)
    assert (job["epoch"], job["epochs"], job["progress"]) == (0, 5, 0.0)
    assert job["model_id"] is None
    assert job["error"] is None
    assert job["attempt"] == 0
    assert job["max_attempts"] >= 1
    assert job["started_at"] is None
    assert job["finished_at"] is None
    assert [t["status"] for t in job["transitions"]] == ["queued"]
    assert datetime.fromisoformat(job["created_at"]).tzinfo is not None


async def test_submitted_spec_has_defaults_and_a_recorded_seed(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    job = (await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds})).json()
    spec = job["spec"]
    assert spec["standardize"] is True
    assert isinstance(spec["seed"], int)
    assert spec["epochs"] == job["epochs"] == 10
    assert spec["batch_size"] == 32
    assert spec["optimizer"]["name"] == "adam"
    assert spec["optimizer"]["learning_rate"] > 0


async def test_network_input_dim_not_matching_the_dataset_is_422_naming_both(api: Api, client: httpx.AsyncClient):
    net = (await api.network(input_dim=7))["id"]
    ds = (await api.dataset(features=[[float(i)] * 5 for i in range(6)], targets=["a", "b"] * 3))["id"]
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds})
    assert_problem(r, 422, "input_dim is 7", "5 features", field="network_id")


async def test_output_units_not_matching_the_classes_is_422_naming_both(api: Api, client: httpx.AsyncClient):
    net = (await api.network(units=(8, 4)))["id"]
    ds = (await api.dataset())["id"]  # 3 classes
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds})
    body = assert_problem(r, 422, "4 units", "3 classes", field="network_id")
    assert "blue" in body["detail"]


async def test_regression_outputs_not_matching_the_targets_is_422(api: Api, client: httpx.AsyncClient):
    net = await api.network(layers=[{"units": 4}, {"units": 2, "activation": "linear"}], loss="mse")
    ds = await api.dataset(targets=[float(i) for i in range(12)])
    r = await client.post("/v1/jobs", json={"network_id": net["id"], "dataset_id": ds["id"]})
    assert_problem(r, 422, "2 outputs", "1 target", field="network_id")


async def test_cross_entropy_on_a_regression_dataset_is_422(api: Api, client: httpx.AsyncClient):
    net = (await api.network())["id"]
    ds = (await api.dataset(targets=[float(i) / 2 for i in range(12)]))["id"]
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds})
    assert_problem(r, 422, "cross_entropy", "regression", field="dataset_id")


async def test_binary_cross_entropy_with_three_classes_is_422(api: Api, client: httpx.AsyncClient):
    net = await api.network(layers=[{"units": 1, "activation": "sigmoid"}], loss="binary_cross_entropy")
    ds = await api.dataset()
    r = await client.post("/v1/jobs", json={"network_id": net["id"], "dataset_id": ds["id"]})
    assert_problem(r, 422, "3 classes", field="network_id")


async def test_binary_cross_entropy_on_numeric_targets_outside_0_1_is_422_up_front(api: Api, client: httpx.AsyncClient):
    """The audit's case: the job was accepted (202) and failed later in the worker; the targets' range is known."""
    net = await api.network(layers=[{"units": 1, "activation": "sigmoid"}], loss="binary_cross_entropy")
    bad = await api.dataset(targets=[1.5, -2.5, 3.5] + [0.5] * 9, task="regression")
    r = await client.post("/v1/jobs", json={"network_id": net["id"], "dataset_id": bad["id"]})
    assert_problem(r, 422, "[0, 1]", "-2.5", "3.5", field="dataset_id")
    good = await api.dataset(targets=[0.25, 1.0, 0.0] + [0.5] * 9, task="regression")
    r = await client.post("/v1/jobs", json={"network_id": net["id"], "dataset_id": good["id"]})
    assert r.status_code == 202, r.text


async def test_unknown_network_or_dataset_is_404(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    missing = random_id()
    r = await client.post("/v1/jobs", json={"network_id": missing, "dataset_id": ds})
    assert_problem(r, 404, missing, field="network_id")
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": missing})
    assert_problem(r, 404, missing, field="dataset_id")


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        pytest.param({"epochs": 0}, "epochs", "greater than", id="zero epochs"),
        pytest.param({"epochs": "10"}, "epochs", "integer", id="string epochs"),
        pytest.param({"epochs": 100_000}, "epochs", "10000", id="epochs over the limit"),
        pytest.param({"batch_size": 0}, "batch_size", "greater than", id="zero batch"),
        pytest.param({"batch_size": 10**9}, "batch_size", "65536", id="batch over the limit"),
        pytest.param({"optimizer": {"name": "lbfgs"}}, "optimizer.name", "adam", id="unknown optimizer"),
        pytest.param({"optimizer": {"learning_rate": 0}}, "optimizer.learning_rate", "greater than", id="lr 0"),
        pytest.param({"optimizer": {"learning_rate": "fast"}}, "optimizer.learning_rate", "number", id="lr text"),
        pytest.param({"validation_split": 1.0}, "validation_split", "less than 1", id="split 1"),
        pytest.param({"seed": -1}, "seed", "greater than", id="negative seed"),
        pytest.param({"standardize": "yes"}, "standardize", "boolean", id="standardize text"),
        pytest.param(
            {"early_stopping": {"monitor": "val_loss"}},
            "early_stopping.monitor",
            "validation_split",
            id="val monitor without validation",
        ),
        pytest.param({"schedule": {"name": "warm"}}, "schedule.name", "constant", id="unknown schedule"),
        pytest.param({"momentum": 0.9}, "momentum", "extra", id="unknown field"),
        pytest.param({"network_id": ""}, "network_id", "at least 1", id="empty network id"),
    ],
)
async def test_invalid_job_is_422_naming_the_field(
    api: Api, client: httpx.AsyncClient, overrides: dict, field: str, needle: str
):
    net, ds = await network_and_dataset(api)
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds, **overrides})
    assert_problem(r, 422, needle, field=field)
    assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_validation_split_leaving_no_training_rows_is_422(api: Api, client: httpx.AsyncClient):
    ds = (await api.dataset(features=[[0.0, 0.0], [1.0, 1.0]], targets=["a", "b"]))["id"]
    net = (await api.network(units=(4, 2)))["id"]
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds, "validation_split": 0.9})
    assert_problem(r, 422, "no training rows", field="validation_split")


async def test_early_stopping_monitor_of_the_wrong_task_is_422(api: Api, client: httpx.AsyncClient):
    # A classifier has no r2: this job can never run, so it should be refused up front like the
    # val_* monitor without validation data is, not accepted and failed later by the worker.
    net, ds = await network_and_dataset(api)
    body = {"network_id": net, "dataset_id": ds, "early_stopping": {"monitor": "r2"}}
    assert_problem(await client.post("/v1/jobs", json=body), 422, "r2", field="early_stopping.monitor")


async def test_too_many_active_jobs_is_429(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    for _ in range(10):  # the default max_active_jobs_per_owner
        await api.job(net, ds)
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds})
    assert_problem(r, 429, "max_active_jobs_per_owner")
    assert int(r.headers["retry-after"]) > 0


# --- get, list, history, cancel ------------------------------------------------------------------------------------


async def test_get_job_matches_the_submit_answer(api: Api, client: httpx.AsyncClient):
    job = await api.job(*await network_and_dataset(api))
    r = await client.get(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200
    assert r.json() == job


async def test_unknown_job_is_404_everywhere(client: httpx.AsyncClient):
    missing = random_id()
    assert_problem(await client.get(f"/v1/jobs/{missing}"), 404, missing)
    assert_problem(await client.get(f"/v1/jobs/{missing}/history"), 404, missing)
    assert_problem(await client.post(f"/v1/jobs/{missing}/cancel"), 404, missing)


async def test_list_jobs_filters_by_status(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    jobs = [(await api.job(net, ds))["id"] for _ in range(3)]
    assert (await client.post(f"/v1/jobs/{jobs[1]}/cancel")).status_code == 202

    async def listed(**params: str) -> list[str]:
        r = await client.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    assert await listed() == jobs[::-1]
    assert await listed(status="queued") == [jobs[2], jobs[0]]
    assert await listed(status="cancelled") == [jobs[1]]
    assert await listed(status="succeeded") == []
    assert await listed(status="running") == []


async def test_list_jobs_with_unknown_status_is_422(client: httpx.AsyncClient):
    assert_problem(await client.get("/v1/jobs", params={"status": "done"}), 422, "queued", field="status")


async def test_list_jobs_paginates_within_a_status(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    jobs = [(await api.job(net, ds))["id"] for _ in range(5)]
    await client.post(f"/v1/jobs/{jobs[2]}/cancel")
    queued = [j for j in jobs[::-1] if j != jobs[2]]
    page1 = (await client.get("/v1/jobs", params={"status": "queued", "limit": 2})).json()
    assert ([j["id"] for j in page1["data"]], page1["has_more"]) == (queued[:2], True)
    page2 = (await client.get("/v1/jobs", params={"status": "queued", "limit": 2, "after": queued[1]})).json()
    assert ([j["id"] for j in page2["data"]], page2["has_more"]) == (queued[2:], False)


@pytest.mark.parametrize("limit", [0, 101])
async def test_list_jobs_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: int):
    assert_problem(await client.get("/v1/jobs", params={"limit": limit}), 422, "limit", field="limit")


async def test_history_of_a_queued_job_is_empty(api: Api, client: httpx.AsyncClient):
    job = await api.job(*await network_and_dataset(api))
    r = await client.get(f"/v1/jobs/{job['id']}/history")
    assert r.status_code == 200
    assert r.json() == {"job_id": job["id"], "data": []}


@pytest.mark.parametrize("after", ["-1", "one"])
async def test_history_with_a_bad_after_is_422(api: Api, client: httpx.AsyncClient, after: str):
    job = await api.job(*await network_and_dataset(api))
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/history", params={"after": after}), 422, field="after")


async def test_cancel_queued_job_cancels_it_at_once(api: Api, client: httpx.AsyncClient):
    job = await api.job(*await network_and_dataset(api))
    r = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202, r.text
    cancelled = r.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["cancel_requested"] is True
    assert [t["status"] for t in cancelled["transitions"]] == ["queued", "cancelled"]
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"


async def test_cancel_cancelled_job_is_409(api: Api, client: httpx.AsyncClient):
    job = await api.job(*await network_and_dataset(api))
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert_problem(await client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "cancelled")


async def test_cancelled_job_frees_its_active_slot(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    jobs = [await api.job(net, ds) for _ in range(10)]
    await client.post(f"/v1/jobs/{jobs[0]['id']}/cancel")
    assert (await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds})).status_code == 202


# --- Idempotency-Key -----------------------------------------------------------------------------------------------


async def test_same_idempotency_key_and_body_replays_the_job(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    body = {"network_id": net, "dataset_id": ds, "epochs": 4}
    headers = {"Idempotency-Key": "job-1"}
    first = await client.post("/v1/jobs", json=body, headers=headers)
    again = await client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len((await client.get("/v1/jobs")).json()["data"]) == 1


async def test_replay_returns_the_job_as_it_is_now(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    body = {"network_id": net, "dataset_id": ds}
    headers = {"Idempotency-Key": "job-2"}
    job = (await client.post("/v1/jobs", json=body, headers=headers)).json()
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    again = await client.post("/v1/jobs", json=body, headers=headers)
    assert (again.json()["id"], again.json()["status"]) == (job["id"], "cancelled")


async def test_same_idempotency_key_with_another_body_is_422(api: Api, client: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    headers = {"Idempotency-Key": "job-3"}
    await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds, "epochs": 4}, headers=headers)
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds, "epochs": 5}, headers=headers)
    assert_problem(r, 422, "Idempotency-Key", field="Idempotency-Key")
    assert len((await client.get("/v1/jobs")).json()["data"]) == 1


async def test_job_idempotency_keys_are_per_owner(api: Api, client: httpx.AsyncClient, other: httpx.AsyncClient):
    net, ds = await network_and_dataset(api)
    other_api = Api(other)
    other_net, other_ds = (await other_api.network())["id"], (await other_api.dataset())["id"]
    headers = {"Idempotency-Key": "same"}
    mine = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds}, headers=headers)
    theirs = await other.post("/v1/jobs", json={"network_id": other_net, "dataset_id": other_ds}, headers=headers)
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256])
async def test_malformed_job_idempotency_key_is_422(api: Api, client: httpx.AsyncClient, key: str):
    net, ds = await network_and_dataset(api)
    r = await client.post("/v1/jobs", json={"network_id": net, "dataset_id": ds}, headers={"Idempotency-Key": key})
    assert_problem(r, 422, "Idempotency-Key", field="Idempotency-Key")


# --- a job the worker has finished ---------------------------------------------------------------------------------


class TestFinishedJob:
    @pytest.fixture
    def template(self, trained_template: Template) -> Template:
        return trained_template

    async def test_succeeded_job_reports_progress_metrics_and_model(self, client: httpx.AsyncClient, ids):
        job = (await client.get(f"/v1/jobs/{ids['job']}")).json()
        assert job["status"] == "succeeded"
        assert (job["epoch"], job["epochs"], job["progress"]) == (12, 12, 1.0)
        assert job["model_id"] == ids["model"]
        assert job["error"] is None
        assert job["attempt"] == 1
        assert job["loss"] > 0
        assert job["val_loss"] > 0
        assert 0.0 <= job["metrics"]["val_accuracy"] <= 1.0
        assert "accuracy" in job["metrics"]
        assert [t["status"] for t in job["transitions"]] == ["queued", "running", "succeeded"]
        created, started, finished = (
            datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at")
        )
        assert created <= started <= finished

    async def test_history_lists_every_epoch_once(self, client: httpx.AsyncClient, ids):
        r = await client.get(f"/v1/jobs/{ids['job']}/history")
        assert r.status_code == 200
        data = r.json()["data"]
        assert [e["epoch"] for e in data] == list(range(1, 13))
        for record in data:
            assert record["loss"] > 0
            assert record["val_loss"] > 0
            assert "val_accuracy" in record["metrics"]
            assert record["seconds"] >= 0
        job = (await client.get(f"/v1/jobs/{ids['job']}")).json()
        assert data[-1]["loss"] == pytest.approx(job["loss"])

    @pytest.mark.parametrize(("after", "epochs"), [(0, list(range(1, 13))), (9, [10, 11, 12]), (12, []), (500, [])])
    async def test_history_after_returns_later_epochs_only(self, client: httpx.AsyncClient, ids, after, epochs):
        r = await client.get(f"/v1/jobs/{ids['job']}/history", params={"after": after})
        assert [e["epoch"] for e in r.json()["data"]] == epochs

    async def test_cancel_succeeded_job_is_409(self, client: httpx.AsyncClient, ids):
        assert_problem(await client.post(f"/v1/jobs/{ids['job']}/cancel"), 409, "succeeded")
        job = (await client.get(f"/v1/jobs/{ids['job']}")).json()
        assert (job["status"], job["cancel_requested"]) == ("succeeded", False)

    async def test_list_succeeded_jobs(self, client: httpx.AsyncClient, ids):
        r = await client.get("/v1/jobs", params={"status": "succeeded"})
        assert [j["id"] for j in r.json()["data"]] == [ids["job"]]
        assert (await client.get("/v1/jobs", params={"status": "queued"})).json()["data"] == []

    async def test_other_owner_cannot_see_the_history(self, client: httpx.AsyncClient, other: httpx.AsyncClient, ids):
        r = await other.get(f"/v1/jobs/{ids['job']}/history")
        assert_problem(r, 404, ids["job"])


async def test_cancel_running_job_asks_the_worker_to_stop(api: Api, client: httpx.AsyncClient, settings, db):
    job = await api.job(*await network_and_dataset(api))
    claimed = Supervisor(settings, db, worker_id="test-worker").claim()  # running, without a training process
    assert claimed is not None
    assert claimed[0] == job["id"]
    r = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202, r.text
    running = r.json()
    assert (running["status"], running["cancel_requested"]) == ("running", True)
    assert running["finished_at"] is None
    # Asking again is harmless while the worker has not stopped it yet.
    again = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert (again.status_code, again.json()["status"]) == (202, "running")
    listed = (await client.get("/v1/jobs", params={"status": "running"})).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
