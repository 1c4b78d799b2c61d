"""Learning-rate schedules at a few steps against values computed by hand (base lr 0.1, 10 steps per epoch)."""

import math

import pytest

from app.engine import NetworkSpec, ScheduleConfig, TrainConfig, Trainer
from app.engine.schedules import learning_rate

BASE, STEPS_PER_EPOCH, EPOCHS = 0.1, 10, 10


def lr_at(step, **schedule):
    return learning_rate(ScheduleConfig(**schedule), BASE, step, STEPS_PER_EPOCH, EPOCHS)


@pytest.mark.parametrize("step", [0, 7, 55, 99])
def test_constant(step):
    assert lr_at(step, name="constant") == pytest.approx(0.1)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.1), (19, 0.1), (20, 0.05), (39, 0.05), (45, 0.025)])
def test_step_halves_every_two_epochs(step, expected):
    assert lr_at(step, name="step", step_size=2, gamma=0.5) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.1), (5, 0.1 * math.sqrt(0.5)), (10, 0.05), (30, 0.0125)])
def test_exponential_decays_per_fractional_epoch(step, expected):
    assert lr_at(step, name="exponential", gamma=0.5) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.1),
    (25, 0.01 + 0.09 * 0.5 * (1 + math.sqrt(0.5))),   # a quarter of the way: cos(pi/4)
    (50, 0.055),                                       # half way: the mean of lr and min_lr
    (100, 0.01),
    (150, 0.01),                                       # past the end: stays at the floor
])
def test_cosine_anneals_to_min_lr(step, expected):
    assert lr_at(step, name="cosine", min_lr=0.01) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.1 / 20), (9, 0.05), (19, 0.1), (30, 0.1)])
def test_linear_warmup_over_two_epochs(step, expected):
    assert lr_at(step, name="constant", warmup_epochs=2) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [
    (10, 0.1 * 11 / 20),   # still warming up; the cosine has not started
    (20, 0.1),
    (60, 0.055),           # half of the 8 post-warmup epochs
    (100, 0.01),
])
def test_cosine_after_warmup(step, expected):
    assert lr_at(step, name="cosine", min_lr=0.01, warmup_epochs=2) == pytest.approx(expected)


def test_trainer_records_the_scheduled_rate_per_epoch(regression):
    x, y = regression   # 80 rows, batch 20: 4 steps per epoch
    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 4, "activation": "tanh"}, {"units": 2}],
                                  "loss": "mse"})
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 20, "optimizer": {"name": "sgd", "learning_rate": 0.1},
                                 "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}})
    history = Trainer(spec, cfg, x, y).fit().history
    # Each record carries the rate its epoch's last step used: 0.1 * 0.5^(epoch - 1).
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
