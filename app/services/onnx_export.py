"""A trained model as an ONNX file: one pure function from an engine `Model` to the bytes of a `.onnx` graph that
onnxruntime (or any ONNX runtime at opset 17) runs with the same outputs as POST /v1/models/{id}/predict.

The graph, for a model with d features and k outputs:

    inputs  float32 [N, d]   raw feature rows, exactly what /predict takes ("N" is a dynamic batch dimension)
      -> (trained standardized) Cast to float64, Sub x_mean, Div x_scale, as /predict does it in float64
      -> Cast to the model's dtype (float32, or float64 for models trained with dtype float64)
      -> per layer: Gemm (x @ W + b), then the layer's activation
    outputs float32 [N, k]   class probabilities (softmax rows, or P(second class) for a sigmoid binary classifier)
                             or regression values, as /predict returns them (targets are never rescaled)

Activations follow the engine's formulas (app/engine/activations.py): leaky_relu with the engine's slope, elu with
alpha 1, and gelu as the engine's tanh approximation, spelled out in elementary ops. Model id, classes, feature names
and more are stored as JSON strings in the file's metadata_props.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.engine import Model
from app.engine.activations import GELU, LeakyReLU

OPSET = 17
IR_VERSION = 8  # the lowest IR version that carries opset 17, so older runtimes load the file too
INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
PRODUCER = "backprop-service"

_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


class _Graph:
    """Nodes and initializers under construction, with fresh tensor names."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: np.dtype[Any] | None = None) -> str:
        name = self.name(hint)
        array = np.asarray(value, dtype=dtype or self.dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _activation(g: _Graph, name: str, z: str, layer: int) -> str:
    """f(z) for one of the engine's activations, in the graph's dtype."""
    hint = f"layer{layer}_{name}"
    if name == "linear":
        return z
    if name == "relu":
        return g.op("Relu", [z], hint)
    if name == "leaky_relu":
        return g.op("LeakyRelu", [z], hint, alpha=float(LeakyReLU.alpha))
    if name == "elu":
        if g.dtype == np.float32:
            return g.op("Elu", [z], hint, alpha=1.0)
        # onnxruntime has no float64 Elu kernel: the engine's own form, max(z, 0) + (exp(min(z, 0)) - 1).
        zero, one = g.const(f"{hint}_zero", 0.0), g.const(f"{hint}_one", 1.0)
        neg = g.op("Sub", [g.op("Exp", [g.op("Min", [z, zero], hint)], hint), one], hint)
        return g.op("Add", [g.op("Max", [z, zero], hint), neg], hint)
    if name == "gelu":
        # The engine's tanh approximation: z/2 (1 + tanh(c z (1 + k z^2))), in the same order of operations.
        one = g.const(f"{hint}_one", 1.0)
        u = g.op("Mul", [g.op("Mul", [z, z], hint), g.const(f"{hint}_k", GELU.k)], hint)
        u = g.op("Mul", [g.op("Add", [u, one], hint), z], hint)
        t = g.op("Tanh", [g.op("Mul", [u, g.const(f"{hint}_c", GELU.c)], hint)], hint)
        a = g.op("Mul", [z, g.op("Add", [t, one], hint)], hint)
        return g.op("Mul", [a, g.const(f"{hint}_half", 0.5)], hint)
    if name == "sigmoid":
        return g.op("Sigmoid", [z], hint)
    if name == "tanh":
        return g.op("Tanh", [z], hint)
    if name == "softmax":
        return g.op("Softmax", [z], hint, axis=-1)
    raise ValueError(f"activation {name!r} has no ONNX export")


def export_onnx(
    model: Model,
    *,
    model_id: str,
    classes: Sequence[Any] | None = None,
    feature_names: Sequence[str] | None = None,
) -> bytes:
    """The model as the bytes of an ONNX file (opset 17): float32 `inputs` [N, d] -> float32 `outputs` [N, k]."""
    spec = model.spec
    dtype = np.dtype(model.dtype)
    if dtype not in _ONNX_TYPES:
        raise ValueError(f"models of dtype {dtype} have no ONNX export")
    g = _Graph(dtype)
    x = INPUT_NAME
    mean, scale = model.x_mean, model.x_scale
    standardized = mean is not None and scale is not None
    if mean is not None and scale is not None:
        x = g.op("Cast", [x], "input_f64", to=TensorProto.DOUBLE)
        x = g.op("Sub", [x, g.const("x_mean", mean, np.dtype(np.float64))], "input_centered")
        x = g.op("Div", [x, g.const("x_scale", scale, np.dtype(np.float64))], "input_scaled")
        if dtype != np.float64:
            x = g.op("Cast", [x], "input_scaled_f32", to=_ONNX_TYPES[dtype])
    elif dtype != np.float32:
        x = g.op("Cast", [x], "input_cast", to=_ONNX_TYPES[dtype])
    for i, ((w, b), layer) in enumerate(zip(model.layer_weights(), spec.layers, strict=True)):
        z = g.op("Gemm", [x, g.const(f"layer{i}_weights", w), g.const(f"layer{i}_biases", b)], f"layer{i}_z")
        x = _activation(g, layer.activation, z, i)
    if dtype != np.float32:
        g.op("Cast", [x], "outputs_f32", to=TensorProto.FLOAT)
    # The last node (never an input of another) writes the graph output under its public name.
    g.nodes[-1].output[0] = OUTPUT_NAME

    task = "classification" if spec.is_classifier else "regression"
    graph = helper.make_graph(
        g.nodes,
        f"backprop_{model_id}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", spec.input_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", spec.output_dim])],
        g.initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        doc_string=(
            f"Backprop Service model {model_id} ({task}): float32 inputs [N, {spec.input_dim}] of raw features "
            f"-> float32 outputs [N, {spec.output_dim}], as POST /v1/models/{model_id}/predict returns them."
        ),
    )
    onnx_model.ir_version = IR_VERSION
    metadata = {
        "model_id": model_id,
        "task": task,
        "loss": spec.loss,
        "classes": classes,
        "feature_names": feature_names,
        "input_dim": spec.input_dim,
        "output_dim": spec.output_dim,
        "activations": [layer.activation for layer in spec.layers],
        "standardized": standardized,
        "dtype": model.dtype,
    }
    helper.set_model_props(onnx_model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model.SerializeToString()
