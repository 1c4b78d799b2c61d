import numpy as np
import pytest

pytest_plugins = ["tests.support.server"]


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded Generator per test, so every test's random data is reproducible on its own."""
    return np.random.default_rng(20240601)
