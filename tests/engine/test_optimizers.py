"""One or two optimizer steps on a 4-vector worked out by hand, and every optimizer lowering a real loss."""

import numpy as np
import pytest

from app.engine import NetworkSpec, OptimizerConfig, TrainConfig, Trainer
from app.engine.optimizers import make_optimizer

P0 = np.array([1.0, -2.0, 0.5, 3.0])
G1 = np.array([0.5, -1.0, 2.0, -0.25])
G2 = np.array([0.1, 0.2, -0.3, 0.4])
LR = 0.1
WEIGHT_RANGES = [(0, 1), (2, 4)]   # entry 1 plays a bias: never decayed
WEIGHTS = [0, 2, 3]


def run_steps(cfg, grads, lr=LR):
    opt = make_optimizer(cfg, P0.size, np.dtype(np.float64), WEIGHT_RANGES)
    p = P0.copy()
    out = []
    for g in grads:
        opt.step(p, g.copy(), lr)
        out.append(p.copy())
    return out


def test_sgd_step_by_hand():
    (p1,) = run_steps(OptimizerConfig(name="sgd"), [G1])
    np.testing.assert_allclose(p1, [0.95, -1.9, 0.3, 3.025], rtol=1e-15)


def test_sgd_ignores_weight_decay_because_it_lives_in_the_gradient():
    # Coupled L2 for sgd/momentum/rmsprop/adam is added by the network (MLP.add_l2_grad), not by the step.
    (p1,) = run_steps(OptimizerConfig(name="sgd", weight_decay=0.5), [G1])
    np.testing.assert_allclose(p1, [0.95, -1.9, 0.3, 3.025], rtol=1e-15)


def test_momentum_two_steps_by_hand():
    # v1 = g1 -> p1 = p0 - lr g1;  v2 = 0.9 v1 + g2 = [0.55, -0.7, 1.5, 0.175] -> p2 = p1 - lr v2
    p1, p2 = run_steps(OptimizerConfig(name="momentum", momentum=0.9), [G1, G2])
    np.testing.assert_allclose(p1, [0.95, -1.9, 0.3, 3.025], rtol=1e-14)
    np.testing.assert_allclose(p2, [0.895, -1.83, 0.15, 3.0075], rtol=1e-14)


def test_nesterov_momentum_two_steps_by_hand():
    # p1 = p0 - lr (g1 + 0.9 g1);  p2 = p1 - lr (g2 + 0.9 v2) with v2 = [0.55, -0.7, 1.5, 0.175]
    p1, p2 = run_steps(OptimizerConfig(name="momentum", momentum=0.9, nesterov=True), [G1, G2])
    np.testing.assert_allclose(p1, [0.905, -1.81, 0.12, 3.0475], rtol=1e-14)
    np.testing.assert_allclose(p2, [0.8455, -1.767, 0.015, 2.99175], rtol=1e-14)


def test_rmsprop_two_steps_by_hand():
    rho, eps = 0.9, 1e-8
    p1, p2 = run_steps(OptimizerConfig(name="rmsprop", rho=rho, eps=eps), [G1, G2])
    s1 = (1 - rho) * G1**2
    e1 = P0 - LR * G1 / (np.sqrt(s1) + eps)
    s2 = rho * s1 + (1 - rho) * G2**2
    e2 = e1 - LR * G2 / (np.sqrt(s2) + eps)
    np.testing.assert_allclose(p1, e1, rtol=1e-13)
    np.testing.assert_allclose(p2, e2, rtol=1e-13)
    # First step: |g| / sqrt(0.1 g^2) = sqrt(10), so every entry moves by lr sqrt(10) against its gradient's sign.
    np.testing.assert_allclose(P0 - p1, LR * np.sqrt(10) * np.sign(G1), rtol=1e-6)


def adam_by_hand(grads, *, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """The textbook (Kingma & Ba) form with bias-corrected moments, and AdamW's decoupled decay on the weights."""
    p, m, v, out = P0.copy(), np.zeros(4), np.zeros(4), []
    for t, g in enumerate(grads, start=1):
        p[WEIGHTS] *= 1 - LR * weight_decay
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - LR * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(p.copy())
    return out


def test_adam_two_steps_by_hand():
    p1, p2 = run_steps(OptimizerConfig(name="adam"), [G1, G2])
    e1, e2 = adam_by_hand([G1, G2])
    # Step one is lr * sign(g): m_hat = g and sqrt(v_hat) = |g|.
    np.testing.assert_allclose(p1, P0 - LR * np.sign(G1), rtol=1e-7)
    np.testing.assert_allclose(p1, e1, rtol=1e-13)
    np.testing.assert_allclose(p2, e2, rtol=1e-13)


def test_adamw_decays_weights_but_not_biases_by_hand():
    p1, p2 = run_steps(OptimizerConfig(name="adamw", weight_decay=0.5), [G1, G2])
    e1, e2 = adam_by_hand([G1, G2], weight_decay=0.5)
    np.testing.assert_allclose(p1, e1, rtol=1e-13)
    np.testing.assert_allclose(p2, e2, rtol=1e-13)
    # The "bias" entry moves exactly as under plain adam.
    assert p2[1] == pytest.approx(adam_by_hand([G1, G2])[1][1], rel=1e-13)
    assert p1[0] == pytest.approx(P0[0] * 0.95 - LR, rel=1e-7)


def test_adam_with_zero_gradient_leaves_params_unchanged():
    (p1,) = run_steps(OptimizerConfig(name="adam"), [np.zeros(4)])
    np.testing.assert_array_equal(p1, P0)


@pytest.mark.parametrize(("name", "l2"), [("sgd", 0.1), ("momentum", 0.1), ("rmsprop", 0.1), ("adam", 0.1),
                                          ("adamw", 0.0)])
def test_weight_decay_is_coupled_l2_except_for_adamw(regressor_spec, regression, name, l2):
    x, y = regression
    cfg = TrainConfig.from_dict({"optimizer": {"name": name, "weight_decay": 0.1}})
    assert Trainer(regressor_spec, cfg, x, y).net.l2 == l2


OPTIMIZERS = [
    {"name": "sgd", "learning_rate": 0.1},
    {"name": "momentum", "learning_rate": 0.02},
    {"name": "momentum", "learning_rate": 0.02, "nesterov": True},
    {"name": "rmsprop", "learning_rate": 0.003},
    {"name": "adam", "learning_rate": 0.01},
    {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.01},
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o["name"] + ("-nesterov" if "nesterov" in o else ""))
def test_each_optimizer_lowers_the_loss(rng, optimizer):
    x = rng.normal(size=(64, 4))
    y = np.tanh(x @ rng.normal(size=(4, 1)))
    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 16, "activation": "tanh"}, {"units": 1}],
                                  "loss": "mse"})
    cfg = TrainConfig.from_dict({"epochs": 20, "batch_size": 16, "optimizer": optimizer, "seed": 1})
    result = Trainer(spec, cfg, x, y).fit()
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.25 * losses[0]


def test_which_optimizers_may_use_the_gradient_as_scratch():
    # Momentum with Nesterov and RMSprop read the gradient again after writing their scratch.
    flags = {name: make_optimizer(OptimizerConfig(name=name), 4, np.dtype(np.float32), [(0, 4)]).grads_as_scratch
             for name in ("sgd", "adam", "adamw", "momentum", "rmsprop")}
    assert flags == {"sgd": True, "adam": True, "adamw": True, "momentum": False, "rmsprop": False}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_gradient_as_scratch_gives_the_same_step(name):
    # Data-parallel replicas let these optimizers use the summed gradient's own memory as the step's scratch; the
    # step must be the same bits as with a separate scratch, over a vector of several blocks and over sub-ranges.
    from app.engine.optimizers import _BLOCK

    n = 2 * _BLOCK + 123
    rng = np.random.default_rng(0)
    p0, grads = rng.standard_normal(n).astype(np.float32), rng.standard_normal((3, n)).astype(np.float32)
    cfg = OptimizerConfig(name=name, weight_decay=0.1)
    ranges = [(0, n // 2), (n // 2 + 7, n)]
    runs = []
    for scratch in (True, False):
        opt = make_optimizer(cfg, n, np.dtype(np.float32), ranges)
        p = p0.copy()
        for g in grads:
            opt.begin(0.01)
            for lo, hi in ((0, 1000), (1000, n)):     # two replicas' ranges
                tmp = np.empty(min(hi - lo, _BLOCK), np.float32) if scratch else None
                opt.update(p, g.copy(), lo, hi, tmp)
        runs.append(p)
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], p0)
