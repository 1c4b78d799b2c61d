"""Finite-difference gradient checks: central differences (f(p + eps) - f(p - eps)) / 2 eps, in float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .network import MLP

Array = NDArray[np.floating[Any]]


def numerical_grad(f: Callable[[], float], p: Array, eps: float = 1e-6) -> NDArray[np.float64]:
    """d f / d p by central differences, perturbing `p` in place (and restoring it)."""
    grad = np.zeros(p.shape)
    flat = p.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def relative_error(analytic: Array, numeric: Array) -> float:
    """||a - n|| / (||a|| + ||n||): the gradient-check measure that is not thrown by entries that are ~0 in both."""
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    denom = max(float(np.linalg.norm(a) + np.linalg.norm(n)), 1e-300)
    return float(np.linalg.norm(a - n)) / denom


def check_gradients(net: MLP, x: Array, y: Array, eps: float = 1e-6) -> float:
    """The largest relative error between backprop's gradient and central differences over every parameter."""
    if net.dtype != np.float64:
        raise ValueError("gradient checks need a float64 network")
    analytic = net.gradient(x, y)
    numeric = numerical_grad(lambda: net.objective(x, y), net.params, eps)
    return relative_error(analytic, numeric)
