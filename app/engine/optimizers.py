"""Optimizers over one flat parameter vector and its flat gradient.

Every parameter of a network is a view into one buffer, so a step is a handful of whole-vector NumPy operations
with `out=` and no allocation, whatever the number of layers. State (moments, step count) is created once.

sgd:       p -= lr g
momentum:  v = mu v + g;  p -= lr (g + mu v) with nesterov, else lr v                (PyTorch's form)
rmsprop:   s = rho s + (1 - rho) g^2;  p -= lr g / (sqrt(s) + eps)
adam:      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr_t m / (sqrt(v) + eps_t), with
           lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) and eps_t = eps sqrt(1 - b2^t), the bias-corrected update
adamw:     adam, and p_w *= 1 - lr wd on the weights first (decoupled weight decay)
The coupled L2 penalty of the other optimizers lives in the network's gradient (MLP.add_l2_grad).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .spec import OptimizerConfig

Array = NDArray[np.floating[Any]]

# Whole-vector passes touch several arrays of n floats; past the cache that is memory-bound, so long vectors are
# updated in blocks while all of an update's operations run over them. Each pass is one NumPy call, so small blocks
# pay the call overhead many times: 2^18 elements (1 MiB of float32 per array) measured best, from 50k to 2M
# parameters (an in-cache 2^15 block was 10-20% slower on networks of 50k-200k parameters).
_BLOCK = 1 << 18


class Optimizer:
    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any], n_weights: int) -> None:
        self.cfg = cfg
        self.n = n
        self.n_weights = n_weights
        self.t = 0
        self.state: dict[str, Array] = {}
        self._tmp = np.empty(min(n, _BLOCK), dtype=dtype)

    def step(self, params: Array, grads: Array, lr: float) -> None:
        self.t += 1
        self._step(params, grads, lr)

    def _step(self, params: Array, grads: Array, lr: float) -> None:
        raise NotImplementedError

    def _blocks(self) -> range:
        return range(0, self.n, _BLOCK)

    def state_arrays(self) -> dict[str, Array]:
        return dict(self.state)

    def load_state(self, t: int, arrays: dict[str, Array]) -> None:
        self.t = int(t)
        for key, arr in arrays.items():
            if key not in self.state or self.state[key].shape != arr.shape:
                raise ValueError(f"optimizer state {key!r} does not fit this network")
            np.copyto(self.state[key], arr)


class SGD(Optimizer):
    def _step(self, params: Array, grads: Array, lr: float) -> None:
        tmp = self._tmp
        for s in self._blocks():
            e = min(s + _BLOCK, self.n)
            t = tmp[: e - s]
            np.multiply(grads[s:e], lr, out=t)
            params[s:e] -= t


class Momentum(Optimizer):
    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any], n_weights: int) -> None:
        super().__init__(cfg, n, dtype, n_weights)
        self.state["velocity"] = np.zeros(n, dtype=dtype)

    def _step(self, params: Array, grads: Array, lr: float) -> None:
        mu = self.cfg.momentum
        vel, tmp = self.state["velocity"], self._tmp
        for s in self._blocks():
            e = min(s + _BLOCK, self.n)
            v, g, t = vel[s:e], grads[s:e], tmp[: e - s]
            v *= mu
            v += g
            if self.cfg.nesterov:
                np.multiply(v, mu, out=t)
                t += g
                t *= lr
            else:
                np.multiply(v, lr, out=t)
            params[s:e] -= t


class RMSprop(Optimizer):
    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any], n_weights: int) -> None:
        super().__init__(cfg, n, dtype, n_weights)
        self.state["square_avg"] = np.zeros(n, dtype=dtype)

    def _step(self, params: Array, grads: Array, lr: float) -> None:
        rho, eps = self.cfg.rho, self.cfg.eps
        sq, tmp = self.state["square_avg"], self._tmp
        for s in self._blocks():
            e = min(s + _BLOCK, self.n)
            v, g, t = sq[s:e], grads[s:e], tmp[: e - s]
            np.multiply(g, g, out=t)
            t -= v
            t *= 1.0 - rho
            v += t                      # v = rho v + (1 - rho) g^2
            np.sqrt(v, out=t)
            t *= 1.0 / lr
            t += eps / lr
            np.divide(g, t, out=t)      # lr g / (sqrt(v) + eps)
            params[s:e] -= t


class Adam(Optimizer):
    def __init__(self, cfg: OptimizerConfig, n: int, dtype: np.dtype[Any], n_weights: int) -> None:
        super().__init__(cfg, n, dtype, n_weights)
        self.state["m"] = np.zeros(n, dtype=dtype)
        self.state["v"] = np.zeros(n, dtype=dtype)

    def _step(self, params: Array, grads: Array, lr: float) -> None:
        cfg, t_ = self.cfg, self.t
        b1, b2 = cfg.beta1, cfg.beta2
        c2 = math.sqrt(1.0 - b2**t_)
        lr_t = lr * c2 / (1.0 - b1**t_)
        if lr_t == 0.0:
            return
        inv_lr, eps_t = 1.0 / lr_t, cfg.eps * c2 / lr_t
        if isinstance(self, AdamW) and cfg.weight_decay:
            params[: self.n_weights] *= 1.0 - lr * cfg.weight_decay
        m_all, v_all, tmp = self.state["m"], self.state["v"], self._tmp
        c1, c2_ = 1.0 - b1, 1.0 - b2
        for s in self._blocks():
            e = min(s + _BLOCK, self.n)
            m, v, g, t = m_all[s:e], v_all[s:e], grads[s:e], tmp[: e - s]
            # m and v decay in place (an in-place multiply by a scalar is the cheapest pass) before the scaled
            # gradient terms are added: as many passes as the (g - m) (1 - b1) form, ~15% less time, textbook rounding.
            m *= b1
            np.multiply(g, c1, out=t)
            m += t                      # m = b1 m + (1 - b1) g
            v *= b2
            np.multiply(g, g, out=t)
            t *= c2_
            v += t                      # v = b2 v + (1 - b2) g^2
            np.sqrt(v, out=t)
            t *= inv_lr
            t += eps_t                  # (sqrt(v) + eps c2) / lr_t
            np.divide(m, t, out=t)
            params[s:e] -= t


class AdamW(Adam):
    pass


OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {
    "sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW,
}


def make_optimizer(cfg: OptimizerConfig, n: int, dtype: np.dtype[Any], n_weights: int) -> Optimizer:
    return OPTIMIZER_CLASSES[cfg.name](cfg, n, dtype, n_weights)
