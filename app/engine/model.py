"""A trained model: the network spec, its parameters, the input scaling it was trained with, and free metadata
(class labels, metrics) — saved to and loaded from one self-describing npz blob."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import CheckpointError, SpecError
from .network import MLP, legacy_index
from .serialize import pack, unpack
from .spec import NetworkSpec

Array = NDArray[np.floating[Any]]
# /2: parameters in the per-layer layout (network.py); /1, still read: every layer's weights, then every bias.
FORMAT = "backprop.model/2"
OLDER_FORMATS = ("backprop.model/1",)


class Model:
    def __init__(self, spec: NetworkSpec, params: Array, *, dtype: str = "float32", x_mean: Array | None = None,
                 x_scale: Array | None = None, meta: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.dtype = str(np.dtype(dtype))
        self.net = MLP(spec, dtype=dtype, params=params)
        self.x_mean = None if x_mean is None else np.asarray(x_mean, dtype=np.float64)
        self.x_scale = None if x_scale is None else np.asarray(x_scale, dtype=np.float64)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def params(self) -> Array:
        return self.net.params

    def layer_weights(self) -> list[tuple[Array, Array]]:
        return list(zip(self.net.weights, self.net.biases, strict=True))

    def transform(self, x: Any) -> Array:
        """Raw inputs -> what the network sees: (x - mean) / scale when the model was trained standardized."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.spec.input_dim:
            raise ValueError(f"inputs must have shape (n, {self.spec.input_dim}), got {x.shape}")
        if self.x_mean is not None and self.x_scale is not None:
            x = (x - self.x_mean) / self.x_scale
        return x.astype(self.net.dtype, copy=False)

    def predict(self, x: Any, *, batch_size: int = 8192) -> Array:
        """Outputs for raw inputs: class probabilities for classifiers, values for regressors."""
        return self.net.predict(self.transform(x), batch_size=batch_size)

    def to_bytes(self) -> bytes:
        arrays: dict[str, NDArray[Any]] = {"params": self.net.params}
        if self.x_mean is not None and self.x_scale is not None:
            arrays["x_mean"], arrays["x_scale"] = self.x_mean, self.x_scale
        meta = {"format": FORMAT, "spec": self.spec.to_dict(), "dtype": self.dtype, "meta": self.meta}
        return pack(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> Model:
        meta, arrays = unpack(data, expect_format=FORMAT, older=OLDER_FORMATS)
        try:
            spec = NetworkSpec.from_dict(meta["spec"])
            params = arrays["params"]
            if meta["format"] != FORMAT:
                params = from_legacy(spec, params)
            return cls(spec, params, dtype=meta["dtype"], x_mean=arrays.get("x_mean"),
                       x_scale=arrays.get("x_scale"), meta=meta.get("meta") or {})
        except (KeyError, SpecError, ValueError, TypeError) as exc:
            raise CheckpointError(f"invalid model archive: {exc}") from exc


def from_legacy(spec: NetworkSpec, params: NDArray[Any]) -> NDArray[Any]:
    """A flat parameter (or optimizer moment) vector of the earlier layout in today's (see network.py)."""
    params = np.asarray(params)
    index = legacy_index(spec.layer_sizes())
    if params.shape != index.shape:
        raise ValueError(f"expected {index.size} parameters, got shape {params.shape}")
    return params[index]
