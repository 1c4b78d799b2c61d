"""Optimizers over one flat parameter vector and its flat gradient.

Every parameter of a network is a view into one buffer, so a step is a handful of whole-vector NumPy operations
with `out=` and no allocation, whatever the number of layers. State (moments, step count) is created once.

sgd:       p -= lr g
momentum:  v = mu v + g;  p -= lr (g + mu v) with nesterov, else lr v                (PyTorch's form)
rmsprop:   s = rho s + (1 - rho) g^2;  p -= lr g / (sqrt(s) + eps)
adam:      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr_t m / (sqrt(v) + eps_t), with
           lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) and eps_t = eps sqrt(1 - b2^t), the bias-corrected update.
           Both moments are kept as running sums, s = m / (1 - b1) (s = b1 s + g) and u = v / (1 - b2)
           (u = b2 u + g^2), one pass fewer each; (1 - b1) and sqrt(1 - b2) go into the step's scalars.
adamw:     adam, and p_w *= 1 - lr wd on the weights first (decoupled weight decay)
The coupled L2 penalty of the other optimizers lives in the network's gradient (MLP.add_l2_grad).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .spec import OptimizerConfig

Array = NDArray[np.floating[Any]]

# Whole-vector passes touch several arrays of n floats; past the cache that is memory-bound, so long vectors are
# updated in blocks while all of an update's operations run over them. Each pass is one NumPy call, so small blocks
# pay the call overhead many times. 2^16 elements (256 KiB of float32 per array; Adam's five arrays then fit a 2 MiB
# L2) measured best: at 185k parameters 3% faster per Adam step than 2^18, at 0.5-2M 12-20% faster; networks of up
# to 2^16 parameters are updated in one block.
_BLOCK = 1 << 16


class Optimizer:
    decoupled = False       # AdamW: weight decay applied to the weights by the step, not added to the gradient
    # The step reads each gradient element before its first write to the scratch, so the gradient's own memory can
    # be the scratch (`update(..., tmp=None)`: the gradient is consumed).
    grads_as_scratch = False

    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any],
                 weight_ranges: list[tuple[int, int]]) -> None:
        self.cfg = cfg
        self.n = n
        self.weight_ranges = weight_ranges      # where the weights are in the flat vector (AdamW decays only them)
        self.t = 0
        self.lr = 0.0
        self.state: dict[str, Array] = {}
        self._tmp = np.empty(min(n, _BLOCK), dtype=dtype)

    def step(self, params: Array, grads: Array, lr: float) -> None:
        self.begin(lr)
        self.update(params, grads, 0, self.n, self._tmp)

    def begin(self, lr: float) -> None:
        """Start step t + 1 at learning rate lr: `update` then applies it to any ranges of the parameters."""
        self.t += 1
        self.lr = lr

    def update(self, params: Array, grads: Array, lo: int, hi: int, tmp: Array | None) -> None:
        """Apply the step begun by `begin` to params[lo:hi] from grads[lo:hi]. `tmp`: scratch of min(hi - lo,
        BLOCK) floats, or None to use grads[lo:hi] itself (only where `grads_as_scratch`). Elementwise: updating a
        vector range by range gives the same bits as all at once, so data-parallel replicas (parallel.py) each
        update their own range."""
        for s in range(lo, hi, _BLOCK):
            e = min(s + _BLOCK, hi)
            g = grads[s:e]
            self._update(params[s:e], g, s, e, g if tmp is None else tmp[: e - s])

    def _update(self, p: Array, g: Array, lo: int, hi: int, t: Array) -> None:
        raise NotImplementedError

    def share(self, alloc: Callable[[int], Array]) -> None:
        """Move the state into buffers from `alloc(n)` (shared memory: see parallel.py)."""
        for key, arr in self.state.items():
            buf = alloc(arr.size)
            buf[...] = arr
            self.state[key] = buf

    def state_arrays(self) -> dict[str, Array]:
        return dict(self.state)

    def load_state(self, t: int, arrays: dict[str, Array]) -> None:
        self.t = int(t)
        for key, arr in arrays.items():
            if key not in self.state or self.state[key].shape != arr.shape:
                raise ValueError(f"optimizer state {key!r} does not fit this network")
            np.copyto(self.state[key], arr)


class SGD(Optimizer):
    grads_as_scratch = True

    def _update(self, p: Array, g: Array, lo: int, hi: int, t: Array) -> None:
        np.multiply(g, self.lr, out=t)
        p -= t


class Momentum(Optimizer):
    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any],
                 weight_ranges: list[tuple[int, int]]) -> None:
        super().__init__(cfg, n, dtype, weight_ranges)
        self.state["velocity"] = np.zeros(n, dtype=dtype)

    def _update(self, p: Array, g: Array, lo: int, hi: int, t: Array) -> None:
        mu, lr = self.cfg.momentum, self.lr
        v = self.state["velocity"][lo:hi]
        v *= mu
        v += g
        if self.cfg.nesterov:
            np.multiply(v, mu, out=t)
            t += g
            t *= lr
        else:
            np.multiply(v, lr, out=t)
        p -= t


class RMSprop(Optimizer):
    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any],
                 weight_ranges: list[tuple[int, int]]) -> None:
        super().__init__(cfg, n, dtype, weight_ranges)
        self.state["square_avg"] = np.zeros(n, dtype=dtype)

    def _update(self, p: Array, g: Array, lo: int, hi: int, t: Array) -> None:
        rho, eps, lr = self.cfg.rho, self.cfg.eps, self.lr
        v = self.state["square_avg"][lo:hi]
        np.multiply(g, g, out=t)
        t -= v
        t *= 1.0 - rho
        v += t                          # v = rho v + (1 - rho) g^2
        np.sqrt(v, out=t)
        t *= 1.0 / lr
        t += eps / lr
        np.divide(g, t, out=t)          # lr g / (sqrt(v) + eps)
        p -= t


class Adam(Optimizer):
    grads_as_scratch = True

    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any],
                 weight_ranges: list[tuple[int, int]]) -> None:
        super().__init__(cfg, n, dtype, weight_ranges)
        self.state["m_sum"] = np.zeros(n, dtype=dtype)     # m / (1 - beta1)
        self.state["v_sum"] = np.zeros(n, dtype=dtype)     # v / (1 - beta2)
        # Scalars as 0-d arrays of the network's dtype, passed with positional outs: the same values NumPy would cast
        # Python floats to, without the per-call conversion and keyword parsing (10% of a step at 50k parameters,
        # a third at 2k).
        self._b1, self._b2 = np.array(cfg.beta1, dtype=dtype), np.array(cfg.beta2, dtype=dtype)
        self._k1, self._k2 = np.zeros((), dtype=dtype), np.zeros((), dtype=dtype)
        self._skip, self._decay = True, None

    def load_state(self, t: int, arrays: dict[str, Array]) -> None:
        arrays = dict(arrays)
        if "m" in arrays and "m_sum" not in arrays:        # a checkpoint from before m_sum: m itself
            arrays["m_sum"] = np.asarray(arrays.pop("m")) / (1.0 - self.cfg.beta1)
        if "v" in arrays and "v_sum" not in arrays:        # ... and from before v_sum: v itself
            arrays["v_sum"] = np.asarray(arrays.pop("v")) / (1.0 - self.cfg.beta2)
        super().load_state(t, arrays)

    def begin(self, lr: float) -> None:
        super().begin(lr)
        cfg, t_ = self.cfg, self.t
        b1, b2 = cfg.beta1, cfg.beta2
        c2 = math.sqrt(1.0 - b2**t_)
        lr_t = lr * c2 / (1.0 - b1**t_)
        self._skip = lr_t == 0.0
        if self._skip:
            return
        # lr_t m / (sqrt(v) + eps_t) = s / (sqrt(u) k1 + k2), with m = (1 - b1) s and v = (1 - b2) u.
        scale = lr_t * (1.0 - b1)
        self._k1[()], self._k2[()] = math.sqrt(1.0 - b2) / scale, cfg.eps * c2 / scale
        self._decay = 1.0 - lr * cfg.weight_decay if self.decoupled and cfg.weight_decay else None

    def update(self, params: Array, grads: Array, lo: int, hi: int, tmp: Array | None) -> None:
        if self._skip:
            return
        if self._decay is not None:
            for a, b in self.weight_ranges:
                s, e = max(a, lo), min(b, hi)
                if s < e:
                    params[s:e] *= self._decay
        if hi - lo <= _BLOCK:                   # one block: no slicing of the whole-vector case
            if lo == 0 and hi == self.n:
                self._update(params, grads, 0, hi, grads if tmp is None else tmp[:hi])
            else:
                g = grads[lo:hi]
                self._update(params[lo:hi], g, lo, hi, g if tmp is None else tmp[: hi - lo])
        else:
            super().update(params, grads, lo, hi, tmp)

    def _update(self, p: Array, g: Array, lo: int, hi: int, t: Array) -> None:
        m, u = self.state["m_sum"], self.state["v_sum"]
        if hi - lo != self.n:
            m, u = m[lo:hi], u[lo:hi]
        mul, add, sqrt, div, sub = np.multiply, np.add, np.sqrt, np.divide, np.subtract
        B1, B2, k1, k2 = self._b1, self._b2, self._k1, self._k2
        # In-place multiplies by a scalar are the cheapest passes; 10 passes in all (the textbook form: 12).
        mul(m, B1, m)
        add(m, g, m)                # s = b1 s + g
        mul(g, g, t)
        mul(u, B2, u)
        add(u, t, u)                # u = b2 u + g^2
        sqrt(u, t)
        mul(t, k1, t)
        add(t, k2, t)               # (sqrt(v) + eps_t) / (lr_t (1 - b1))
        div(m, t, t)
        sub(p, t, p)


class AdamW(Adam):
    decoupled = True


OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {
    "sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW,
}


def make_optimizer(cfg: OptimizerConfig, n: int, dtype: np.dtype[Any],
                   weight_ranges: list[tuple[int, int]]) -> Optimizer:
    return OPTIMIZER_CLASSES[cfg.name](cfg, n, dtype, weight_ranges)
