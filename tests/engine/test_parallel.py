"""Data-parallel training (app/engine/parallel.py): a batch split across replicas, run in helper processes or in one.

The split's result depends on the number of replicas only: the same replicas give the same bits whether their
steps run in helper processes or one after the other in the trainer's process, and resuming is exact either way.
"""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from app.engine import CheckpointError, DivergenceError, NetworkSpec, SpecError, TrainConfig, Trainer
from app.engine.parallel import can_fork_replicas, cpus

ROOT = Path(__file__).resolve().parents[2]
needs_helpers = pytest.mark.skipif(not can_fork_replicas(), reason="helper processes need Linux on x86-64")

HIDDEN = [{"units": 24, "activation": "relu"}, {"units": 12, "activation": "tanh"}]
SPECS = {
    "softmax-ce": {"input_dim": 6, "layers": [*HIDDEN, {"units": 4, "activation": "softmax"}], "loss": "cross_entropy"},
    "sigmoid-bce": {"input_dim": 6, "layers": [*HIDDEN, {"units": 3, "activation": "sigmoid"}],
                    "loss": "binary_cross_entropy"},
    "mse": {"input_dim": 6, "layers": [*HIDDEN, {"units": 2, "activation": "linear"}], "loss": "mse"},
    "huber": {"input_dim": 6, "layers": [*HIDDEN, {"units": 2, "activation": "linear"}], "loss": "huber"},
}
# 203 rows in batches of 37: five full batches and a short one of 18; 186 rows leave a last batch of one row, which
# a 2-way split gives to one replica only.
CONFIGS = {
    "adam": {},
    "sgd": {"optimizer": {"name": "sgd", "learning_rate": 0.05}},
    "momentum nesterov, cosine warmup": {"optimizer": {"name": "momentum", "nesterov": True},
                                         "schedule": {"name": "cosine", "warmup_epochs": 1}},
    "rmsprop, clipping": {"optimizer": "rmsprop", "clip_norm": 0.05},
    "adam with L2": {"optimizer": {"name": "adam", "weight_decay": 0.01}},
    "adamw": {"optimizer": {"name": "adamw", "weight_decay": 0.1}},
    "validation split, early stopping": {"validation_split": 0.2,
                                         "early_stopping": {"patience": 2, "restore_best_weights": True}},
    "float64, no shuffle": {"dtype": "float64", "shuffle": False},
}


def data(kind, n=203, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    score = x @ rng.standard_normal((6, 4)) + 0.3 * rng.standard_normal((n, 4))
    if kind == "softmax-ce":
        return x, score.argmax(axis=1)
    if kind == "sigmoid-bce":
        return x, (score[:, :3] > 0).astype(float)
    return x, score[:, :2]


def make(kind="softmax-ce", n=203, replicas=None, processes=None, **config):
    x, y = data(kind, n)
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 37, "seed": 5, **config})
    return Trainer(NetworkSpec.from_dict(SPECS[kind]), cfg, x, y, replicas=replicas, processes=processes)


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def state(pid):
    """The process's state letter (R running, S sleeping, Z zombie, ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def alive(pid):
    return state(pid) not in (None, "Z")


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@needs_helpers
@pytest.mark.parametrize("kind", list(SPECS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_helpers_and_one_process_give_the_same_bits(kind, config):
    runs = []
    for processes in (1, 2):
        with make(kind, replicas=2, processes=processes, **CONFIGS[config]) as tr:
            result = tr.fit()
            assert tr._split is not None
            assert tr._split.parallel == (processes == 2)
            runs.append((tr.net.params.copy(), without_seconds(result.history), result.stopped))
    (p1, h1, s1), (p2, h2, s2) = runs
    assert np.array_equal(p1, p2)
    assert h1 == h2
    assert s1 == s2


@needs_helpers
def test_a_split_of_big_steps_gives_the_same_bits_in_one_process_and_two(two_blas_threads):
    # 100-512-256-10 at batch 256: a step big enough that one-way training would use two BLAS threads, whose
    # GEMMs OpenBLAS may round differently from one thread's; a split runs every replica on one thread.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 100))
    y = (x[:, :10] @ rng.standard_normal((10, 10))).argmax(axis=1)
    spec = NetworkSpec.from_dict({"input_dim": 100, "layers": [{"units": 512, "activation": "relu"},
                                                               {"units": 256, "activation": "relu"},
                                                               {"units": 10, "activation": "softmax"}],
                                  "loss": "cross_entropy"})
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 256, "seed": 0})
    runs = []
    for processes in (1, 2):
        with Trainer(spec, cfg, x, y, replicas=2, processes=processes) as tr:
            tr.fit()
            runs.append(tr.net.params.copy())
    assert np.array_equal(runs[0], runs[1])


@needs_helpers
def test_a_batch_smaller_than_the_replicas_leaves_one_idle():
    runs = []
    for processes in (1, 3):
        with make(n=186, replicas=3, processes=processes) as tr:   # last batch: 1 row over 3 replicas
            tr.fit()
            runs.append(tr.net.params.copy())
    assert np.array_equal(runs[0], runs[1])
    with make(n=186, replicas=1) as tr:
        tr.fit()
        np.testing.assert_allclose(runs[0], tr.net.params, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_split_step_equals_the_whole_batch_step_to_rounding(kind):
    whole, split = make(kind, replicas=1, epochs=1), make(kind, replicas=2, processes=1, epochs=1)
    with whole, split:
        rw, rs = whole.fit(), split.fit()
        np.testing.assert_allclose(split.net.params, whole.net.params, rtol=1e-4, atol=1e-6)
        a, b = rw.history[0], rs.history[0]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        for key, value in a["metrics"].items():
            assert b["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


@needs_helpers
@pytest.mark.parametrize("resume_processes", [1, 2])
def test_resume_from_a_split_checkpoint_is_bit_exact(resume_processes):
    x, y = data("softmax-ce")
    with make(replicas=2, processes=2) as whole:
        whole.fit()
        final = whole.net.params.copy()
        history = without_seconds(whole.history)
    saved = []
    with make(replicas=2, processes=2) as first:
        first.fit(callback=lambda r: r["epoch"] < 1,                  # stop after epoch 1 ...
                  batch_callback=lambda e, b: not (e == 2 and b == 3))  # ... and never mid-epoch in this fit
        saved.append(first.checkpoint())
        first.fit(batch_callback=lambda e, b: not (e == 2 and b == 3))  # then stop in epoch 2, after batch 3
        assert (first.epoch, first.batch) == (1, 3)
        saved.append(first.checkpoint())
    for data_bytes in saved:
        with Trainer.from_checkpoint(data_bytes, x, y, processes=resume_processes) as resumed:
            assert resumed.replicas == 2
            resumed.fit()
            assert np.array_equal(resumed.net.params, final)
            assert without_seconds(resumed.history) == history


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=needs_helpers)])
@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("n", [203, 186])
def test_the_training_accuracy_counts_every_row_once(processes, replicas, n):
    # A learning rate of 1e-30 leaves every prediction as it was, so each epoch's training accuracy must be the
    # initial network's accuracy on the training rows: every row counted once, whether the epoch ran through in one
    # fit, was stopped mid-epoch by a batch callback (the count must be complete in the checkpoint) and resumed,
    # or ends with a short batch (203 rows in batches of 37: a last batch of 18; 186 rows: of 1, which leaves
    # replicas without rows in the epoch's last step).
    x, y = data("softmax-ce", n)
    sgd = {"optimizer": {"name": "sgd", "learning_rate": 1e-30}, "epochs": 3}
    with make(n=n, replicas=replicas, processes=processes, **sgd) as tr:
        expected = float(np.mean(tr.net.forward(tr.x).argmax(axis=1) == tr.labels))
        assert 0.05 < expected < 0.95
        tr.fit(batch_callback=lambda e, b: not (e == 2 and b == 4))
        assert (tr.epoch, tr.batch) == (1, 4)
        data_bytes = tr.checkpoint()
    with Trainer.from_checkpoint(data_bytes, x, y, processes=processes) as resumed:
        resumed.fit()
        accuracies = [r["metrics"]["accuracy"] for r in resumed.history]
    assert accuracies == [expected] * 3


@pytest.mark.parametrize("replicas", [2, 3])
def test_partial_sums_that_overflow_together_are_divergence_not_a_crash(replicas):
    # Each replica's loss and squared gradient norm are finite, their sum is not: every process must take that as
    # divergence alike (math.fsum, used before, raised OverflowError there).
    with make(replicas=replicas, processes=1) as tr:
        split = tr._get_split()
        split.vals[replicas, 1] = np.nan               # the step's clip norm: none
        for j in range(replicas):
            split.vals[j] = 0.0
            split.vals[j, 0] = 1e308                    # loss sum
        assert split._decide()[0] == "the loss"
        for j in range(replicas):
            split.vals[j, 0], split.vals[j, 3] = 1.0, 1e308   # loss, squared gradient norm of the slice
        assert split._decide()[0] == "the gradient"
        split.vals[:, 3] = 1.0
        assert split._decide() == (None, float(replicas), 1.0)


@needs_helpers
def test_divergence_stops_with_the_batch_and_nothing_updated():
    x, y = data("mse")
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 37, "seed": 5,
                                 "optimizer": {"name": "sgd", "learning_rate": 100.0}})
    seen = []
    for processes in (1, 2):
        with Trainer(NetworkSpec.from_dict(SPECS["mse"]), cfg, x * 1e3, y * 1e3, replicas=2,
                     processes=processes) as tr:
            with pytest.raises(DivergenceError) as info:
                tr.fit()
            err = info.value
            assert f"epoch {err.epoch}, batch {err.batch}" in str(err)
            assert "smaller learning_rate" in str(err)
            assert np.isfinite(tr.net.params).all()          # the failing step applied nothing
            assert tr.step == (err.epoch - 1) * 6 + err.batch - 1
            seen.append((err.epoch, err.batch, err.what, tr.net.params.copy()))
            pids = list(tr._split.pids)
            assert len(pids) == processes - 1
            assert all(alive(pid) for pid in pids)
        assert wait_until(lambda pids=pids: not any(alive(pid) for pid in pids))
    assert seen[0][:3] == seen[1][:3]
    assert np.array_equal(seen[0][3], seen[1][3])


@needs_helpers
def test_helpers_sleep_between_fits_and_stop_on_close_and_collection():
    tr = make(replicas=3, processes=3, epochs=2)
    tr.fit(callback=lambda r: False)
    pids = list(tr._split.pids)
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids)
    # Parked between fits: blocked in a read, using no CPU.
    for pid in pids:
        assert wait_until(lambda pid=pid: state(pid) == "S")
    tr.close()
    assert not any(alive(pid) for pid in pids)
    tr.fit()                                          # usable after close: new helpers
    pids = list(tr._split.pids)
    assert pids
    assert all(alive(pid) for pid in pids)
    del tr
    gc.collect()
    assert wait_until(lambda: not any(alive(pid) for pid in pids))


@needs_helpers
def test_a_helper_that_dies_fails_training_with_a_clear_error():
    with make(replicas=2, processes=2, epochs=50) as tr:
        def kill(epoch, batch):
            if epoch == 2 and batch == 1:
                os.kill(tr._split.pids[0], signal.SIGKILL)

        with pytest.raises(RuntimeError, match="helper process"):
            tr.fit(batch_callback=kill)


@needs_helpers
def test_helpers_die_with_the_trainer_process(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_parallel import make
        tr = make(replicas=2, processes=2, epochs=1)
        tr.fit()
        print(tr._split.pids[0], flush=True)
        os._exit(0)                                # no finalizers: the kernel tells the helper
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    pid = int(out.stdout.split()[-1])
    assert wait_until(lambda: not alive(pid))


def test_replicas_default_and_validation():
    big = {"input_dim": 64, "layers": [{"units": 256, "activation": "relu"}, {"units": 10, "activation": "softmax"}],
           "loss": "cross_entropy"}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((256, 64)), rng.integers(0, 10, 256)
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 64})
    expected = 2 if can_fork_replicas() and cpus() >= 2 else 1
    assert Trainer(NetworkSpec.from_dict(big), cfg, x, y).replicas == expected
    assert Trainer(NetworkSpec.from_dict(big), cfg, x, y, processes=1).replicas == 1
    assert make().replicas == 1                       # a small network: its steps are shorter than the handshakes
    dropout = {**big, "layers": [{"units": 256, "activation": "relu", "dropout": 0.2}, big["layers"][1]]}
    assert Trainer(NetworkSpec.from_dict(dropout), cfg, x, y).replicas == 1
    with pytest.raises(SpecError, match="replicas"):
        Trainer(NetworkSpec.from_dict(dropout), cfg, x, y, replicas=2)
    with pytest.raises(SpecError, match="processes"):
        make(processes=0)


def test_checkpoints_record_the_split_and_older_ones_mean_none():
    from app.engine.serialize import pack, unpack
    from app.engine.training import CHECKPOINT_FORMAT

    x, y = data("softmax-ce")
    with make(replicas=2, processes=1, epochs=1) as tr:
        tr.fit()
        meta, arrays = unpack(tr.checkpoint(), expect_format=CHECKPOINT_FORMAT)
    assert meta["replicas"] == 2
    old = dict(meta)
    del old["replicas"]
    assert Trainer.from_checkpoint(pack(old, arrays), x, y).replicas == 1
    for bad in (0, "2", 10**6):
        with pytest.raises(CheckpointError, match="replicas"):
            Trainer.from_checkpoint(pack({**meta, "replicas": bad}, arrays), x, y)


@needs_helpers
def test_dropping_the_trainer_stops_its_helpers_at_once():
    tr = make(replicas=2, processes=2, epochs=1)
    tr.fit()
    pids = list(tr._split.pids)
    assert all(alive(pid) for pid in pids)
    gc.disable()                             # no reference cycle may keep them until a collection
    try:
        del tr
        assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5)
    finally:
        gc.enable()
