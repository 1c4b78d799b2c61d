"""The multilayer perceptron: dense layers y = x @ w + b, each followed by its activation.

All parameters live in one flat buffer `params` (weights of every layer first, then every bias) and all gradients in
one flat buffer `grads` of the same layout; `weights[i]`, `biases[i]` and their gradients are views into them. The
optimizer therefore updates the whole network with a few vector operations, and the L2 penalty (weights only) is one.

Training runs on a `Workspace` of buffers preallocated per batch size, so a training step allocates nothing large.
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

# Batches of up to this many rows keep the hidden layers' buffers column-major (feature-major, like the output
# layer's), so that their GEMMs take the forms z.T = W.T @ x.T and dX.T = W @ delta.T. Measured with OpenBLAS
# (SkylakeX kernels, 1 and 2 threads) on the benchmark networks 64-256-128-10 and 100-512-256-10: the GEMMs of a
# training step take 10-15% less time at batch 16-64 than in row-major, about as long at 128, and up to 10% more
# at 256; elementwise passes cost about the same in either order (a broadcast bias add slightly more).
_FEATURE_MAJOR_MAX_BATCH = 128


@dataclass
class Workspace:
    """Buffers for one batch size: per layer, pre-activation z, activation a (z itself when the activation runs in
    place), the dropped-out output, the dropout mask, dL/d(output), and scratch buffers for backward."""

    n: int
    z: list[Array]
    a: list[Array]
    out: list[Array]          # what the next layer reads: a, or a * mask under dropout
    mask: list[Array | None]
    delta: list[Array]
    scratch: list[Array]
    bmask: list[NDArray[np.bool_]]
    ones: Array         # n ones: bias gradients are ones @ delta, a GEMV (2-3x faster than delta.sum(axis=0))
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
        w_off, b_off = 0, self.n_weights
        for i in range(len(sizes) - 1):
            n_in, n_out = sizes[i], sizes[i + 1]
            self.weights.append(params[w_off:w_off + n_in * n_out].reshape(n_in, n_out))
            self.weight_grads.append(grads[w_off:w_off + n_in * n_out].reshape(n_in, n_out))
            self.biases.append(params[b_off:b_off + n_out])
            self.bias_grads.append(grads[b_off:b_off + n_out])
            w_off += n_in * n_out
            b_off += n_out
        self._weights_t = [w.T for w in self.weights]
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
        w = self.params[: self.n_weights]
        return 0.5 * self.l2 * float(np.dot(w, w))

    # --- training -------------------------------------------------------------------------------------------------

    def workspace(self, n: int) -> Workspace:
        ws = self._workspaces.get(n)
        if ws is None:
            ws = self._workspaces[n] = self._make_workspace(n)
        return ws

    def _make_workspace(self, n: int) -> Workspace:
        z, a, out, mask, delta, scratch, bmask = [], [], [], [], [], [], []
        last = len(self.activations) - 1
        for i, act in enumerate(self.activations):
            units = self.sizes[i + 1]
            # The output layer's buffers are column-major: (n, units) arrays whose memory is (units, n). Its loss
            # reduces over each sample's few outputs, which is then a vectorized pass over rows instead of n short
            # row reductions (3-5x faster for 10 classes), and its GEMMs are as fast (forward computes z.T).
            # Small batches keep every layer column-major (feature-major): see _FEATURE_MAJOR_MAX_BATCH.
            order = "F" if i == last or n <= _FEATURE_MAJOR_MAX_BATCH else "C"
            zi = np.empty((n, units), dtype=self.dtype, order=order)
            ai = zi if (act.inplace or (i == last and self.fused)) else np.empty_like(zi)
            mi = np.empty_like(zi) if self.dropout[i] else None
            z.append(zi)
            a.append(ai)
            mask.append(mi)
            out.append(np.empty_like(zi) if mi is not None else ai)
            delta.append(np.empty_like(zi))
            scratch.append(np.empty_like(zi))
            bmask.append(np.empty((n, units), dtype=bool, order=order))
        zeros = [zeros_like(zi) if relu else None for zi, relu in zip(z, self._relu, strict=True)]
        ws = Workspace(n=n, z=z, a=a, out=out, mask=mask, delta=delta, scratch=scratch, bmask=bmask,
                       ones=np.ones(n, dtype=self.dtype), zeros=zeros)
        fm = [not zi.flags.c_contiguous for zi in z]   # feature-major: the GEMMs write z.T (and prev.T)
        ws.hidden = [(i, self.weights[i], self._weights_t[i], self.biases[i], z[i], a[i], zeros[i], mask[i], out[i],
                      fm[i]) for i in range(last)]
        ws.backward = [(i, out[i - 1], self.weights[i], self._weights_t[i], self.weight_grads[i], self.bias_grads[i],
                        delta[i - 1], fm[i - 1], mask[i - 1], a[i - 1], bmask[i - 1] if self._relu[i - 1] else None)
                       for i in range(last, 0, -1)]
        return ws

    def train_step(self, x: Array, y: Array, rng: np.random.Generator) -> tuple[float, Workspace]:
        """Forward (dropout on) and backward over one batch; fills `grads` (incl. L2) and returns the data loss."""
        x = np.asarray(x, dtype=self.dtype)     # np.dot(out=) needs operands of the network's dtype
        ws = self.workspace(x.shape[0])
        return self._train_step(x, y, rng, ws, None), ws

    def _train_step(self, x: Array, y: Array, rng: np.random.Generator, ws: Workspace, zlast: Array | None,
                    grad_scale: float = 1.0, l2: bool = True) -> float:
        """train_step on a workspace of x's batch size. `zlast`, when given, replaces the output layer's z buffer
        (same shape and memory order; fused losses only): the trainer points it into an epoch-long logits buffer,
        so the shifted logits the loss leaves there are ready for the accuracy count without a copy. `grad_scale`
        multiplies dL/d(output) (a replica's share of a split batch); `l2=False` leaves the penalty's gradient out
        (the data-parallel step adds it once, to the summed gradient)."""
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
        hi = min(self.n_weights if hi is None else hi, self.n_weights)
        if lo < hi:
            g, w = self.grads[lo:hi], self.params[lo:hi]
            g += self.l2 * w

    def _forward_train(self, x: Array, ws: Workspace, rng: np.random.Generator, zlast: Array) -> None:
        inp = x
        dot, add = np.dot, np.add                   # outs passed positionally: no keyword parsing in the hot loop
        for i, w, wt, b, z, a, zero, mask, out, fm in ws.hidden:
            if fm:
                dot(wt, inp.T, z.T)                 # z.T = W.T @ inp.T
            else:
                dot(inp, w, z)
            add(z, b, z)
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
            inp = out
        last = self._last
        # The output layer's buffers are column-major (see _make_workspace): z.T = W.T @ inp.T.
        dot(self._weights_t[last], inp.T, zlast.T)
        add(zlast, self.biases[last], zlast)
        if not self.fused:
            act = self.activations[last]
            act.forward(zlast, ws.a[last], ws.scratch[last], ws.bmask[last])

    def _backward(self, x: Array, ws: Workspace) -> None:
        last = self._last
        delta = ws.delta[last]
        ones = ws.ones
        if not self.fused:
            self.activations[last].backward(delta, ws.z[last], ws.a[last], ws.scratch[last], ws.bmask[last])
        dot, mul, zero = np.dot, np.multiply, self._zero
        for i, inp, w, wt, wg, bg, prev, fm, mask, a, bmask in ws.backward:     # layers last .. 1
            dot(inp.T, delta, wg)
            dot(ones, delta, bg)
            if fm:
                dot(w, delta.T, prev.T)             # prev.T = W @ delta.T
            else:
                dot(delta, wt, prev)
            if mask is not None:
                mul(prev, mask, prev)
            if bmask is not None:                   # ReLU.backward
                np.greater(a, zero, bmask)
                mul(prev, bmask, prev)
            else:
                self.activations[i - 1].backward(prev, ws.z[i - 1], a, ws.scratch[i - 1], ws.bmask[i - 1])
            delta = prev
        dot(x.T, delta, self.weight_grads[0])
        dot(ones, delta, self.bias_grads[0])

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
