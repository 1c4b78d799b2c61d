"""Activations, each a forward and an in-place backward that work on preallocated buffers.

`forward(z, out)` writes f(z) into `out`; `out` may be `z` itself when `inplace` is true, because then the derivative
can be recovered from the output alone (ReLU: a > 0 iff z > 0; tanh: 1 - a^2; ...). `backward(grad, z, a, scratch,
mask)` turns dL/da into dL/dz in place in `grad`; `scratch` (float) and `mask` (bool) are buffers of grad's shape.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.floating[Any]]
Mask = NDArray[np.bool_]


class Activation:
    name: ClassVar[str] = ""
    inplace: ClassVar[bool] = True

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        raise NotImplementedError

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        raise NotImplementedError

    def __call__(self, z: Array) -> Array:
        """f(z) into a new array (prediction, tests)."""
        out = np.empty_like(z)
        self.forward(z, out, np.empty_like(z), np.empty(z.shape, dtype=bool))
        return out


class Linear(Activation):
    """f(z) = z."""

    name = "linear"

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        if out is not z:
            np.copyto(out, z)

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        return None


class ReLU(Activation):
    """f(z) = max(z, 0);  f'(z) = [z > 0] = [a > 0].

    np.maximum against a zeros array runs ~3x faster than against the scalar 0 (NumPy 2 has no SIMD loop for a
    scalar operand of maximum), so forward reads a shared read-only zeros buffer of z's size.
    """

    name = "relu"

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        np.maximum(z, zeros_like(z), out=out)

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        np.greater(a, 0, out=mask)
        np.multiply(grad, mask, out=grad)


class LeakyReLU(Activation):
    """f(z) = z if z > 0 else alpha z (alpha = 0.01);  a has z's sign, so f' comes from a."""

    name = "leaky_relu"
    alpha: ClassVar[float] = 0.01

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        np.less(z, 0, out=mask)
        if out is not z:
            np.copyto(out, z)
        np.multiply(out, self.alpha, out=out, where=mask)

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        np.less(a, 0, out=mask)
        np.multiply(grad, self.alpha, out=grad, where=mask)


class ELU(Activation):
    """f(z) = z if z > 0 else exp(z) - 1;  f'(z) = min(a + 1, 1)."""

    name = "elu"

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        np.minimum(z, 0, out=scratch)
        np.expm1(scratch, out=scratch)
        np.maximum(z, 0, out=out)
        out += scratch

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        np.add(a, 1, out=scratch)
        np.minimum(scratch, 1, out=scratch)
        grad *= scratch


class GELU(Activation):
    """The tanh approximation: f(z) = z/2 (1 + tanh(u)), u = c (z + 0.044715 z^3), c = sqrt(2/pi).

    f'(z) = (1 + t)/2 + z/2 (1 - t^2) c (1 + 3 * 0.044715 z^2), t = tanh(u). Needs z, so it never runs in place.
    """

    name = "gelu"
    inplace = False
    c: ClassVar[float] = math.sqrt(2.0 / math.pi)
    k: ClassVar[float] = 0.044715

    def _tanh_u(self, z: Array, out: Array) -> None:
        np.multiply(z, z, out=out)
        out *= self.k
        out += 1
        out *= z
        out *= self.c
        np.tanh(out, out=out)

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        self._tanh_u(z, scratch)
        scratch += 1
        np.multiply(z, scratch, out=out)
        out *= 0.5

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        # f'(z) = (1 + t)/2 + z/2 (1 - t^2) c (1 + 3k z^2) = a/z + ..., computed without dividing by z.
        t = scratch
        self._tanh_u(z, t)
        tmp = np.multiply(t, t)           # gelu is off the hot path for the fast activations; a small temp is fine
        np.subtract(1, tmp, out=tmp)
        tmp *= z
        tmp *= 0.5 * self.c
        zz = np.multiply(z, z)
        zz *= 3 * self.k
        zz += 1
        tmp *= zz
        t += 1
        t *= 0.5
        t += tmp
        grad *= t


class Sigmoid(Activation):
    """f(z) = 1 / (1 + exp(-z)) = (1 + tanh(z/2)) / 2, which never overflows;  f'(z) = a (1 - a)."""

    name = "sigmoid"

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        sigmoid(z, out)

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        np.subtract(1, a, out=scratch)
        scratch *= a
        grad *= scratch


class Tanh(Activation):
    """f(z) = tanh(z);  f'(z) = 1 - a^2."""

    name = "tanh"

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        np.tanh(z, out=out)

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        np.multiply(a, a, out=scratch)
        np.subtract(1, scratch, out=scratch)
        grad *= scratch


class Softmax(Activation):
    """a_i = exp(z_i - max z) / sum_j exp(z_j - max z), row-wise;  dL/dz = a * (g - sum(g * a, row)).

    With cross_entropy the pair is fused in the loss instead (see losses.SoftmaxCrossEntropy).
    """

    name = "softmax"

    def forward(self, z: Array, out: Array, scratch: Array, mask: Mask) -> None:
        softmax(z, out)

    def backward(self, grad: Array, z: Array, a: Array, scratch: Array, mask: Mask) -> None:
        np.multiply(grad, a, out=scratch)
        row = scratch.sum(axis=1, keepdims=True)
        grad -= row
        grad *= a


_ZEROS: dict[np.dtype[Any], Array] = {}


def zeros_like(a: Array) -> Array:
    """A read-only array of zeros with a's shape and dtype: a view of one shared flat buffer per dtype, which grows
    as needed (np.zeros maps large buffers lazily to the zero page, so reading it costs no memory traffic)."""
    buf = _ZEROS.get(a.dtype)
    if buf is None or buf.size < a.size:
        buf = np.zeros(max(a.size, 1 << 16), dtype=a.dtype)
        buf.flags.writeable = False
        _ZEROS[a.dtype] = buf
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"   # match a's layout: mixed is slow
    return buf[: a.size].reshape(a.shape, order=order)


def sigmoid(z: Array, out: Array) -> Array:
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1
    out *= 0.5
    return out


def softmax(z: Array, out: Array) -> Array:
    np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


ACTIVATION_CLASSES: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Linear, ReLU, LeakyReLU, ELU, GELU, Sigmoid, Tanh, Softmax)
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATION_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATION_CLASSES)}") from None
