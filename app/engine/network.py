"""The multilayer perceptron: dense layers y = x @ w + b, each followed by its activation.

All parameters live in one flat buffer `params` and all gradients in one flat buffer `grads` of the same layout:
layer by layer, the layer's weights (n_in x n_out, row-major) followed by its biases, so that each layer is one
(n_in + 1) x n_out matrix whose last row is the bias. `weights[i]`, `biases[i]` and their gradients are views into
them. The optimizer therefore updates the whole network with a few vector operations.

Training runs on a `Workspace` of buffers preallocated per batch size, so a training step allocates nothing large.
Its inputs carry a last column of ones, and so does every hidden layer's output buffer, so that one GEMM per layer
computes x @ w + b forward and both the weight and the bias gradients backward (measured on the benchmark networks
at 32-128 rows: 6-10 us a step less than a separate broadcast bias add and bias-gradient GEMV per layer, which in
the feature-major layout below run over short rows).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .activations import Activation, ReLU, get_activation, sigmoid, softmax, zeros_like
from .initializers import initialize
from .losses import Loss, get_loss
from .spec import NetworkSpec

Array = NDArray[np.floating[Any]]

# Training buffers are column-major (feature-major), so that the GEMMs take the forms z.T = W.T @ x.T and
# dX.T = W @ delta.T and a layer's output rows can carry the row of ones that its next layer's bias multiplies.
# Measured with OpenBLAS on the benchmark networks 64-256-128-10 and 100-512-256-10: a training step's GEMMs take
# 10-15% less time at batch 16-64 than in row-major (SkylakeX kernels) or about the same (Haswell kernels on
# Zen 4, all batch sizes within 1-3%); at 256 rows up to 10% more (SkylakeX), which the folded bias more than
# makes up for on the hosts we run on.


def legacy_index(sizes: list[int]) -> NDArray[np.intp]:
    """Where each parameter of the per-layer layout sits in the earlier layout (every layer's weights, then every
    bias): `params = legacy[legacy_index(sizes)]` converts a model or checkpoint written in that layout."""
    n_weights = sum(sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1))
    parts, w_off, b_off = [], 0, n_weights
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        parts += [np.arange(w_off, w_off + n_in * n_out), np.arange(b_off, b_off + n_out)]
        w_off += n_in * n_out
        b_off += n_out
    return np.concatenate(parts)


def with_ones(x: Array) -> Array:
    """x with a last column of ones (row-major): the input a training step takes (see the module docstring)."""
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=x.dtype)
    out[:, :-1] = x
    out[:, -1] = 1.0
    return out


@dataclass
class Workspace:
    """Buffers for one batch size: per layer, pre-activation z, activation a (z itself when the activation runs in
    place), the dropped-out output, the dropout mask, dL/d(output), and scratch buffers for backward. All (n, units)
    and column-major; a hidden layer's `out` is the first columns of `inp[i + 1]`, whose last column is ones."""

    n: int
    z: list[Array]
    a: list[Array]
    out: list[Array]          # what the next layer reads: a, or a * mask under dropout
    inp: list[Array | None]   # per layer, its input with the column of ones (None for layer 0: the caller's x)
    mask: list[Array | None]
    delta: list[Array]
    scratch: list[Array]
    bmask: list[NDArray[np.bool_]]
    zeros: list[Array | None]  # read-only zeros per ReLU layer (see activations.ReLU)
    # What the hot loop reads, per layer, gathered once into tuples (see MLP._forward_train and _backward).
    hidden: list[tuple[Any, ...]] = field(default_factory=list)
    backward: list[tuple[Any, ...]] = field(default_factory=list)


class MLP:
    def __init__(self, spec: NetworkSpec, *, dtype: str | np.dtype[Any] = "float32",
                 rng: np.random.Generator | None = None, params: Array | None = None) -> None:
        self.spec = spec
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        sizes = spec.layer_sizes()
        self.sizes = sizes
        n_layers = len(spec.layers)
        self.n_weights = sum(sizes[i] * sizes[i + 1] for i in range(n_layers))
        self.n_params = self.n_weights + sum(sizes[1:])
        # Each layer's (n_in + 1) x n_out block of the flat buffers, and the weights' part of it.
        self.offsets = [sum((sizes[j] + 1) * sizes[j + 1] for j in range(i)) for i in range(n_layers + 1)]
        self.weight_ranges = [(self.offsets[i], self.offsets[i] + sizes[i] * sizes[i + 1]) for i in range(n_layers)]
        self._bind(np.zeros(self.n_params, dtype=self.dtype), np.zeros(self.n_params, dtype=self.dtype))
        self.activations: list[Activation] = [get_activation(layer.activation) for layer in spec.layers]
        # The hot loop runs ReLU inline (the same ufuncs as ReLU.forward/backward, without the calls around them).
        self._relu = [type(act) is ReLU for act in self.activations]
        self._last = n_layers - 1
        self.dropout = [layer.dropout for layer in spec.layers]
        self.loss: Loss = get_loss(spec.loss)
        self._zero = np.zeros((), dtype=self.dtype)     # 0 as a 0-d array: no scalar conversion per call
        self.fused = self.loss.fused
        self.l2 = 0.0
        if params is not None:
            self.set_params(params)
        else:
            if rng is None:
                raise ValueError("an MLP needs either params or an rng to initialize them")
            for i, layer in enumerate(spec.layers):
                self.weights[i][...] = initialize(layer.initializer(), sizes[i], sizes[i + 1], rng)

    def _bind(self, params: Array, grads: Array) -> None:
        """Use these flat buffers for the parameters and gradients: every layer's arrays become views into them."""
        sizes = self.sizes
        self.params, self.grads = params, grads
        self.weights: list[Array] = []
        self.biases: list[Array] = []
        self.weight_grads: list[Array] = []
        self.bias_grads: list[Array] = []
        self._layers: list[Array] = []          # (n_in + 1, n_out): weights and the bias row
        self._layer_grads: list[Array] = []
        for i in range(len(sizes) - 1):
            n_in, n_out = sizes[i], sizes[i + 1]
            block = params[self.offsets[i]:self.offsets[i + 1]].reshape(n_in + 1, n_out)
            gblock = grads[self.offsets[i]:self.offsets[i + 1]].reshape(n_in + 1, n_out)
            self._layers.append(block)
            self._layer_grads.append(gblock)
            self.weights.append(block[:n_in])
            self.biases.append(block[n_in])
            self.weight_grads.append(gblock[:n_in])
            self.bias_grads.append(gblock[n_in])
        self._layers_t = [w.T for w in self._layers]
        self._workspaces: dict[int, Workspace] = {}

    def share(self, params: Array, grads: Array) -> None:
        """Move the parameters into `params` (values copied) and compute gradients into `grads`: flat buffers of
        n_params, in shared memory for data-parallel training (parallel.py)."""
        params[...] = self.params
        self._bind(params, grads)

    def replica(self, grads: Array) -> MLP:
        """A network reading this one's parameters (the same buffer) that computes its gradients into `grads`."""
        twin = copy.copy(self)
        twin._bind(self.params, grads)
        return twin

    # --- parameters -----------------------------------------------------------------------------------------------

    def set_params(self, params: Array) -> None:
        params = np.asarray(params)
        if params.shape != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {params.shape}")
        np.copyto(self.params, params, casting="same_kind")

    def param_arrays(self) -> list[Array]:
        """Weights and biases, layer by layer: [w0, b0, w1, b1, ...] (views)."""
        out: list[Array] = []
        for w, b in zip(self.weights, self.biases, strict=True):
            out += [w, b]
        return out

    def grad_arrays(self) -> list[Array]:
        out: list[Array] = []
        for w, b in zip(self.weight_grads, self.bias_grads, strict=True):
            out += [w, b]
        return out

    def l2_penalty(self) -> float:
        """0.5 * l2 * ||w||^2 over the weights (biases are not decayed)."""
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * sum(float(np.dot(w.reshape(-1), w.reshape(-1))) for w in self.weights)

    # --- training -------------------------------------------------------------------------------------------------

    def workspace(self, n: int) -> Workspace:
        ws = self._workspaces.get(n)
        if ws is None:
            ws = self._workspaces[n] = self._make_workspace(n)
        return ws

    def _make_workspace(self, n: int) -> Workspace:
        z, a, out, mask, delta, scratch, bmask = [], [], [], [], [], [], []
        inp: list[Array | None] = [None]
        last = len(self.activations) - 1
        for i, act in enumerate(self.activations):
            units = self.sizes[i + 1]
            # Column-major: (n, units) arrays whose memory is (units, n). The output layer's loss reduces over each
            # sample's few outputs, which is then a vectorized pass over rows instead of n short row reductions
            # (3-5x faster for 10 classes); see the note on the layout above for the GEMMs.
            zi = np.empty((n, units), dtype=self.dtype, order="F")
            ai = zi if (act.inplace or (i == last and self.fused)) else np.empty_like(zi)
            mi = np.empty_like(zi) if self.dropout[i] else None
            if i < last:                        # what the next layer reads, with its column of ones
                block = np.empty((units + 1, n), dtype=self.dtype)
                block[units] = 1.0
                inp.append(block.T)
                oi = block[:units].T
                if mi is None:
                    if ai is zi:
                        zi = ai = oi
                    else:
                        ai = oi
            else:
                oi = ai
            z.append(zi)
            a.append(ai)
            mask.append(mi)
            out.append(oi)
            delta.append(np.empty_like(zi))
            scratch.append(np.empty_like(zi))
            bmask.append(np.empty((n, units), dtype=bool, order="F"))
        zeros = [zeros_like(zi) if relu else None for zi, relu in zip(z, self._relu, strict=True)]
        ws = Workspace(n=n, z=z, a=a, out=out, inp=inp, mask=mask, delta=delta, scratch=scratch, bmask=bmask,
                       zeros=zeros)
        ws.hidden = [(i, self._layers_t[i], z[i], a[i], zeros[i], mask[i], out[i], inp[i + 1]) for i in range(last)]
        ws.backward = [(i, inp[i], self.weights[i], self._layer_grads[i], delta[i - 1], mask[i - 1], a[i - 1],
                        bmask[i - 1] if self._relu[i - 1] else None)
                       for i in range(last, 0, -1)]
        return ws

    def train_step(self, x: Array, y: Array, rng: np.random.Generator) -> tuple[float, Workspace]:
        """Forward (dropout on) and backward over one batch; fills `grads` (incl. L2) and returns the data loss."""
        xa = with_ones(np.asarray(x, dtype=self.dtype))   # np.dot(out=) needs operands of the network's dtype
        ws = self.workspace(xa.shape[0])
        return self._train_step(xa, y, rng, ws, None), ws

    def _train_step(self, x: Array, y: Array, rng: np.random.Generator, ws: Workspace, zlast: Array | None,
                    grad_scale: float = 1.0, l2: bool = True) -> float:
        """train_step on a workspace of x's batch size, x with its column of ones (`with_ones`). `zlast`, when given,
        replaces the output layer's z buffer (same shape and memory order; fused losses only): the trainer points it
        into an epoch-long logits buffer, so the shifted logits the loss leaves there are ready for the accuracy
        count without a copy. `grad_scale` multiplies dL/d(output) (a replica's share of a split batch); `l2=False`
        leaves the penalty's gradient out (the data-parallel step adds it once, to the summed gradient)."""
        last = self._last
        if zlast is None:
            zlast = ws.z[last]
        self._forward_train(x, ws, rng, zlast)
        loss = self.loss.value_and_grad(zlast if self.fused else ws.a[last], y, ws.delta[last], grad_scale)
        self._backward(x, ws)
        if self.l2 and l2:
            self.add_l2_grad()
        return loss

    def add_l2_grad(self, lo: int = 0, hi: int | None = None) -> None:
        """grads += l2 * params over the weights within [lo, hi) (biases are not decayed)."""
        hi = self.n_params if hi is None else hi
        for a, b in self.weight_ranges:
            s, e = max(a, lo), min(b, hi)
            if s < e:
                g = self.grads[s:e]
                g += self.l2 * self.params[s:e]

    def _forward_train(self, x: Array, ws: Workspace, rng: np.random.Generator, zlast: Array) -> None:
        inp = x
        dot = np.dot                                # outs passed positionally: no keyword parsing in the hot loop
        for i, wt, z, a, zero, mask, out, nxt in ws.hidden:
            dot(wt, inp.T, z.T)                     # z.T = [W; b].T @ [inp, 1].T
            if zero is not None:
                np.maximum(z, zero, out=a)          # ReLU.forward (its out only by keyword)
            else:
                self.activations[i].forward(z, a, ws.scratch[i], ws.bmask[i])
            if mask is not None:
                p = self.dropout[i]
                rng.random(out=mask, dtype=self.dtype.type)
                np.greater_equal(mask, p, out=ws.bmask[i])
                np.multiply(ws.bmask[i], 1.0 / (1.0 - p), out=mask)
                np.multiply(a, mask, out=out)
            inp = nxt
        last = self._last
        dot(self._layers_t[last], inp.T, zlast.T)
        if not self.fused:
            act = self.activations[last]
            act.forward(zlast, ws.a[last], ws.scratch[last], ws.bmask[last])

    def _backward(self, x: Array, ws: Workspace) -> None:
        last = self._last
        delta = ws.delta[last]
        if not self.fused:
            self.activations[last].backward(delta, ws.z[last], ws.a[last], ws.scratch[last], ws.bmask[last])
        dot, mul, zero = np.dot, np.multiply, self._zero
        for i, inp, w, g, prev, mask, a, bmask in ws.backward:     # layers last .. 1
            dot(inp.T, delta, g)                    # [dW; db] = [inp, 1].T @ delta
            dot(w, delta.T, prev.T)                 # prev.T = W @ delta.T
            if mask is not None:
                mul(prev, mask, prev)
            if bmask is not None:                   # ReLU.backward
                np.greater(a, zero, bmask)
                mul(prev, bmask, prev)
            else:
                self.activations[i - 1].backward(prev, ws.z[i - 1], a, ws.scratch[i - 1], ws.bmask[i - 1])
            delta = prev
        dot(x.T, delta, self._layer_grads[0])

    # --- inference ------------------------------------------------------------------------------------------------

    def forward(self, x: Array, *, logits: bool = False) -> Array:
        """Outputs for x in inference mode (no dropout). With logits=True a fused loss's output layer returns z."""
        a = np.asarray(x, dtype=self.dtype)
        last = len(self.activations) - 1
        for i, act in enumerate(self.activations):
            z = a @ self.weights[i]
            z += self.biases[i]
            if i == last and self.fused and logits:
                return z
            if i == last and self.fused:
                return softmax(z, z) if self.spec.loss == "cross_entropy" else sigmoid(z, z)
            out = z if act.inplace else np.empty_like(z)
            act.forward(z, out, np.empty_like(z), np.empty(z.shape, dtype=bool))
            a = out
        return a

    def predict(self, x: Array, *, batch_size: int = 8192) -> Array:
        x = np.asarray(x, dtype=self.dtype)
        if x.shape[0] <= batch_size:
            return self.forward(x)
        return np.concatenate([self.forward(x[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)])

    def objective(self, x: Array, y: Array) -> float:
        """Mean data loss plus the L2 penalty, in inference mode (used by gradient checks)."""
        pred = self.forward(x, logits=True)
        return self.loss.value(pred, y) + self.l2_penalty()

    def gradient(self, x: Array, y: Array) -> Array:
        """d objective / d params (no dropout), as a copy of the flat gradient."""
        saved = self.dropout
        self.dropout = [0.0] * len(saved)
        self._workspaces.pop(x.shape[0], None)
        try:
            self.train_step(np.ascontiguousarray(x, dtype=self.dtype), np.asarray(y, dtype=self.dtype),
                            np.random.default_rng(0))
        finally:
            self.dropout = saved
            self._workspaces.pop(x.shape[0], None)
        return self.grads.copy()
