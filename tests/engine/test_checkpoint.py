"""Stopping, checkpointing and resuming lands on the same weights, bit for bit, as one uninterrupted run."""

import struct

import numpy as np
import pytest

from app.engine import CheckpointError, NetworkSpec, TrainConfig, Trainer
from app.engine.serialize import pack, unpack
from app.engine.training import CHECKPOINT_FORMAT

CLASSIFIER = {"input_dim": 4, "layers": [{"units": 16, "activation": "relu"}, {"units": 8, "activation": "tanh"},
                                         {"units": 3, "activation": "softmax"}], "loss": "cross_entropy"}
DROPOUT_CLASSIFIER = {**CLASSIFIER, "layers": [{"units": 16, "activation": "relu", "dropout": 0.4},
                                               {"units": 8, "activation": "tanh", "dropout": 0.2},
                                               {"units": 3, "activation": "softmax"}]}
BASE = {"epochs": 6, "batch_size": 16, "seed": 3}   # 90 rows: 6 batches per epoch

CASES = {
    "adam": (CLASSIFIER, {}),
    "momentum nesterov with cosine warmup": (CLASSIFIER, {"optimizer": {"name": "momentum", "nesterov": True},
                                                          "schedule": {"name": "cosine", "warmup_epochs": 1}}),
    "rmsprop with clipping": (CLASSIFIER, {"optimizer": "rmsprop", "clip_norm": 0.5}),
    "adamw with weight decay": (CLASSIFIER, {"optimizer": {"name": "adamw", "weight_decay": 0.1}}),
    "dropout": (DROPOUT_CLASSIFIER, {}),
    "validation_split": (DROPOUT_CLASSIFIER, {"validation_split": 0.2}),
    "standardize": (CLASSIFIER, {"standardize": True}),
    "float64": (CLASSIFIER, {"dtype": "float64"}),
    "no shuffle": (CLASSIFIER, {"shuffle": False}),
}


def make(spec, config, x, y):
    return Trainer(NetworkSpec.from_dict(spec), TrainConfig.from_dict({**BASE, **config}), x, y)


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_run(resumed, resumed_result, full, full_result):
    assert np.array_equal(resumed.net.params, full.net.params)
    assert resumed_result.stopped == full_result.stopped
    assert [r["epoch"] for r in resumed_result.history] == list(range(1, full_result.epochs_run + 1))
    assert without_seconds(resumed_result.history) == without_seconds(full_result.history)
    assert (resumed_result.best_epoch, resumed_result.best_value) == (full_result.best_epoch, full_result.best_value)


@pytest.fixture
def data(blobs):
    x, labels = blobs
    return x * 5 + 3, labels   # off-centre, so standardize has something to do


@pytest.mark.parametrize(("spec", "config"), CASES.values(), ids=CASES.keys())
def test_resume_after_an_epoch_is_bit_exact(data, spec, config):
    x, y = data
    full = make(spec, config, x, y)
    full_result = full.fit()
    first = make(spec, config, x, y)
    assert first.fit(callback=lambda record: record["epoch"] < 2).stopped == "callback"
    resumed = Trainer.from_checkpoint(first.checkpoint(), x, y)
    assert resumed.epoch == 2
    assert_same_run(resumed, resumed.fit(), full, full_result)


@pytest.mark.parametrize(("spec", "config"), CASES.values(), ids=CASES.keys())
def test_resume_mid_epoch_is_bit_exact(data, spec, config):
    x, y = data
    full = make(spec, config, x, y)
    full_result = full.fit()
    first = make(spec, config, x, y)
    assert first.fit(batch_callback=lambda epoch, batch: (epoch, batch) != (3, 2)).stopped == "stopped"
    resumed = Trainer.from_checkpoint(first.checkpoint(), x, y)
    assert (resumed.epoch, resumed.batch) == (2, 2)
    assert_same_run(resumed, resumed.fit(), full, full_result)


def test_resume_mid_epoch_is_bit_exact_with_row_major_batches(rng):
    # Batches of more than 128 rows keep the hidden layers row-major (small ones column-major, see network.py):
    # 300 rows in batches of 140 are two row-major batches and a column-major one of 20.
    x, y = rng.normal(size=(300, 4)), rng.integers(0, 3, 300)
    config = {"batch_size": 140, "epochs": 4}
    full = make(CLASSIFIER, config, x, y)
    full_result = full.fit()
    first = make(CLASSIFIER, config, x, y)
    assert first.fit(batch_callback=lambda epoch, batch: (epoch, batch) != (2, 1)).stopped == "stopped"
    resumed = Trainer.from_checkpoint(first.checkpoint(), x, y)
    assert (resumed.epoch, resumed.batch) == (1, 1)
    assert_same_run(resumed, resumed.fit(), full, full_result)


def test_resume_twice_through_a_chain_of_checkpoints(data):
    x, y = data
    spec, config = DROPOUT_CLASSIFIER, {"validation_split": 0.2, "standardize": True}
    full = make(spec, config, x, y)
    full_result = full.fit()
    first = make(spec, config, x, y)
    first.fit(batch_callback=lambda epoch, batch: (epoch, batch) != (1, 3))
    second = Trainer.from_checkpoint(first.checkpoint(), x, y)
    second.fit(callback=lambda record: record["epoch"] < 4)
    third = Trainer.from_checkpoint(second.checkpoint(), x, y)
    assert_same_run(third, third.fit(), full, full_result)


def test_resume_with_early_stopping_restores_the_same_best_weights(rng):
    x, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 1))   # pure noise: val_loss soon stops improving
    spec = {"input_dim": 5, "layers": [{"units": 32, "activation": "tanh", "dropout": 0.1}, {"units": 1}],
            "loss": "mse"}
    config = {"epochs": 300, "validation_split": 0.3, "optimizer": {"name": "adam", "learning_rate": 0.01},
              "early_stopping": {"patience": 4, "restore_best_weights": True}}
    full = make(spec, config, x, y)
    full_result = full.fit()
    assert full_result.stopped == "early_stopping"
    # Stop inside the patience window: best weights, best value and the wait count all have to survive.
    stop_at = full_result.best_epoch + 2
    assert stop_at < full_result.epochs_run
    first = make(spec, config, x, y)
    first.fit(callback=lambda record: record["epoch"] < stop_at)
    resumed = Trainer.from_checkpoint(first.checkpoint(), x, y)
    assert_same_run(resumed, resumed.fit(), full, full_result)
    # Mid-epoch too.
    first = make(spec, config, x, y)
    first.fit(batch_callback=lambda epoch, batch: (epoch, batch) != (stop_at, 1))
    resumed = Trainer.from_checkpoint(first.checkpoint(), x, y)
    assert_same_run(resumed, resumed.fit(), full, full_result)


def test_resume_with_explicit_validation_data(data):
    x, y = data
    full = Trainer(NetworkSpec.from_dict(CLASSIFIER), TrainConfig.from_dict(BASE), x[:60], y[:60],
                   x_val=x[60:], y_val=y[60:])
    full_result = full.fit()
    first = Trainer(NetworkSpec.from_dict(CLASSIFIER), TrainConfig.from_dict(BASE), x[:60], y[:60],
                    x_val=x[60:], y_val=y[60:])
    first.fit(callback=lambda record: record["epoch"] < 3)
    blob = first.checkpoint()
    with pytest.raises(CheckpointError):   # the validation set is part of the data the checkpoint belongs to
        Trainer.from_checkpoint(blob, x[:60], y[:60])
    resumed = Trainer.from_checkpoint(blob, x[:60], y[:60], x_val=x[60:], y_val=y[60:])
    assert_same_run(resumed, resumed.fit(), full, full_result)


def test_checkpoint_of_a_finished_run_resumes_as_finished(data):
    x, y = data
    trainer = make(CLASSIFIER, {}, x, y)
    result = trainer.fit()
    resumed = Trainer.from_checkpoint(trainer.checkpoint(), x, y)
    again = resumed.fit()
    assert again.stopped == "completed"
    assert again.epochs_run == result.epochs_run
    assert np.array_equal(resumed.net.params, trainer.net.params)


@pytest.fixture
def checkpoint(data):
    x, y = data
    trainer = make(CLASSIFIER, {}, x, y)
    trainer.fit(callback=lambda record: False)
    return trainer.checkpoint()


@pytest.mark.parametrize("change", ["one value", "one label", "fewer rows", "row order"])
def test_checkpoint_with_different_data_is_rejected(data, checkpoint, change):
    x, y = data[0].copy(), data[1].copy()
    if change == "one value":
        x[10, 2] += 1e-3
    elif change == "one label":
        y[10] = (y[10] + 1) % 3
    elif change == "fewer rows":
        x, y = x[:-1], y[:-1]
    elif change == "row order":
        x, y = x[::-1], y[::-1]
    with pytest.raises(CheckpointError, match="different training data"):
        Trainer.from_checkpoint(checkpoint, x, y)


def flip_byte(blob, at):
    b = bytearray(blob)
    b[at] ^= 0xFF
    return bytes(b)


def unsupported_compression(blob):
    """The zip central directory claims a compression method no reader has (a plausible bit-rot)."""
    b = bytearray(blob)
    at = b.find(b"PK\x01\x02")
    b[at + 10:at + 12] = struct.pack("<H", 99)
    return bytes(b)


CORRUPTIONS = {
    "empty": lambda blob: b"",
    "garbage": lambda blob: b"definitely not a checkpoint" * 10,
    "truncated": lambda blob: blob[: len(blob) // 2],
    "last byte missing": lambda blob: blob[:-1],
    "flipped byte in the arrays": lambda blob: flip_byte(blob, len(blob) // 3),
    "unsupported compression method": unsupported_compression,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_checkpoint_is_rejected(data, checkpoint, corrupt):
    with pytest.raises(CheckpointError):
        Trainer.from_checkpoint(corrupt(checkpoint), *data)


def rewrite(blob, edit):
    meta, arrays = unpack(blob, expect_format=CHECKPOINT_FORMAT)
    edit(meta, arrays)
    return pack(meta, arrays)


@pytest.mark.parametrize("perm", ["repeated row", "out of range", "too short", "floats"])
def test_checkpoint_whose_row_order_is_no_permutation_is_rejected(data, perm):
    x, y = data
    trainer = make(CLASSIFIER, {}, x, y)
    trainer.fit(batch_callback=lambda epoch, batch: batch < 2)     # mid-epoch: the epoch's permutation is saved

    def edit(meta, arrays):
        p = arrays["perm"].copy()
        if perm == "repeated row":
            p[1] = p[0]
        elif perm == "out of range":
            p[0] = len(p)
        elif perm == "too short":
            p = p[:-1]
        else:
            p = p.astype(float)
        arrays["perm"] = p

    with pytest.raises(CheckpointError, match="perm"):
        Trainer.from_checkpoint(rewrite(trainer.checkpoint(), edit), x, y)


@pytest.mark.parametrize("old", ["m", "m and v"])
def test_adam_checkpoint_with_the_moments_themselves_still_resumes(data, old):
    # Checkpoints written before Adam kept m / (1 - beta1) ("m_sum") hold m as "opt.m"; those from before it kept
    # v / (1 - beta2) ("v_sum") hold v as "opt.v".
    x, y = data
    trainer = make(CLASSIFIER, {}, x, y)
    trainer.fit(callback=lambda record: False)
    m_sum = trainer.optimizer.state["m_sum"].copy()
    v_sum = trainer.optimizer.state["v_sum"].copy()
    assert np.abs(v_sum).max() > 0

    def edit(meta, arrays):
        arrays["opt.m"] = arrays.pop("opt.m_sum") * (1 - 0.9)
        if old == "m and v":
            arrays["opt.v"] = arrays.pop("opt.v_sum") * (1 - 0.999)

    resumed = Trainer.from_checkpoint(rewrite(trainer.checkpoint(), edit), x, y)
    assert set(resumed.optimizer.state) == {"m_sum", "v_sum"}
    np.testing.assert_allclose(resumed.optimizer.state["m_sum"], m_sum, rtol=1e-6)   # float32 round trip
    if old == "m":
        np.testing.assert_array_equal(resumed.optimizer.state["v_sum"], v_sum)
    else:
        np.testing.assert_allclose(resumed.optimizer.state["v_sum"], v_sum, rtol=1e-6)
    assert resumed.fit().stopped == "completed"


def test_model_bytes_are_not_a_checkpoint(data):
    trainer = make(CLASSIFIER, {"epochs": 1}, *data)
    trainer.fit()
    with pytest.raises(CheckpointError, match="checkpoint"):
        Trainer.from_checkpoint(trainer.model().to_bytes(), *data)


@pytest.mark.parametrize("where", ["epoch end", "mid-epoch"])
def test_checkpoint_in_the_earlier_parameter_layout_still_resumes_bit_exact(data, where):
    # backprop.checkpoint/1 kept every layer's weights first, then every bias, for the parameters, the best
    # weights and the optimizer's moments alike; today's layout is per layer (network.py).
    from app.engine.network import legacy_index

    x, y = data
    config = {"early_stopping": {"patience": 50, "restore_best_weights": True}}
    full = make(CLASSIFIER, config, x, y)
    full_result = full.fit()
    first = make(CLASSIFIER, config, x, y)
    if where == "epoch end":
        first.fit(callback=lambda record: record["epoch"] < 2)
    else:
        first.fit(batch_callback=lambda epoch, batch: not (epoch == 3 and batch == 2))
    index = legacy_index(first.net.sizes)

    def to_legacy(arr):
        old = np.empty_like(arr)
        old[index] = arr
        return old

    def edit(meta, arrays):
        meta["format"] = "backprop.checkpoint/1"
        for key in list(arrays):
            if key in ("params", "best_params") or key.startswith("opt."):
                assert arrays[key].shape == (first.net.n_params,)
                arrays[key] = to_legacy(arrays[key])

    old = rewrite(first.checkpoint(), edit)
    assert not np.array_equal(unpack(old, expect_format="backprop.checkpoint/1")[1]["params"], first.net.params)
    resumed = Trainer.from_checkpoint(old, x, y)
    assert_same_run(resumed, resumed.fit(), full, full_result)
