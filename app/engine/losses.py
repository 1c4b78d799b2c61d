"""Losses. Each computes the mean loss over a batch and writes dL/d(pred) into `grad` in one pass.

Fused pairs take the output layer's logits instead of its activations: `SoftmaxCrossEntropy` computes
log-softmax stably from z and its gradient is (softmax(z) - y) / n; `SigmoidBinaryCrossEntropy` uses
max(z, 0) - z y + log(1 + exp(-|z|)) and its gradient is (sigmoid(z) - y) / (n k). Neither overflows or takes log(0).
Regression losses average over every element (n samples x k outputs), as Keras and PyTorch do.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .activations import sigmoid

Array = NDArray[np.floating[Any]]


class Loss:
    name: ClassVar[str] = ""
    fused: ClassVar[bool] = False   # True: takes logits; the output activation is folded in

    def value_and_grad(self, pred: Array, y: Array, grad: Array, scale: float = 1.0) -> float:
        """Mean loss; `scale` x dL/dpred into `grad` (a data-parallel replica's share of the batch, folded into the
        pass that divides by the batch size). May overwrite `pred` (fused losses shift the logits)."""
        raise NotImplementedError

    def value(self, pred: Array, y: Array) -> float:
        return self.value_and_grad(pred.copy(), y, np.empty_like(pred))


class MeanSquaredError(Loss):
    """L = mean((pred - y)^2);  dL/dpred = 2 (pred - y) / (n k)."""

    name = "mse"

    def value_and_grad(self, pred: Array, y: Array, grad: Array, scale: float = 1.0) -> float:
        np.subtract(pred, y, out=grad)
        flat = grad.reshape(-1)
        loss = float(np.dot(flat, flat)) / grad.size
        grad *= 2.0 * scale / grad.size
        return loss


class MeanAbsoluteError(Loss):
    """L = mean(|pred - y|);  dL/dpred = sign(pred - y) / (n k)."""

    name = "mae"

    def value_and_grad(self, pred: Array, y: Array, grad: Array, scale: float = 1.0) -> float:
        np.subtract(pred, y, out=grad)
        loss = float(np.abs(grad).sum()) / grad.size
        np.sign(grad, out=grad)
        grad *= scale / grad.size
        return loss


class Huber(Loss):
    """L = mean(d^2/2 if |d| <= delta else delta (|d| - delta/2)), d = pred - y, delta = 1.

    dL/dpred = clip(d, -delta, delta) / (n k)."""

    name = "huber"
    delta: ClassVar[float] = 1.0

    def value_and_grad(self, pred: Array, y: Array, grad: Array, scale: float = 1.0) -> float:
        np.subtract(pred, y, out=grad)
        a = np.abs(grad)
        quad = np.minimum(a, self.delta)
        loss = float((0.5 * quad * quad + self.delta * (a - quad)).sum()) / grad.size
        np.clip(grad, -self.delta, self.delta, out=grad)
        grad *= scale / grad.size
        return loss


class SigmoidBinaryCrossEntropy(Loss):
    """Fused sigmoid + binary cross-entropy on logits z, averaged over n samples x k outputs."""

    name = "binary_cross_entropy"
    fused = True

    def value_and_grad(self, pred: Array, y: Array, grad: Array, scale: float = 1.0) -> float:
        z = pred
        np.abs(z, out=grad)
        abs_sum = float(grad.sum())
        np.negative(grad, out=grad)
        np.exp(grad, out=grad)
        np.log1p(grad, out=grad)
        # sum max(z, 0) = (sum z + sum |z|) / 2
        total = float(grad.sum()) + 0.5 * (float(z.sum()) + abs_sum) - float(np.vdot(z, y))
        sigmoid(z, grad)
        grad -= y
        grad *= scale / grad.size
        return total / grad.size


class SoftmaxCrossEntropy(Loss):
    """Fused softmax + cross-entropy on logits z: L = mean_i(logsumexp(z_i) - y_i . z_i) for rows y_i summing to 1."""

    name = "cross_entropy"
    fused = True

    def value_and_grad(self, pred: Array, y: Array, grad: Array, scale: float = 1.0) -> float:
        n = pred.shape[0]
        # The training output layer is column-major: work on the transposed views, which are C-contiguous (k, n),
        # so every operation and reduction walks memory in order and vdot needs no flattening copy.
        if pred.flags.f_contiguous and not pred.flags.c_contiguous:
            z, y, grad, axis = pred.T, y.T, grad.T, 0
        else:
            z, axis = pred, 1
        # Ufunc reduce methods directly: the same reductions as z.max / .sum without their Python wrappers; outs
        # passed positionally (no keyword parsing: this runs once per batch on a few hundred numbers).
        sub = np.subtract
        sub(z, np.maximum.reduce(z, axis, None, None, True), z)
        np.exp(z, grad)
        s = np.add.reduce(grad, axis, None, None, True)
        np.divide(grad, s, grad)
        total = float(np.add.reduce(np.log(s), None)) - float(np.vdot(y, z))
        sub(grad, y, grad)
        np.multiply(grad, scale / n, grad)
        return total / n


LOSS_CLASSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (MeanSquaredError, MeanAbsoluteError, Huber, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy)
}


def get_loss(name: str) -> Loss:
    try:
        return LOSS_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_CLASSES)}") from None
