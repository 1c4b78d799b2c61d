"""Weight initializers. Weights are drawn in float64 from the given Generator and then cast, so float32 and float64
networks built from one seed start from the same values (rounded); biases start at zero.

he_*: variance 2 / fan_in (for the ReLU family).  glorot_*: variance 2 / (fan_in + fan_out).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray


def initialize(name: str, fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    if name.startswith("he_"):
        var = 2.0 / fan_in
    elif name.startswith("glorot_"):
        var = 2.0 / (fan_in + fan_out)
    else:
        raise ValueError(f"unknown initializer {name!r}")
    shape = (fan_in, fan_out)
    if name.endswith("_normal"):
        return rng.normal(0.0, math.sqrt(var), size=shape)
    if name.endswith("_uniform"):
        limit = math.sqrt(3.0 * var)
        return rng.uniform(-limit, limit, size=shape)
    raise ValueError(f"unknown initializer {name!r}")
