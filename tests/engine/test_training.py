"""The training loop: determinism, divergence, early stopping, callbacks, per-epoch metrics, dropout, input checks."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error, r2_score

from app.engine import MLP, DivergenceError, Model, NetworkSpec, SpecError, TrainConfig, Trainer, train


def fit(spec, x, y, **config):
    trainer = Trainer(spec, TrainConfig.from_dict(config), x, y)
    return trainer, trainer.fit()


# --- determinism --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_gives_bit_identical_weights(classifier_spec, blobs, dtype):
    x, labels = blobs
    config = {"epochs": 5, "batch_size": 16, "dtype": dtype, "seed": 7, "validation_split": 0.2}
    spec = NetworkSpec.from_dict({**classifier_spec.to_dict(), "layers": [
        {"units": 16, "activation": "relu", "dropout": 0.3}, {"units": 8, "activation": "tanh"},
        {"units": 3, "activation": "softmax"}]})   # dropout, the split and shuffling all draw from the seed
    a, result_a = fit(spec, x, labels, **config)
    b, result_b = fit(spec, x, labels, **config)
    assert a.net.params.dtype == np.dtype(dtype)
    assert np.array_equal(a.net.params, b.net.params)
    assert [r["loss"] for r in result_a.history] == [r["loss"] for r in result_b.history]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_different_seed_gives_different_weights(classifier_spec, blobs, dtype):
    x, labels = blobs
    a, _ = fit(classifier_spec, x, labels, epochs=2, dtype=dtype, seed=1)
    b, _ = fit(classifier_spec, x, labels, epochs=2, dtype=dtype, seed=2)
    assert not np.array_equal(a.net.params, b.net.params)


def test_float32_and_float64_networks_start_from_the_same_rounded_weights(classifier_spec):
    p32 = MLP(classifier_spec, dtype="float32", rng=np.random.default_rng(3)).params
    p64 = MLP(classifier_spec, dtype="float64", rng=np.random.default_rng(3)).params
    assert np.array_equal(p32, p64.astype(np.float32))


# --- divergence ---------------------------------------------------------------------------------------------------


def test_huge_learning_rate_on_unscaled_data_raises_divergence_error(rng):
    x = rng.normal(size=(64, 5)) * 1e3
    y = x @ rng.normal(size=(5, 1))
    spec = NetworkSpec.from_dict({"input_dim": 5, "layers": [{"units": 8, "activation": "relu"}, {"units": 1}],
                                  "loss": "mse"})
    trainer = Trainer(spec, TrainConfig.from_dict({"epochs": 5, "batch_size": 8, "shuffle": False,
                                                   "optimizer": {"name": "sgd", "learning_rate": 100.0}}), x, y)
    completed = []
    with pytest.raises(DivergenceError) as exc:
        trainer.fit(batch_callback=lambda epoch, batch: completed.append((epoch, batch)))
    err = exc.value
    # The failing batch is the one after the last batch that completed.
    assert (err.epoch, err.batch) == (1, completed[-1][1] + 1 if completed else 1)
    assert err.learning_rate == 100.0
    message = str(err)
    assert f"epoch {err.epoch}, batch {err.batch}" in message
    assert "smaller learning_rate" in message


# --- early stopping and callbacks ---------------------------------------------------------------------------------


def noise_regression(rng, n):
    return rng.normal(size=(n, 5)), rng.normal(size=(n, 1))


def test_early_stopping_stops_on_a_plateau_and_restores_the_best_weights(rng):
    x, y = noise_regression(rng, 60)
    x_val, y_val = noise_regression(rng, 40)   # nothing to learn: val_loss bottoms out, then overfitting raises it
    spec = NetworkSpec.from_dict({"input_dim": 5, "layers": [{"units": 64, "activation": "tanh"}, {"units": 1}],
                                  "loss": "mse"})
    cfg = TrainConfig.from_dict({"epochs": 300, "batch_size": 10, "optimizer": {"name": "adam", "learning_rate": 0.01},
                                 "early_stopping": {"patience": 5}})
    trainer = Trainer(spec, cfg, x, y, x_val=x_val, y_val=y_val)
    snapshots = []
    result = trainer.fit(callback=lambda record: snapshots.append(trainer.net.params.copy()))
    history = result.history
    assert result.stopped == "early_stopping"
    assert result.finished
    assert result.monitor == "val_loss"
    assert result.epochs_run == len(history) < 300
    val_losses = [r["val_loss"] for r in history]
    assert result.best_epoch == 1 + int(np.argmin(val_losses))
    assert result.best_value == min(val_losses)
    assert result.epochs_run == result.best_epoch + 5   # patience epochs without improvement
    # The restored weights are those of the best epoch, and reproduce its validation loss.
    assert np.array_equal(trainer.net.params, snapshots[result.best_epoch - 1])
    model = trainer.model()
    recomputed = mean_squared_error(y_val, model.predict(x_val))
    assert recomputed == pytest.approx(result.best_value, rel=1e-5)
    assert abs(val_losses[-1] - result.best_value) > 1e-3 * result.best_value   # so the check above discriminates
    assert model.meta["best_epoch"] == result.best_epoch
    # The model reports the metrics of the weights it holds: the best epoch's, not the last epoch's.
    assert model.meta["weights_epoch"] == result.best_epoch
    assert model.meta["final"]["val_loss"] == result.best_value
    assert model.meta["final"]["loss"] == history[result.best_epoch - 1]["loss"]
    assert trainer.weights_record() == history[result.best_epoch - 1]


def test_without_restoring_the_model_reports_its_last_epoch(rng):
    x, y = noise_regression(rng, 60)
    x_val, y_val = noise_regression(rng, 40)
    spec = NetworkSpec.from_dict({"input_dim": 5, "layers": [{"units": 64, "activation": "tanh"}, {"units": 1}],
                                  "loss": "mse"})
    cfg = TrainConfig.from_dict({"epochs": 300, "batch_size": 10, "optimizer": {"name": "adam", "learning_rate": 0.01},
                                 "early_stopping": {"patience": 5, "restore_best_weights": False}})
    trainer = Trainer(spec, cfg, x, y, x_val=x_val, y_val=y_val)
    result = trainer.fit()
    assert result.stopped == "early_stopping"
    model = trainer.model()
    assert model.meta["weights_epoch"] == result.epochs_run != result.best_epoch
    assert model.meta["final"]["val_loss"] == result.history[-1]["val_loss"]
    assert mean_squared_error(y_val, model.predict(x_val)) == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_early_stopping_on_training_loss_without_validation(rng):
    x, y = noise_regression(rng, 40)
    spec = NetworkSpec.from_dict({"input_dim": 5, "layers": [{"units": 4, "activation": "tanh"}, {"units": 1}],
                                  "loss": "mse"})
    # min_delta far larger than any epoch-to-epoch gain: a plateau from the start.
    _, result = fit(spec, x, y, epochs=50, early_stopping={"patience": 2, "min_delta": 10.0})
    assert result.stopped == "early_stopping"
    assert result.monitor == "loss"
    assert result.best_epoch == 1
    assert result.epochs_run == 3


def test_early_stopping_can_maximize_accuracy(classifier_spec, blobs):
    x, labels = blobs
    _, result = fit(classifier_spec, x, labels, epochs=200, validation_split=0.3,
                    optimizer={"name": "adam", "learning_rate": 0.05},
                    early_stopping={"monitor": "val_accuracy", "patience": 3})
    accs = [r["metrics"]["val_accuracy"] for r in result.history]
    assert result.stopped == "early_stopping"
    assert result.best_value == max(accs)
    assert result.best_epoch == 1 + accs.index(max(accs))


def test_callback_returning_false_stops_training(classifier_spec, blobs):
    x, labels = blobs
    trainer = Trainer(classifier_spec, TrainConfig.from_dict({"epochs": 20}), x, labels)
    result = trainer.fit(callback=lambda record: record["epoch"] < 3)
    assert result.stopped == "callback"
    assert not result.finished
    assert result.epochs_run == 3
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_callback_returning_none_does_not_stop(classifier_spec, blobs):
    x, labels = blobs
    trainer = Trainer(classifier_spec, TrainConfig.from_dict({"epochs": 3}), x, labels)
    result = trainer.fit(callback=lambda record: None)
    assert result.stopped == "completed"
    assert result.epochs_run == 3


def test_batch_callback_returning_false_stops_mid_epoch(classifier_spec, blobs):
    x, labels = blobs   # 90 rows, batch 16: 6 batches per epoch
    trainer = Trainer(classifier_spec, TrainConfig.from_dict({"epochs": 3, "batch_size": 16}), x, labels)
    result = trainer.fit(batch_callback=lambda epoch, batch: (epoch, batch) != (2, 4))
    assert result.stopped == "stopped"
    assert (trainer.epoch, trainer.batch, trainer.step) == (1, 4, 10)
    assert len(result.history) == 1


def test_validation_monitor_without_validation_data_is_rejected(regressor_spec, regression):
    x, y = regression
    with pytest.raises(SpecError) as exc:
        Trainer(regressor_spec, TrainConfig.from_dict({"early_stopping": {"monitor": "val_loss"}}), x, y)
    assert exc.value.field == "early_stopping.monitor"


def test_accuracy_monitor_on_a_regressor_is_rejected(regressor_spec, regression):
    x, y = regression
    with pytest.raises(SpecError) as exc:
        Trainer(regressor_spec, TrainConfig.from_dict({"early_stopping": {"monitor": "accuracy"}}), x, y)
    assert exc.value.field == "early_stopping.monitor"


# --- per-epoch metrics --------------------------------------------------------------------------------------------


def test_classifier_metrics_match_sklearn_on_the_validation_set(classifier_spec, blobs):
    x, labels = blobs
    trainer = Trainer(classifier_spec, TrainConfig.from_dict({"epochs": 3, "batch_size": 16}), x[:60], labels[:60],
                      x_val=x[60:], y_val=labels[60:])
    history = trainer.fit().history
    for record in history:
        assert set(record) >= {"epoch", "loss", "val_loss", "metrics", "lr", "seconds"}
        assert set(record["metrics"]) == {"accuracy", "val_accuracy"}
        assert 0 <= record["metrics"]["accuracy"] <= 1
    proba = trainer.model().predict(x[60:])
    last = history[-1]
    assert last["val_loss"] == pytest.approx(log_loss(labels[60:], proba, labels=[0, 1, 2]), rel=1e-5)
    assert last["metrics"]["val_accuracy"] == pytest.approx(accuracy_score(labels[60:], proba.argmax(axis=1)))


@pytest.mark.parametrize("batch_size", [16, 30, 90])   # a short last batch; whole batches only; one batch
def test_training_accuracy_counts_every_batch_once_across_callbacks_and_a_resume(classifier_spec, blobs,
                                                                                   batch_size):
    # The trainer counts correct predictions from an epoch-long logits buffer at boundaries (batch callbacks, stops,
    # the epoch's end). Reference: the same run, its predictions counted batch by batch as each step computes them.
    x, labels = blobs
    config = TrainConfig.from_dict({"epochs": 4, "batch_size": batch_size, "seed": 5})
    reference = Trainer(classifier_spec, config, x, labels)
    step, correct = reference.net._train_step, []

    def counting_step(xb, yb, rng, ws, zlast):
        loss = step(xb, yb, rng, ws, zlast)
        z = ws.z[-1] if zlast is None else zlast
        correct.append(int(np.count_nonzero(z.argmax(axis=1) == yb.argmax(axis=1))))
        return loss

    reference.net._train_step = counting_step
    reference.fit()
    per_epoch = len(correct) // 4
    expected = [sum(correct[e * per_epoch:(e + 1) * per_epoch]) / 90 for e in range(4)]

    trainer = Trainer(classifier_spec, config, x, labels)
    trainer.fit(batch_callback=lambda epoch, batch: (epoch, batch) != (3, 1), batch_callback_every=1)
    resumed = Trainer.from_checkpoint(trainer.checkpoint(), x, labels)
    history = resumed.fit(batch_callback=lambda epoch, batch: True, batch_callback_every=2).history
    assert [r["metrics"]["accuracy"] for r in history] == expected
    assert len({*expected}) > 1   # the accuracy moves: a check that could tell the epochs apart


def test_binary_classifier_accuracy_is_per_output(rng):
    x = rng.normal(size=(50, 3))
    y = (x[:, :2] > 0).astype(float)   # two independent labels
    spec = NetworkSpec.from_dict({"input_dim": 3, "layers": [{"units": 8, "activation": "tanh"},
                                  {"units": 2, "activation": "sigmoid"}], "loss": "binary_cross_entropy"})
    trainer = Trainer(spec, TrainConfig.from_dict({"epochs": 2}), x[:30], y[:30], x_val=x[30:], y_val=y[30:])
    last = trainer.fit().history[-1]
    proba = trainer.model().predict(x[30:])
    assert last["metrics"]["val_accuracy"] == pytest.approx(((proba > 0.5) == (y[30:] > 0.5)).mean())
    assert last["val_loss"] == pytest.approx(log_loss(y[30:].ravel(), proba.ravel()), rel=1e-5)


def test_regressor_metrics_match_sklearn_on_the_validation_set(regressor_spec, regression):
    x, y = regression
    trainer = Trainer(regressor_spec, TrainConfig.from_dict({"epochs": 3, "batch_size": 16}), x[:60], y[:60],
                      x_val=x[60:], y_val=y[60:])
    history = trainer.fit().history
    for record in history:
        assert set(record["metrics"]) == {"mae", "rmse", "r2", "val_mae", "val_rmse", "val_r2"}
    pred = trainer.model().predict(x[60:]).astype(np.float64)
    metrics = history[-1]["metrics"]
    assert history[-1]["val_loss"] == pytest.approx(mean_squared_error(y[60:], pred), rel=1e-5)
    assert metrics["val_mae"] == pytest.approx(mean_absolute_error(y[60:], pred), rel=1e-5)
    assert metrics["val_rmse"] == pytest.approx(math.sqrt(mean_squared_error(y[60:], pred)), rel=1e-5)
    assert metrics["val_r2"] == pytest.approx(r2_score(y[60:], pred), rel=1e-5)


def test_without_validation_data_val_loss_is_none(regressor_spec, regression):
    x, y = regression
    _, result = fit(regressor_spec, x, y, epochs=2)
    assert all(r["val_loss"] is None for r in result.history)
    assert all(set(r["metrics"]) == {"mae", "rmse", "r2"} for r in result.history)
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_training_metrics_of_a_full_batch_epoch_match_sklearn(regression):
    # With one full batch per epoch, an epoch's running metrics come from the forward pass before its only step,
    # i.e. from the weights at the end of the previous epoch.
    x, y = regression
    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 8, "activation": "tanh"}, {"units": 2}],
                                  "loss": "mse"})
    cfg = TrainConfig.from_dict({"epochs": 2, "batch_size": 80, "dtype": "float64",
                                 "optimizer": {"name": "sgd", "learning_rate": 0.1}})
    trainer = Trainer(spec, cfg, x, y)
    models = []
    history = trainer.fit(callback=lambda record: models.append(trainer.model())).history
    pred = models[0].predict(x)
    assert history[1]["loss"] == pytest.approx(mean_squared_error(y, pred), rel=1e-12)
    assert history[1]["metrics"]["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-12)
    assert history[1]["metrics"]["r2"] == pytest.approx(r2_score(y, pred), rel=1e-12)


# --- dropout ------------------------------------------------------------------------------------------------------


def dropout_spec(p):
    return NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 32, "activation": "relu", "dropout": p},
                                  {"units": 16, "activation": "relu", "dropout": p},
                                  {"units": 3, "activation": "softmax"}], "loss": "cross_entropy"})


def test_dropout_network_trains_and_predicts_deterministically(blobs):
    x, labels = blobs
    trainer, result = fit(dropout_spec(0.3), x, labels, epochs=30, batch_size=16,
                          optimizer={"name": "adam", "learning_rate": 0.01})
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    model = trainer.model()
    first = model.predict(x)
    assert np.array_equal(first, model.predict(x))
    assert (first.argmax(axis=1) == labels).mean() > 0.9
    # No dropout (and no rescaling) at inference: the same weights without dropout predict the same.
    assert np.array_equal(first, Model(dropout_spec(0.0), model.params.copy()).predict(x))


def test_dropout_is_applied_during_training(blobs):
    x, labels = blobs
    with_dropout, _ = fit(dropout_spec(0.3), x, labels, epochs=2, batch_size=16)
    without, _ = fit(dropout_spec(0.0), x, labels, epochs=2, batch_size=16)
    assert not np.array_equal(with_dropout.net.params, without.net.params)


# --- input validation ---------------------------------------------------------------------------------------------


def x_with_nan(x):
    x = x.copy()
    x[3, 1] = np.nan
    return x


@pytest.mark.parametrize(("case", "field"), [
    ("nan in x", "x"),
    ("inf in x", "x"),
    ("wrong feature count", "x"),
    ("3-d x", "x"),
    ("empty x", "x"),
    ("non-numeric x", "x"),
    ("y rows mismatch", "y"),
    ("label out of range", "y"),
    ("negative label", "y"),
    ("fractional label", "y"),
    ("one-hot rows not summing to 1", "y"),
    ("wrong target columns", "y"),
    ("nan in y", "y"),
    ("x_val without y_val", "x_val"),
    ("x_val wrong features", "x_val"),
    ("y_val rows mismatch", "y_val"),
    ("y_val label out of range", "y_val"),
])
def test_bad_training_data_is_rejected_naming_the_field(classifier_spec, blobs, case, field):
    x, labels = blobs
    kwargs = {}
    if case == "nan in x":
        x = x_with_nan(x)
    elif case == "inf in x":
        x = x.copy()
        x[0, 0] = np.inf
    elif case == "wrong feature count":
        x = x[:, :3]
    elif case == "3-d x":
        x = x.reshape(90, 2, 2)
    elif case == "empty x":
        x, labels = x[:0], labels[:0]
    elif case == "non-numeric x":
        x = np.full((90, 4), "a")
    elif case == "y rows mismatch":
        labels = labels[:-1]
    elif case == "label out of range":
        labels = labels.copy()
        labels[5] = 3
    elif case == "negative label":
        labels = labels.copy()
        labels[5] = -1
    elif case == "fractional label":
        labels = labels + 0.5
    elif case == "one-hot rows not summing to 1":
        labels = np.eye(3)[labels] * 2
    elif case == "wrong target columns":
        labels = np.eye(4)[labels]
    elif case == "nan in y":
        labels = np.eye(3)[labels]
        labels[0, 0] = np.nan
    elif case == "x_val without y_val":
        kwargs = {"x_val": x[:5]}
    elif case == "x_val wrong features":
        kwargs = {"x_val": x[:5, :3], "y_val": labels[:5]}
    elif case == "y_val rows mismatch":
        kwargs = {"x_val": x[:5], "y_val": labels[:4]}
    elif case == "y_val label out of range":
        kwargs = {"x_val": x[:5], "y_val": np.array([0, 1, 2, 3, 0])}
    with pytest.raises(SpecError) as exc:
        Trainer(classifier_spec, TrainConfig(), x, labels, **kwargs)
    assert exc.value.field == field


def test_binary_targets_outside_0_1_are_rejected(rng):
    spec = NetworkSpec.from_dict({"input_dim": 2, "layers": [{"units": 3}, {"units": 1, "activation": "sigmoid"}],
                                  "loss": "binary_cross_entropy"})
    with pytest.raises(SpecError) as exc:
        Trainer(spec, TrainConfig(), rng.normal(size=(4, 2)), np.array([0.0, 1.0, 2.0, 0.0]))
    assert exc.value.field == "y"


def test_validation_split_that_leaves_no_training_rows_is_rejected(regressor_spec):
    with pytest.raises(SpecError) as exc:
        Trainer(regressor_spec, TrainConfig.from_dict({"validation_split": 0.5}), np.zeros((1, 4)), np.zeros((1, 2)))
    assert exc.value.field == "validation_split"


def test_train_helper_accepts_plain_dicts(regression):
    x, y = regression
    model, result = train({"input_dim": 4, "layers": [{"units": 4}, {"units": 2}], "loss": "mse"}, x, y,
                          {"epochs": 2})
    assert result.stopped == "completed"
    assert model.predict(x).shape == (80, 2)


def test_standardizing_columns_of_huge_values_keeps_mean_and_scale_finite(rng):
    """A column whose squares overflow float64 (the audit's 1e308) used to get an infinite scale (null in the API, the
    column silently zeroed); it is standardized by its largest magnitude instead, and still informs the model."""
    n = 80
    signal = rng.choice([-1.0, 1.0], size=n)
    x = np.column_stack([signal * 1e308, rng.normal(size=n)])
    y = (signal > 0).astype(int)
    spec = NetworkSpec.from_dict({"input_dim": 2, "layers": [{"units": 8, "activation": "tanh"},
                                                             {"units": 2, "activation": "softmax"}],
                                  "loss": "cross_entropy"})
    cfg = TrainConfig.from_dict({"epochs": 30, "batch_size": 16, "dtype": "float64", "standardize": True,
                                 "optimizer": {"name": "adam", "learning_rate": 0.05}})
    with np.errstate(all="raise"):
        trainer = Trainer(spec, cfg, x, y)
    assert np.isfinite(trainer.x_mean).all()
    assert np.isfinite(trainer.x_scale).all()
    assert trainer.x_scale[0] > 1e307
    assert np.abs(trainer.x).max() < 10
    result = trainer.fit()
    assert result.history[-1]["metrics"]["accuracy"] == 1.0     # learned from the huge column alone
    model = trainer.model()
    assert np.array_equal(model.predict(x[:4]).argmax(axis=1), y[:4])


def test_ordinary_columns_standardize_as_before(rng):
    x = rng.normal(3.0, 2.0, size=(50, 3))
    spec = NetworkSpec.from_dict({"input_dim": 3, "layers": [{"units": 1}], "loss": "mse"})
    trainer = Trainer(spec, TrainConfig.from_dict({"standardize": True, "dtype": "float64"}), x, x[:, :1])
    assert np.array_equal(trainer.x_mean, x.mean(axis=0))
    assert np.array_equal(trainer.x_scale, x.std(axis=0))
    assert np.array_equal(trainer.x, (x - x.mean(axis=0)) / x.std(axis=0))


@pytest.mark.parametrize("standardize", [False, True])
def test_values_beyond_float32_are_refused_naming_the_fix(rng, standardize):
    x = rng.normal(size=(20, 2))
    x[3, 1] = 1e39
    y = rng.normal(size=(20, 1))
    spec = NetworkSpec.from_dict({"input_dim": 2, "layers": [{"units": 1}], "loss": "mse"})
    if standardize:     # standardized, the same column fits float32: no error
        Trainer(spec, TrainConfig.from_dict({"standardize": True}), x, y)
        return
    with pytest.raises(SpecError, match="float32") as err:
        Trainer(spec, TrainConfig.from_dict({}), x, y)
    assert err.value.field == "x"
    assert "float64" in str(err.value)
    assert "standardize" in str(err.value)
    y[0, 0] = -1e40
    with pytest.raises(SpecError, match="target values beyond float32") as err:
        Trainer(spec, TrainConfig.from_dict({"standardize": True}), x, y)
    assert err.value.field == "y"
    Trainer(spec, TrainConfig.from_dict({"dtype": "float64"}), x, y)      # float64 holds them
