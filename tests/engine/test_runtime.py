"""The training loop's runtime settings: subnormals flushed to zero (fpenv) and the BLAS thread limit (blas).

Both change per-thread or per-process state, so besides what they do, the tests check that they leave it as they
found it: after fit, inside callbacks, and with several users at once."""

import threading

import numpy as np
import pytest

from app.engine import NetworkSpec, TrainConfig, Trainer, blas, fpenv

SUBNORMAL = np.float32(1e-39)          # below float32's smallest normal, 1.18e-38
TINY = np.finfo(np.float32).tiny

needs_ftz = pytest.mark.skipif(not fpenv.supported(), reason="flush-to-zero is only set on x86-64 glibc")
needs_blas = pytest.mark.skipif(blas.get_threads() is None, reason="NumPy's BLAS is not OpenBLAS here")


def subnormal_product() -> np.float32:
    return np.multiply(np.array([SUBNORMAL]), np.float32(1.0))[0]


def count_subnormals(a: np.ndarray) -> int:
    return int(np.count_nonzero((a != 0) & (np.abs(a) < TINY)))


@needs_ftz
def test_flush_denormals_zeroes_subnormals_only_inside_and_restores():
    assert subnormal_product() == SUBNORMAL
    assert not fpenv.denormals_flushed()
    with fpenv.flush_denormals():
        assert fpenv.denormals_flushed()
        assert subnormal_product() == 0.0
        assert np.multiply(np.array([TINY]), np.float32(2.0))[0] == 2 * TINY     # normal values are untouched
        with fpenv.keep_denormals():
            assert not fpenv.denormals_flushed()
            assert subnormal_product() == SUBNORMAL
        assert fpenv.denormals_flushed()
    assert not fpenv.denormals_flushed()
    assert subnormal_product() == SUBNORMAL


@needs_ftz
def test_flush_denormals_is_per_thread():
    """A thread that was running before the block keeps IEEE subnormals while the block runs elsewhere (threads
    started inside the block inherit the setting, as on Linux every new thread inherits its creator's)."""
    seen = {}
    inside, looked = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait(timeout=10)
        seen["flushed"] = fpenv.denormals_flushed()
        seen["product"] = subnormal_product()
        looked.set()

    thread = threading.Thread(target=other)
    thread.start()
    with fpenv.flush_denormals():
        inside.set()
        assert looked.wait(timeout=10)
        assert fpenv.denormals_flushed()
    thread.join(timeout=10)
    assert seen == {"flushed": False, "product": SUBNORMAL}


def test_flush_denormals_restores_after_an_exception():
    before = fpenv.denormals_flushed()
    with pytest.raises(RuntimeError), fpenv.flush_denormals():
        raise RuntimeError("boom")
    assert fpenv.denormals_flushed() == before


def dead_unit_problem():
    """A ReLU network with many dead hidden units (a large negative bias): their weights get exactly zero gradients,
    so Adam's first moments decay geometrically towards the subnormal range."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8))
    labels = (x[:, 0] + x[:, 1] > 0).astype(int)
    spec = NetworkSpec.from_dict({"input_dim": 8, "layers": [
        {"units": 64, "activation": "relu"}, {"units": 2, "activation": "softmax"}], "loss": "cross_entropy"})
    return spec, x, labels


@needs_ftz
def test_fit_keeps_adam_moments_free_of_subnormals_and_callbacks_see_ieee_floats():
    spec, x, labels = dead_unit_problem()
    config = TrainConfig.from_dict({"epochs": 27, "batch_size": 16, "seed": 3,
                                    "optimizer": {"name": "adam", "learning_rate": 0.01}})
    trainer = Trainer(spec, config, x, labels)
    trainer.fit(callback=lambda record: False)
    trainer.fit(callback=lambda record: False)              # two epochs with every unit alive: moments of ~1e-3
    trainer.net.biases[0][:48] = -50.0                      # then 48 of the 64 hidden units never fire again
    flags = []

    def on_batch(epoch: int, batch: int) -> None:
        flags.append((fpenv.denormals_flushed(), subnormal_product() == SUBNORMAL))

    def on_epoch(record: dict) -> None:
        flags.append((fpenv.denormals_flushed(), None))

    trainer.fit(callback=on_epoch, batch_callback=on_batch, batch_callback_every=7)
    m = trainer.optimizer.state["m_sum"]
    dead = trainer.net.weight_grads[0][:, :48]
    assert np.all(dead == 0)
    # 25 epochs x 32 steps = 800 steps of m *= 0.9 with zero gradients since the units died: that takes a moment
    # of 1e-2 .. 1e-5 into the subnormal range (below 1.2e-38) without flushing; with it they are exactly zero.
    assert count_subnormals(m) == 0
    assert count_subnormals(trainer.net.params) == 0
    assert len(flags) == 25 + 25 * (32 // 7)
    assert all(f in ((False, True), (False, None)) for f in flags)
    assert not fpenv.denormals_flushed()


@needs_blas
def test_limit_threads_sets_and_restores(two_blas_threads):
    assert blas.get_threads() == 2
    with blas.limit_threads(1):
        assert blas.get_threads() == 1
    assert blas.get_threads() == 2
    with blas.limit_threads(None):
        assert blas.get_threads() == 2


@needs_blas
def test_limit_threads_restores_only_when_the_last_user_leaves(two_blas_threads):
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first() -> None:
        with blas.limit_threads(1):
            first_in.set()
            second_in.wait(timeout=10)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(timeout=10)
    with blas.limit_threads(1):
        second_in.set()
        assert first_out.wait(timeout=10)
        seen.append(blas.get_threads())          # the first user has left; the second still runs single-threaded
    thread.join(timeout=10)
    assert seen == [1]
    assert blas.get_threads() == 2


def test_step_threads_policy():
    assert blas.step_threads(64, 50_432) == 1            # 64-256-128-10 at batch 64
    assert blas.step_threads(256, 185_088) is None       # 100-512-256-10 at batch 256
    assert blas.step_threads(1, blas.SMALL_STEP) is None


@needs_blas
def test_fit_runs_small_steps_single_threaded_and_restores(two_blas_threads):
    spec, x, labels = dead_unit_problem()
    trainer = Trainer(spec, TrainConfig.from_dict({"epochs": 2, "batch_size": 16, "seed": 0}), x, labels)
    seen = []
    trainer.fit(batch_callback=lambda epoch, batch: seen.append(blas.get_threads()), batch_callback_every=5)
    assert len(seen) == 2 * (32 // 5)
    assert set(seen) == {1}
    assert blas.get_threads() == 2


@needs_blas
def test_fit_gives_the_same_weights_on_any_blas_thread_count(two_blas_threads):
    """The limit is a speed choice only: training results do not depend on the thread count around fit."""
    spec, x, labels = dead_unit_problem()
    config = TrainConfig.from_dict({"epochs": 3, "batch_size": 16, "seed": 5})
    a = Trainer(spec, config, x, labels)
    a.fit()
    with blas.limit_threads(1):
        b = Trainer(spec, config, x, labels)
        b.fit()
    assert np.array_equal(a.net.params, b.net.params)
