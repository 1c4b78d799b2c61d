"""Small seeded data sets shared by the engine tests: each builds in microseconds and trains in milliseconds."""

import numpy as np
import pytest

from app.engine import NetworkSpec, blas


@pytest.fixture
def blobs(rng):
    """Three well-separated Gaussian classes in 4 features: (x (90, 4), integer labels (90,))."""
    centers = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    labels = np.repeat(np.arange(3), 30)
    x = centers[labels] + rng.normal(scale=0.6, size=(90, 4))
    perm = rng.permutation(90)
    return x[perm], labels[perm]


@pytest.fixture
def regression(rng):
    """A smooth two-output regression in 4 features: (x (80, 4), y (80, 2))."""
    x = rng.normal(size=(80, 4))
    y = np.tanh(x @ rng.normal(size=(4, 2))) + 0.05 * rng.normal(size=(80, 2))
    return x, y


@pytest.fixture
def classifier_spec():
    return NetworkSpec.from_dict({
        "input_dim": 4,
        "layers": [{"units": 16, "activation": "relu"}, {"units": 8, "activation": "tanh"},
                   {"units": 3, "activation": "softmax"}],
        "loss": "cross_entropy",
    })


@pytest.fixture
def regressor_spec():
    return NetworkSpec.from_dict({
        "input_dim": 4,
        "layers": [{"units": 16, "activation": "relu"}, {"units": 8, "activation": "tanh"}, {"units": 2}],
        "loss": "mse",
    })


@pytest.fixture
def two_blas_threads():
    """NumPy's BLAS on 2 threads for the test (CI may pin it to 1), restored after."""
    before = blas.get_threads()
    if before is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    blas._get().set_fn(2)
    yield
    blas._get().set_fn(before)
