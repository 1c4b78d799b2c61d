"""Loss values and gradients worked out by hand, and the fused pairs' stability at huge logits."""

import math

import numpy as np
import pytest

from app.engine import MLP, NetworkSpec, TrainConfig, Trainer
from app.engine.losses import get_loss

PRED = np.array([[1.0, -1.0], [0.5, 3.0]])
TARGET = np.array([[0.0, 0.0], [0.5, 0.0]])   # residuals 1, -1, 0, 3


def value_and_grad(name, pred, y):
    grad = np.empty_like(pred)
    return get_loss(name).value_and_grad(pred.copy(), y, grad), grad


@pytest.mark.parametrize(("name", "expected_loss", "expected_grad"), [
    ("mse", (1 + 1 + 0 + 9) / 4, [[0.5, -0.5], [0.0, 1.5]]),
    ("mae", (1 + 1 + 0 + 3) / 4, [[0.25, -0.25], [0.0, 0.25]]),
    ("huber", (0.5 + 0.5 + 0 + 2.5) / 4, [[0.25, -0.25], [0.0, 0.25]]),
])
def test_regression_loss_by_hand(name, expected_loss, expected_grad):
    loss, grad = value_and_grad(name, PRED, TARGET)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12)


def test_binary_cross_entropy_on_logits_by_hand():
    z = np.array([[0.0, 2.0], [-1.0, 0.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    loss, grad = value_and_grad("binary_cross_entropy", z, y)
    expected = (math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.exp(-1)) + math.log(2)) / 4
    assert loss == pytest.approx(expected, rel=1e-12)
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(grad, (sig - y) / 4, rtol=1e-12)


def test_cross_entropy_on_logits_by_hand():
    z = np.array([[0.0, math.log(3.0)], [2.0, 2.0]])   # softmax rows [1/4, 3/4] and [1/2, 1/2]
    y = np.array([[0.0, 1.0], [1.0, 0.0]])
    loss, grad = value_and_grad("cross_entropy", z, y)
    assert loss == pytest.approx((-math.log(0.75) + math.log(2)) / 2, rel=1e-12)
    np.testing.assert_allclose(grad, [[0.125, -0.125], [-0.25, 0.25]], rtol=1e-12)


def test_value_does_not_modify_the_predictions():
    z = np.array([[3.0, 1.0, -2.0]])
    before = z.copy()
    get_loss("cross_entropy").value(z, np.array([[0.0, 1.0, 0.0]]))
    assert np.array_equal(z, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_binary_cross_entropy_is_finite_at_huge_logits(dtype):
    z = np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=dtype)
    y = np.array([[1.0, 1.0], [0.0, 0.0]], dtype=dtype)
    loss, grad = value_and_grad("binary_cross_entropy", z, y)
    # Right side: ~0 loss; wrong side by 1e4: loss 1e4. Gradient (sigmoid(z) - y) / 4.
    assert loss == pytest.approx(0.5e4, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.0, -0.25], [0.0, 0.25]], atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_is_finite_at_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype=dtype)
    y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    loss, grad = value_and_grad("cross_entropy", z, y)
    assert loss == pytest.approx(1e4, rel=1e-6)   # (0 + 2e4) / 2
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [-0.5, 0.5, 0.0]], atol=1e-7)


@pytest.mark.parametrize(("loss", "output"), [
    ("binary_cross_entropy", "sigmoid"), ("cross_entropy", "softmax"), ("mse", "softmax"),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_network_with_huge_logits_has_finite_loss_gradient_and_probabilities(rng, loss, output, dtype):
    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 8, "activation": "tanh"},
                                  {"units": 6, "activation": "tanh"}, {"units": 3, "activation": output}],
                                  "loss": loss})
    net = MLP(spec, dtype=dtype, rng=rng)
    net.l2 = 0.1
    net.weights[-1][...] *= 1e4
    x = rng.normal(size=(10, 4))
    y = np.eye(3)[rng.integers(0, 3, 10)]
    hidden = np.tanh(np.tanh(x @ net.weights[0] + net.biases[0]) @ net.weights[1] + net.biases[1])
    assert np.abs(hidden @ net.weights[2] + net.biases[2]).max() > 1e3   # the output layer's z
    assert math.isfinite(net.objective(x, y))
    assert np.isfinite(net.gradient(x, y)).all()
    p = net.forward(x)
    assert np.isfinite(p).all()
    assert ((p >= 0) & (p <= 1)).all()
    if output == "softmax":
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(("loss", "output"), [("binary_cross_entropy", "sigmoid"), ("cross_entropy", "softmax")])
def test_training_from_huge_logits_does_not_diverge(blobs, loss, output):
    x, labels = blobs
    y = labels if loss == "cross_entropy" else np.eye(3)[labels]
    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 8, "activation": "tanh"},
                                  {"units": 3, "activation": output}], "loss": loss})
    trainer = Trainer(spec, TrainConfig.from_dict({"epochs": 2, "batch_size": 30,
                                                   "optimizer": {"name": "sgd", "learning_rate": 1e-6}}), x, y)
    trainer.net.weights[-1][...] *= 1e4
    result = trainer.fit()
    assert result.stopped == "completed"
    assert all(math.isfinite(r["loss"]) and r["loss"] > 100 for r in result.history)
