"""Model routes, on a database where a real worker has trained a 3-class (string labelled) classifier."""

import io

import anyio
import httpx
import numpy as np
import pytest

from app.config import Settings
from app.db.session import Database
from app.worker.loop import Supervisor
from tests.api.conftest import CENTERS, COLORS, Template, assert_problem, random_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def template(trained_template: Template) -> Template:
    return trained_template


def forward(weights: dict, inputs: np.ndarray) -> np.ndarray:
    """The network by hand from the JSON weights: scale, then tanh hidden layers and a softmax output."""
    scaling = weights["input_scaling"]
    a = (inputs - np.array(scaling["mean"])) / np.array(scaling["scale"])
    for layer in weights["layers"]:
        z = a @ np.array(layer["weights"]) + np.array(layer["biases"])
        if layer["activation"] == "tanh":
            a = np.tanh(z)
        else:
            assert layer["activation"] == "softmax"
            e = np.exp(z - z.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
    return a


async def test_get_model(client: httpx.AsyncClient, ids):
    r = await client.get(f"/v1/models/{ids['model']}")
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["id"] == ids["model"]
    assert (model["job_id"], model["network_id"], model["dataset_id"]) == (ids["job"], ids["network"], ids["dataset"])
    assert model["task"] == "classification"
    assert model["classes"] == sorted(COLORS)
    assert model["spec"]["input_dim"] == 2
    assert [layer["units"] for layer in model["spec"]["layers"]] == [16, 3]
    assert model["partial"] is False
    assert len(model["input_scaling"]["mean"]) == len(model["input_scaling"]["scale"]) == 2
    assert model["metrics"]


async def test_list_models(client: httpx.AsyncClient, ids):
    page = (await client.get("/v1/models")).json()
    assert [m["id"] for m in page["data"]] == [ids["model"]]
    assert page["has_more"] is False


@pytest.mark.parametrize("limit", [0, 101])
async def test_list_models_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: int):
    assert_problem(await client.get("/v1/models", params={"limit": limit}), 422, field="limit")


async def test_weights_as_json(client: httpx.AsyncClient, ids):
    r = await client.get(f"/v1/models/{ids['model']}/weights")
    assert r.status_code == 200
    weights = r.json()
    assert weights["model_id"] == ids["model"]
    shapes = [(np.array(layer["weights"]).shape, len(layer["biases"])) for layer in weights["layers"]]
    assert shapes == [((2, 16), 16), ((16, 3), 3)]
    assert [layer["activation"] for layer in weights["layers"]] == ["tanh", "softmax"]


async def test_weights_as_npz_match_the_json(client: httpx.AsyncClient, ids):
    r = await client.get(f"/v1/models/{ids['model']}/weights", params={"format": "npz"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert ids["model"] in r.headers["content-disposition"]
    as_json = (await client.get(f"/v1/models/{ids['model']}/weights")).json()
    with np.load(io.BytesIO(r.content), allow_pickle=False) as npz:
        arrays = dict(npz)
    for i, layer in enumerate(as_json["layers"]):
        np.testing.assert_allclose(arrays[f"layer{i}.weights"], layer["weights"], rtol=1e-6)
        np.testing.assert_allclose(arrays[f"layer{i}.biases"], layer["biases"], rtol=1e-6)
    np.testing.assert_allclose(arrays["input.mean"], as_json["input_scaling"]["mean"])
    np.testing.assert_allclose(arrays["input.scale"], as_json["input_scaling"]["scale"])


async def test_weights_in_an_unknown_format_is_422(client: httpx.AsyncClient, ids):
    r = await client.get(f"/v1/models/{ids['model']}/weights", params={"format": "pickle"})
    assert_problem(r, 422, "npz", field="format")


async def test_predict_returns_labels_in_the_datasets_own_values(client: httpx.AsyncClient, ids):
    inputs = [list(c) for c in CENTERS]
    r = await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == ids["model"]
    assert body["labels"] == list(COLORS)
    outputs = np.array(body["outputs"])
    assert outputs.shape == (3, 3)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
    classes = (await client.get(f"/v1/models/{ids['model']}")).json()["classes"]
    assert [classes[i] for i in outputs.argmax(axis=1)] == body["labels"]


async def test_predict_takes_raw_inputs_and_matches_the_published_weights(client: httpx.AsyncClient, ids):
    inputs = np.array([[0.3, -0.2], [5.5, 0.4], [-0.1, 6.2], [3.0, 3.0]])
    r = await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": inputs.tolist()})
    weights = (await client.get(f"/v1/models/{ids['model']}/weights")).json()
    np.testing.assert_allclose(r.json()["outputs"], forward(weights, inputs), rtol=1e-4, atol=1e-6)


async def test_predict_accepts_integers(client: httpx.AsyncClient, ids):
    r = await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": [[6, 0]]})
    assert r.json()["labels"] == ["green"]


@pytest.mark.parametrize(
    ("inputs", "field", "needles"),
    [
        pytest.param([[1.0, 2.0, 3.0]], "inputs[0]", ("2 features", "has 3"), id="too many features"),
        pytest.param([[1.0, 2.0], [1.0]], "inputs[1]", ("2 features", "row 1 has 1"), id="short second row"),
        pytest.param([[]], "inputs[0]", ("2 features", "has 0"), id="empty row"),
        pytest.param([], "inputs", ("at least 1",), id="no rows"),
        pytest.param([["1", 2.0]], "inputs[0][0]", ("number",), id="string"),
        pytest.param([[None, 2.0]], "inputs[0][0]", ("number",), id="null"),
        pytest.param(5, "inputs", ("list",), id="not a list"),
    ],
)
async def test_bad_predict_input_is_422(client: httpx.AsyncClient, ids, inputs, field: str, needles):
    r = await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": inputs})
    assert_problem(r, 422, *needles, field=field)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_predict_with_non_finite_input_is_422(client: httpx.AsyncClient, ids, token: str):
    raw = f'{{"inputs": [[1.0, {token}]]}}'
    r = await client.post(
        f"/v1/models/{ids['model']}/predict", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(r, 422, "finite", field="inputs[0][1]")


async def test_missing_model_is_404_everywhere(client: httpx.AsyncClient):
    missing = random_id()
    assert_problem(await client.get(f"/v1/models/{missing}"), 404, missing)
    assert_problem(await client.get(f"/v1/models/{missing}/weights"), 404, missing)
    assert_problem(await client.post(f"/v1/models/{missing}/predict", json={"inputs": [[1, 2]]}), 404, missing)
    assert_problem(await client.delete(f"/v1/models/{missing}"), 404, missing)


async def test_other_owners_model_is_404_like_a_missing_one(other: httpx.AsyncClient, ids):
    fake = random_id()
    for method, path, kw in [
        ("GET", "/v1/models/{}", {}),
        ("GET", "/v1/models/{}/weights", {}),
        ("GET", "/v1/models/{}/weights?format=npz", {}),
        ("POST", "/v1/models/{}/predict", {"json": {"inputs": [[1.0, 2.0]]}}),
        ("DELETE", "/v1/models/{}", {}),
    ]:
        real = assert_problem(await other.request(method, path.format(ids["model"]), **kw), 404)
        missing = assert_problem(await other.request(method, path.format(fake), **kw), 404)
        assert real == {k: v.replace(fake, ids["model"]) if isinstance(v, str) else v for k, v in missing.items()}
    assert (await other.get("/v1/models")).json() == {"data": [], "has_more": False}


async def test_delete_model(client: httpx.AsyncClient, ids):
    assert (await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": [[0, 0]]})).status_code == 200
    assert (await client.delete(f"/v1/models/{ids['model']}")).status_code == 204
    assert_problem(await client.get(f"/v1/models/{ids['model']}"), 404)
    assert_problem(await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": [[0, 0]]}), 404)
    assert (await client.get("/v1/models")).json()["data"] == []


async def test_model_survives_deleting_its_network_and_dataset(client: httpx.AsyncClient, ids):
    assert (await client.delete(f"/v1/networks/{ids['network']}")).status_code == 204
    assert (await client.delete(f"/v1/datasets/{ids['dataset']}")).status_code == 204
    r = await client.post(f"/v1/models/{ids['model']}/predict", json={"inputs": [[0, 6]]})
    assert r.json()["labels"] == ["blue"]
    assert (await client.get(f"/v1/jobs/{ids['job']}")).json()["status"] == "succeeded"


async def train(client: httpx.AsyncClient, settings: Settings, db: Database, dataset: dict, network: dict) -> str:
    """Queue a job on new resources and run the worker once: the model id."""
    ds = (await client.post("/v1/datasets", json=dataset)).json()["id"]
    net = (await client.post("/v1/networks", json=network)).json()["id"]
    body = {
        "network_id": net,
        "dataset_id": ds,
        "epochs": 60,
        "batch_size": 4,
        "seed": 0,
        "optimizer": {"name": "adam", "learning_rate": 0.05},
    }
    job = (await client.post("/v1/jobs", json=body)).json()
    assert await anyio.to_thread.run_sync(Supervisor(settings, db).run_once)
    job = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    return job["model_id"]


async def test_binary_classifier_predicts_its_int_labels(client: httpx.AsyncClient, settings, db):
    xs = [[x / 2] for x in range(-8, 9) if x]
    dataset = {"features": xs, "targets": [7 if x[0] > 0 else 3 for x in xs]}
    network = {"input_dim": 1, "layers": [{"units": 1, "activation": "sigmoid"}], "loss": "binary_cross_entropy"}
    model_id = await train(client, settings, db, dataset, network)
    assert (await client.get(f"/v1/models/{model_id}")).json()["classes"] == [3, 7]
    r = await client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[-3.0], [3.0]]})
    assert r.json()["labels"] == [3, 7]
    assert len(r.json()["outputs"][0]) == 1


async def test_regressor_predicts_values_without_labels(client: httpx.AsyncClient, settings, db):
    xs = [[x / 4] for x in range(-8, 9)]
    dataset = {"features": xs, "targets": [2 * x[0] + 1 for x in xs]}
    network = {"input_dim": 1, "layers": [{"units": 1, "activation": "linear"}], "loss": "mse"}
    model_id = await train(client, settings, db, dataset, network)
    model = (await client.get(f"/v1/models/{model_id}")).json()
    assert (model["task"], model["classes"]) == ("regression", None)
    r = await client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0.0], [1.0]]})
    assert r.json()["labels"] is None
    np.testing.assert_allclose(r.json()["outputs"], [[1.0], [3.0]], atol=0.1)
