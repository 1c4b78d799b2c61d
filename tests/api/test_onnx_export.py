"""GET /v1/models/{id}/export?format=onnx: the file onnxruntime runs gives what POST /predict gives (within 1e-5),
for every task, with and without input standardization, and for every hidden activation (each activation's exact
formula, in float32 and float64, is checked without the API in tests/services/test_onnx_export.py).

Models are trained for real but in this process: the worker's claim, then the training child's own code (`JobRun`)
called directly instead of in a spawned process, so each model takes milliseconds.
"""

import json
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.config import Settings
from app.db.session import Database
from app.engine import ACTIVATIONS
from tests.api.conftest import assert_problem, random_id, train_queued_job

pytestmark = pytest.mark.anyio

ATOL = 1e-5
HIDDEN_ACTIVATIONS = [a for a in ACTIVATIONS if a != "softmax"]
# Features on different scales and offsets, so standardizing matters, yet mild enough that a network trained on the
# raw values is not saturated.
SCALE, OFFSET = np.array([1.0, 4.0, 0.25]), np.array([0.0, 3.0, -1.0])
OUTPUT_LAYERS = {
    "multiclass": ({"units": 3, "activation": "softmax"}, "cross_entropy"),
    "binary": ({"units": 1, "activation": "sigmoid"}, "binary_cross_entropy"),
    "regression": ({"units": 1, "activation": "linear"}, "mse"),
    "multi_output": ({"units": 2, "activation": "linear"}, "huber"),
}


def feature_rows(n: int, seed: int) -> np.ndarray:
    """Rows exactly representable in float32 (the ONNX input type), so /predict and the file see the same numbers."""
    x = np.random.default_rng(seed).normal(size=(n, 3)) * SCALE + OFFSET
    return x.astype(np.float32).astype(np.float64)


def targets_for(task: str, x: np.ndarray) -> list[Any]:
    u = (x - OFFSET) / SCALE
    if task == "multiclass":
        return [("low", "mid", "high")[int(a > 0) + int(b > 0.5)] for a, b in u[:, :2]]
    if task == "binary":
        return ["yes" if a + c > 0 else "no" for a, _, c in u]
    if task == "regression":
        return [[float(v)] for v in 3 * u[:, 0] + 10.5]
    return [[float(np.sin(a)), float(5 * b - c)] for a, b, c in u]


def run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run(["outputs"], {"inputs": x.astype(np.float32)})
    return out


async def trained_model(
    client: httpx.AsyncClient,
    settings: Settings,
    db: Database,
    *,
    task: str,
    hidden: tuple[str, ...] = ("tanh", "gelu"),
    standardize: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Network, dataset and job through the API, trained for real; returns the model resource."""
    output, loss = OUTPUT_LAYERS[task]
    layers = [{"units": 8, "activation": act} for act in hidden] + [output]
    r = await client.post("/v1/networks", json={"input_dim": 3, "layers": layers, "loss": loss})
    assert r.status_code == 201, r.text
    network_id = r.json()["id"]
    x = feature_rows(60, seed)
    body = {
        "features": x.tolist(),
        "targets": targets_for(task, x),
        "feature_names": ["alpha", "beta", "gamma"],
        "task": "regression" if task in ("regression", "multi_output") else "classification",
    }
    r = await client.post("/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    job_body = {
        "network_id": network_id,
        "dataset_id": dataset_id,
        "epochs": 4,
        "batch_size": 16,
        "optimizer": {"name": "adam", "learning_rate": 0.02},
        "standardize": standardize,
        "seed": 11,
    }
    r = await client.post("/v1/jobs", json=job_body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    train_queued_job(settings, db, job_id)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded", job
    model = (await client.get(f"/v1/models/{job['model_id']}")).json()
    assert (model["input_scaling"] is not None) is standardize
    return model


async def export(client: httpx.AsyncClient, model_id: str) -> bytes:
    r = await client.get(f"/v1/models/{model_id}/export", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    return r.content


async def assert_parity(client: httpx.AsyncClient, model_id: str, data: bytes) -> None:
    """The file and /predict agree on a single row and on a batch, both inside and outside the training range."""
    for n, seed in ((1, 101), (64, 102)):
        x = feature_rows(n, seed)
        if n > 1:
            x[: n // 4] *= 3  # farther out than anything seen in training
        r = await client.post(f"/v1/models/{model_id}/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200, r.text
        expected = np.array(r.json()["outputs"])
        out = run_onnx(data, x)
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
        if n > 1:
            assert np.ptp(expected, axis=0).max() > 1e-2, "a constant model would make this comparison vacuous"


# (task, standardize, hidden activations): every task with and without scaling, every hidden activation twice.
CASES = [
    ("multiclass", True, ("relu", "gelu")),
    ("multiclass", False, ("leaky_relu", "tanh")),
    ("binary", True, ("elu", "sigmoid")),
    ("binary", False, ("gelu", "linear")),
    ("regression", True, ("tanh", "leaky_relu")),
    ("regression", False, ("sigmoid", "elu")),
    ("multi_output", True, ("linear", "relu")),
    ("multi_output", False, ("relu", "gelu")),
]


def test_the_cases_cover_every_task_scaling_and_hidden_activation():
    assert {(task, std) for task, std, _ in CASES} == {(t, s) for t in OUTPUT_LAYERS for s in (True, False)}
    assert {act for *_, hidden in CASES for act in hidden} == set(HIDDEN_ACTIVATIONS)


@pytest.mark.parametrize(
    ("task", "standardize", "hidden"),
    CASES,
    ids=[f"{t}-{'standardized' if s else 'raw'}-{'+'.join(h)}" for t, s, h in CASES],
)
async def test_onnx_matches_predict(
    client: httpx.AsyncClient, settings: Settings, db: Database, task: str, standardize: bool, hidden: tuple[str, ...]
):
    model = await trained_model(client, settings, db, task=task, hidden=hidden, standardize=standardize)
    assert [layer["activation"] for layer in model["spec"]["layers"][:-1]] == list(hidden)
    data = await export(client, model["id"])
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    await assert_parity(client, model["id"], data)


async def test_export_is_an_onnx_download_with_the_model_metadata(
    client: httpx.AsyncClient, settings: Settings, db: Database
):
    model = await trained_model(client, settings, db, task="multiclass")
    r = await client.get(f"/v1/models/{model['id']}/export")  # format defaults to onnx
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{model["id"]}.onnx"'
    proto = onnx.load_from_string(r.content)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["inputs"]
    assert [o.name for o in proto.graph.output] == ["outputs"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["model_id"] == model["id"]
    assert json.loads(props["classes"]) == model["classes"] == ["high", "low", "mid"]
    assert json.loads(props["feature_names"]) == ["alpha", "beta", "gamma"]

    # The feature names describe the model's inputs, so they stay in the file after the dataset is deleted.
    assert (await client.delete(f"/v1/datasets/{model['dataset_id']}")).status_code == 204
    proto = onnx.load_from_string(await export(client, model["id"]))
    assert json.loads({p.key: p.value for p in proto.metadata_props}["feature_names"]) == ["alpha", "beta", "gamma"]


async def test_format_other_than_onnx_is_422_naming_the_field(
    client: httpx.AsyncClient, settings: Settings, db: Database
):
    model = await trained_model(client, settings, db, task="regression")
    r = await client.get(f"/v1/models/{model['id']}/export", params={"format": "npz"})
    assert_problem(r, 422, "format", "onnx", field="format")


async def test_export_of_an_unknown_model_is_404(client: httpx.AsyncClient):
    model_id = random_id()
    assert_problem(await client.get(f"/v1/models/{model_id}/export"), 404, model_id)


async def test_export_of_another_owners_model_is_404_and_needs_a_key(
    client: httpx.AsyncClient, other: httpx.AsyncClient, anon: httpx.AsyncClient, settings: Settings, db: Database
):
    model = await trained_model(client, settings, db, task="binary")
    assert_problem(await other.get(f"/v1/models/{model['id']}/export"), 404, model["id"])
    assert_problem(await anon.get(f"/v1/models/{model['id']}/export"), 401)
