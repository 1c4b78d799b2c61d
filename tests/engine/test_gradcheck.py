"""Backprop against central finite differences, in float64, through two hidden layers with L2 weight decay on."""

import numpy as np
import pytest

from app.engine import ACTIVATIONS, LOSSES, MLP, NetworkSpec
from app.engine.gradcheck import check_gradients, numerical_grad, relative_error

TOLERANCE = 1e-6
KINKED = ("relu", "leaky_relu", "elu")   # elu is C1 but its second derivative jumps at 0
SMOOTH_OUTPUT_ACTIVATIONS = [a for a in ACTIVATIONS if a != "softmax"]


def make_net(rng, layers, loss, input_dim=4):
    """A float64 MLP with L2 on and random biases (zero biases would put dead ReLU rows exactly on the kink)."""
    spec = NetworkSpec.from_dict({"input_dim": input_dim, "layers": layers, "loss": loss})
    net = MLP(spec, dtype="float64", rng=rng)
    net.l2 = 0.1
    values = iter(rng.normal(0.0, 0.5, size=net.n_params - net.n_weights))
    for b in net.biases:
        b[...] = [next(values) for _ in range(b.size)]
    return net


def weight_mask(net):
    """True where the flat parameter vector holds a weight (not a bias)."""
    mask = np.zeros(net.n_params, dtype=bool)
    for lo, hi in net.weight_ranges:
        mask[lo:hi] = True
    assert mask.sum() == net.n_weights
    return mask


def pre_activations(net, x):
    zs, a = [], x
    for w, b, act in zip(net.weights, net.biases, net.activations, strict=True):
        z = a @ w + b
        zs.append(z)
        a = act(z)
    return zs


def assert_away_from_kinks(net, x):
    for i, (z, layer) in enumerate(zip(pre_activations(net, x), net.spec.layers, strict=True)):
        if layer.activation in KINKED:
            assert np.abs(z).min() > 1e-4, f"layer {i} has a pre-activation within 1e-4 of the kink; reseed"
            assert 0 < (z > 0).mean() < 1, f"layer {i} is all on one side of the kink; the check would be weak"


def test_finite_differences_recover_a_known_gradient(rng):
    p = rng.normal(size=(3, 2))
    num = numerical_grad(lambda: float(np.sum(p**3)), p)
    assert relative_error(3 * p**2, num) < 1e-9
    assert np.array_equal(p, p.copy())   # perturbed in place and restored


def test_relative_error_is_scale_free_and_zero_for_equal_arrays():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, 2 * a) == pytest.approx(1 / 3)
    assert relative_error(1e-9 * a, 2e-9 * a) == pytest.approx(1 / 3)


def test_gradient_check_needs_float64(rng):
    spec = NetworkSpec.from_dict({"input_dim": 2, "layers": [{"units": 3}, {"units": 1}], "loss": "mse"})
    net = MLP(spec, dtype="float32", rng=rng)
    with pytest.raises(ValueError, match="float64"):
        check_gradients(net, np.zeros((2, 2)), np.zeros((2, 1)))


def test_weight_decay_is_in_the_objective_and_gradient_for_weights_only(rng):
    net = make_net(rng, [{"units": 5, "activation": "tanh"}, {"units": 4, "activation": "tanh"}, {"units": 3}], "mse")
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    with_l2_obj, with_l2_grad = net.objective(x, y), net.gradient(x, y)
    net.l2 = 0.0
    is_weight = weight_mask(net)
    w = net.params[is_weight]
    assert with_l2_obj - net.objective(x, y) == pytest.approx(0.05 * float(w @ w), rel=1e-12)
    diff = with_l2_grad - net.gradient(x, y)
    np.testing.assert_allclose(diff[is_weight], 0.1 * w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(diff[~is_weight], 0.0, atol=1e-12)


def test_every_activation_and_loss_is_covered_below():
    assert {*SMOOTH_OUTPUT_ACTIVATIONS, "softmax"} == set(ACTIVATIONS)
    assert set(LOSS_CASES) == set(LOSSES)


@pytest.mark.parametrize("activation", SMOOTH_OUTPUT_ACTIVATIONS)
def test_activation_gradients_match_finite_differences(rng, activation):
    # The activation on both hidden layers and on the output (non-fused output path), trained on mse.
    net = make_net(rng, [{"units": 5, "activation": activation}, {"units": 4, "activation": activation},
                         {"units": 3, "activation": activation}], "mse")
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    assert_away_from_kinks(net, x)
    assert check_gradients(net, x, y) < TOLERANCE


def test_softmax_output_with_mse_gradients_match_finite_differences(rng):
    net = make_net(rng, [{"units": 5, "activation": "tanh"}, {"units": 4, "activation": "relu"},
                         {"units": 3, "activation": "softmax"}], "mse")
    x = rng.normal(size=(6, 4))
    y = np.eye(3)[rng.integers(0, 3, 6)]
    assert_away_from_kinks(net, x)
    assert check_gradients(net, x, y) < TOLERANCE


def _regression_targets(net, x, rng):
    """Targets at |pred - y| in [0.4, 0.6] or [1.9, 2.1]: away from mae's kink at 0 and huber's switch at 1."""
    pred = net.forward(x)
    offsets = rng.choice([-2.0, -0.5, 0.5, 2.0], size=pred.shape) + rng.uniform(-0.1, 0.1, size=pred.shape)
    return pred + offsets


LOSS_CASES = {
    "mse": ("linear", 3),
    "mae": ("linear", 3),
    "huber": ("linear", 3),
    "binary_cross_entropy": ("sigmoid", 3),
    "cross_entropy": ("softmax", 3),
}


@pytest.mark.parametrize("loss", list(LOSS_CASES))
def test_loss_gradients_match_finite_differences(rng, loss):
    output, k = LOSS_CASES[loss]
    net = make_net(rng, [{"units": 5, "activation": "relu"}, {"units": 4, "activation": "tanh"},
                         {"units": k, "activation": output}], loss)
    x = rng.normal(size=(6, 4))
    if loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(6, k)).astype(float)
    elif loss == "cross_entropy":
        y = np.eye(k)[rng.integers(0, k, 6)]
    else:
        y = _regression_targets(net, x, rng)
        if loss == "huber":   # both branches of huber are exercised
            d = np.abs(net.forward(x) - y)
            assert (d < 1).any()
            assert (d > 1).any()
    assert_away_from_kinks(net, x)
    assert check_gradients(net, x, y) < TOLERANCE


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "cross_entropy"])
def test_soft_targets_gradients_match_finite_differences(rng, loss):
    # Probability targets, not just 0/1: the fused gradient (p - y)/n must hold for any y in the simplex / [0, 1].
    output = "sigmoid" if loss == "binary_cross_entropy" else "softmax"
    net = make_net(rng, [{"units": 5, "activation": "gelu"}, {"units": 4, "activation": "elu"},
                         {"units": 3, "activation": output}], loss)
    x = rng.normal(size=(6, 4))
    y = rng.uniform(size=(6, 3))
    if loss == "cross_entropy":
        y /= y.sum(axis=1, keepdims=True)
    assert_away_from_kinks(net, x)
    assert check_gradients(net, x, y) < TOLERANCE


def test_gradients_with_dropout_layers_match_finite_differences(rng):
    # Dropout is off for gradient checks (inference-mode objective); the dropout-configured graph must still agree.
    net = make_net(rng, [{"units": 5, "activation": "relu", "dropout": 0.5},
                         {"units": 4, "activation": "tanh", "dropout": 0.3}, {"units": 2}], "mse")
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    assert_away_from_kinks(net, x)
    assert check_gradients(net, x, y) < TOLERANCE


BIG = 150


@pytest.mark.parametrize("n", [6, BIG])
def test_gradients_match_finite_differences_for_small_and_large_batches(rng, n):
    net = make_net(rng, [{"units": 5, "activation": "relu"}, {"units": 4, "activation": "sigmoid"},
                         {"units": 3, "activation": "softmax"}], "cross_entropy")
    x = rng.normal(size=(n, 4))
    y = np.eye(3)[rng.integers(0, 3, n)]
    assert_away_from_kinks(net, x)
    assert check_gradients(net, x, y) < TOLERANCE


def test_a_batch_gives_the_mean_gradient_of_its_parts(rng):
    net = make_net(rng, [{"units": 6, "activation": "relu"}, {"units": 5, "activation": "tanh"},
                         {"units": 3, "activation": "softmax"}], "cross_entropy")
    x = rng.normal(size=(2 * BIG, 4))
    y = np.eye(3)[rng.integers(0, 3, 2 * BIG)]
    whole = net.gradient(x, y)
    halves = [net.gradient(x[s:s + BIG // 2], y[s:s + BIG // 2]) for s in range(0, 2 * BIG, BIG // 2)]
    np.testing.assert_allclose(whole, np.mean(halves, axis=0), rtol=1e-10, atol=1e-13)   # mean loss: equal parts


def test_the_flat_layout_is_per_layer_weights_then_bias(rng):
    net = make_net(rng, [{"units": 5, "activation": "relu"}, {"units": 3}], "mse")
    expected = np.concatenate([np.concatenate([w.reshape(-1), b])
                               for w, b in zip(net.weights, net.biases, strict=True)])
    assert np.array_equal(net.params, expected)
    assert net.weight_ranges == [(0, 20), (25, 40)]
