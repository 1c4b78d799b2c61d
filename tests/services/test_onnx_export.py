"""The ONNX exporter on engine models, without the API: every activation's formula, trained models of every task
(standardized or not, float32 or float64) against Model.predict, the file's signature and its metadata."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.engine import ACTIVATIONS, MLP, Model, NetworkSpec, train
from app.engine.activations import get_activation
from app.services.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx

HIDDEN_ACTIVATIONS = [a for a in ACTIVATIONS if a != "softmax"]
ATOL = 1e-5
# Features on different scales and offsets, so standardizing changes the model, yet mild enough that an
# unstandardized network is not saturated (its outputs still vary from row to row).
SCALE, OFFSET = np.array([1.0, 4.0, 0.25]), np.array([0.0, 3.0, -1.0])


def run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(x, dtype=np.float32)})
    return out


def f32_rows(rng: np.random.Generator, n: int, d: int, scale: float = 1.0) -> np.ndarray:
    """Rows exactly representable in float32 (the file's input type), as float64 for Model.predict."""
    return (rng.normal(size=(n, d)) * scale).astype(np.float32).astype(np.float64)


def identity_model(activation: str, dtype: str, width: int = 4) -> Model:
    """A network whose output is activation(x) itself: identity weights, zero biases, then an identity linear layer."""
    spec = NetworkSpec.from_dict(
        {
            "input_dim": width,
            "layers": [{"units": width, "activation": activation}, {"units": width, "activation": "linear"}],
            "loss": "mse",
        }
    )
    net = MLP(spec, dtype=dtype, rng=np.random.default_rng(0))
    net.params[...] = 0
    for w in net.weights:
        w[...] = np.eye(width)
    return Model(spec, net.params.copy(), dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", HIDDEN_ACTIVATIONS)
def test_each_hidden_activation_exports_the_engine_formula(activation: str, dtype: str):
    z = np.linspace(-6, 6, 4 * 301).astype(np.float32).astype(np.float64).reshape(-1, 4)
    out = run_onnx(export_onnx(identity_model(activation, dtype), model_id="m"), z)
    expected = get_activation(activation)(z)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_gelu_is_the_tanh_approximation_not_erf():
    """The two GELUs differ by up to ~2e-4 around |z| = 2; the export must follow the engine's (tanh) one."""
    from math import erf

    z = np.linspace(-4, 4, 4 * 101).astype(np.float32).astype(np.float64).reshape(-1, 4)
    out = run_onnx(export_onnx(identity_model("gelu", "float64"), model_id="m"), z)
    exact = 0.5 * z * (1 + np.vectorize(erf)(z / np.sqrt(2)))
    assert np.abs(out - exact).max() > 1e-4
    np.testing.assert_allclose(out, get_activation("gelu")(z), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_output_activations_export_the_engine_formula(output: str, dtype: str):
    spec = NetworkSpec.from_dict(
        {
            "input_dim": 3,
            "layers": [{"units": 3, "activation": output}],
            "loss": "cross_entropy" if output == "softmax" else "mse",
        }
    )
    net = MLP(spec, dtype=dtype, rng=np.random.default_rng(0))
    net.weights[0][...] = np.eye(3)
    net.biases[0][...] = 0
    model = Model(spec, net.params.copy(), dtype=dtype)
    z = np.linspace(-30, 30, 3 * 201).astype(np.float32).astype(np.float64).reshape(-1, 3)
    out = run_onnx(export_onnx(model, model_id="m"), z)
    np.testing.assert_allclose(out, model.predict(z), rtol=0, atol=1e-6)
    if output == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1, atol=1e-6)


def task_data(task: str, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray]:
    """(spec, x, y) for a task, on features of very different scales and offsets (so scaling matters)."""
    x = f32_rows(rng, 80, 3) * SCALE + OFFSET
    u = (x - OFFSET) / SCALE
    hidden = [{"units": 8, "activation": "tanh"}, {"units": 6, "activation": "gelu"}]
    if task == "multiclass":
        labels = (u[:, 0] > 0).astype(int) + (u[:, 1] > 0.5).astype(int)
        layers, loss, y = [*hidden, {"units": 3, "activation": "softmax"}], "cross_entropy", np.eye(3)[labels]
    elif task == "binary":
        layers, loss = [*hidden, {"units": 1, "activation": "sigmoid"}], "binary_cross_entropy"
        y = (u[:, 0] + u[:, 2] > 0).astype(float).reshape(-1, 1)
    elif task == "regression":
        layers, loss, y = [*hidden, {"units": 1, "activation": "linear"}], "mse", (u[:, :1] * 3 + 10)
    else:
        layers, loss = [*hidden, {"units": 2, "activation": "linear"}], "huber"
        y = np.stack([np.sin(u[:, 0]), 5 * u[:, 1] - u[:, 2]], axis=1)
    return {"input_dim": 3, "layers": layers, "loss": loss}, x, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("task", ["multiclass", "binary", "regression", "multi_output"])
def test_trained_model_matches_predict(task: str, standardize: bool, dtype: str, rng: np.random.Generator):
    spec, x, y = task_data(task, rng)
    config = {"epochs": 5, "batch_size": 16, "seed": 3, "dtype": dtype, "standardize": standardize}
    model, _ = train(spec, x, y, config)
    assert (model.x_mean is not None) is standardize
    data = export_onnx(model, model_id="m")
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    for n in (1, 257):
        rows = f32_rows(rng, n, 3) * SCALE + OFFSET
        rows = rows.astype(np.float32).astype(np.float64)
        out, expected = run_onnx(data, rows), model.predict(rows)
        assert out.shape == expected.shape == (n, spec["layers"][-1]["units"])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
        if n > 1:
            assert np.ptp(expected, axis=0).max() > 1e-2, "a constant model would make the comparison vacuous"


def test_file_signature_and_metadata(rng: np.random.Generator):
    spec, x, y = task_data("multiclass", rng)
    model, _ = train(spec, x, y, {"epochs": 1, "seed": 1, "standardize": True})
    data = export_onnx(model, model_id="abc123", classes=["a", 2, True], feature_names=["f0", "f1", "f2"])
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.domain or "ai.onnx" for o in proto.opset_import] == ["ai.onnx"]
    assert proto.opset_import[0].version == OPSET
    assert proto.ir_version == 8
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == INPUT_NAME
    assert outp.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 3]
    assert [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim] == ["N", 3]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["model_id"] == "abc123"
    assert json.loads(props["classes"]) == ["a", 2, True]
    assert json.loads(props["feature_names"]) == ["f0", "f1", "f2"]
    assert json.loads(props["standardized"]) is True
    assert props["task"] == "classification"
    meta = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.custom_metadata_map["model_id"] == "abc123"


def test_regressor_metadata_has_no_classes(rng: np.random.Generator):
    spec, x, y = task_data("regression", rng)
    model, _ = train(spec, x, y, {"epochs": 1, "seed": 1})
    props = {p.key: p.value for p in onnx.load_from_string(export_onnx(model, model_id="r")).metadata_props}
    assert json.loads(props["classes"]) is None
    assert json.loads(props["feature_names"]) is None
    assert (props["task"], json.loads(props["standardized"])) == ("regression", False)
