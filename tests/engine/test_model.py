"""Trained models: save/load round trips with input scaling and metadata, batched prediction, probabilities."""

import numpy as np
import pytest

from app.engine import CheckpointError, Model, NetworkSpec, TrainConfig, Trainer


def trained(spec, x, y, **config):
    trainer = Trainer(spec, TrainConfig.from_dict({"epochs": 5, "batch_size": 16, **config}), x, y)
    trainer.fit()
    return trainer


def test_round_trip_gives_identical_predictions_and_meta(classifier_spec, blobs):
    x, labels = blobs
    model = trained(classifier_spec, x, labels).model(meta={"labels": ["cat", "dog", "eel"]})
    loaded = Model.from_bytes(model.to_bytes())
    assert loaded.spec == model.spec
    assert loaded.dtype == model.dtype == "float32"
    assert np.array_equal(loaded.params, model.params)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.meta["labels"] == ["cat", "dog", "eel"]
    assert loaded.meta["epochs_run"] == 5
    assert set(loaded.meta["final"]) == {"loss", "val_loss", "accuracy"}
    assert loaded.meta == model.meta


def test_standardized_model_predicts_from_raw_inputs(classifier_spec, blobs):
    x, labels = blobs
    raw = x * [100.0, 0.01, 3.0, 1.0] + [1000.0, -5.0, 0.0, 7.0]
    trainer = trained(classifier_spec, raw, labels, standardize=True, epochs=20,
                      optimizer={"name": "adam", "learning_rate": 0.01})
    model = trainer.model()
    np.testing.assert_allclose(model.x_mean, raw.mean(axis=0))
    np.testing.assert_allclose(model.x_scale, raw.std(axis=0))
    proba = model.predict(raw)
    assert (proba.argmax(axis=1) == labels).mean() > 0.9
    scaled = ((raw - raw.mean(axis=0)) / raw.std(axis=0)).astype(np.float32)
    np.testing.assert_allclose(proba, trainer.net.forward(scaled), rtol=1e-6, atol=1e-7)
    loaded = Model.from_bytes(model.to_bytes())
    assert np.array_equal(loaded.x_mean, model.x_mean)
    assert np.array_equal(loaded.x_scale, model.x_scale)
    assert np.array_equal(loaded.predict(raw), proba)


def test_constant_feature_does_not_divide_by_zero(regressor_spec, regression):
    x, y = regression
    x = x.copy()
    x[:, 1] = 4.0
    model = trained(regressor_spec, x, y, standardize=True).model()
    assert model.x_scale[1] == 1.0
    assert np.isfinite(model.predict(x)).all()


def test_float64_model_on_request(regressor_spec, regression):
    x, y = regression
    model = trained(regressor_spec, x, y, dtype="float64").model()
    assert model.dtype == "float64"
    assert model.params.dtype == np.float64
    assert model.predict(x).dtype == np.float64
    loaded = Model.from_bytes(model.to_bytes())
    assert loaded.params.dtype == np.float64
    assert np.array_equal(loaded.predict(x), model.predict(x))


def test_default_model_is_float32(regressor_spec, regression):
    x, y = regression
    assert trained(regressor_spec, x, y).model().predict(x).dtype == np.float32


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"PK\x03\x04" + b"\x00" * 40])
def test_garbage_model_bytes_are_rejected(garbage):
    with pytest.raises(CheckpointError):
        Model.from_bytes(garbage)


def test_truncated_model_bytes_are_rejected(regressor_spec, regression):
    x, y = regression
    blob = trained(regressor_spec, x, y).model().to_bytes()
    with pytest.raises(CheckpointError):
        Model.from_bytes(blob[:-20])


def test_model_bytes_with_wrong_parameter_count_are_rejected(regressor_spec):
    other = NetworkSpec.from_dict({**regressor_spec.to_dict(), "input_dim": 5})
    blob = Model(other, np.zeros(other.n_params)).to_bytes()
    # Re-label the archive with a spec whose parameter count differs from the stored array.
    hacked = blob.replace(b'"input_dim":5', b'"input_dim":4')
    assert hacked != blob
    with pytest.raises(CheckpointError):
        Model.from_bytes(hacked)


def test_checkpoint_bytes_are_not_a_model(regressor_spec, regression):
    x, y = regression
    trainer = trained(regressor_spec, x, y)
    with pytest.raises(CheckpointError, match="model"):
        Model.from_bytes(trainer.checkpoint())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_prediction_equals_one_big_batch(classifier_spec, rng, dtype):
    model = Model(classifier_spec, rng.normal(size=classifier_spec.n_params), dtype=dtype)
    x = rng.normal(size=(103, 4))
    whole = model.predict(x, batch_size=1000)
    for batch_size in (1, 7, 50, 102):
        np.testing.assert_allclose(model.predict(x, batch_size=batch_size), whole, rtol=1e-6, atol=1e-7)


def test_softmax_outputs_are_probability_rows(classifier_spec, rng):
    model = Model(classifier_spec, 3 * rng.normal(size=classifier_spec.n_params))
    p = model.predict(10 * rng.normal(size=(50, 4)))
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_sigmoid_outputs_are_probabilities(rng):
    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 8}, {"units": 3, "activation": "sigmoid"}],
                                  "loss": "binary_cross_entropy"})
    p = Model(spec, 3 * rng.normal(size=spec.n_params)).predict(10 * rng.normal(size=(50, 4)))
    assert ((p >= 0) & (p <= 1)).all()
    assert p.min() < 0.05   # the whole range is reached, not a constant
    assert p.max() > 0.95


def test_prediction_with_the_wrong_number_of_features_is_rejected(classifier_spec, rng):
    model = Model(classifier_spec, rng.normal(size=classifier_spec.n_params))
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros((3, 5)))


def test_a_model_in_the_earlier_parameter_layout_loads_with_the_same_weights(classifier_spec, blobs):
    # backprop.model/1 archives kept every layer's weights first, then every bias.
    from app.engine.serialize import pack, unpack

    x, labels = blobs
    model = trained(classifier_spec, x, labels, standardize=True).model()
    meta, arrays = unpack(model.to_bytes(), expect_format="backprop.model/2")
    legacy = np.concatenate([*(w.reshape(-1) for w, _ in model.layer_weights()),
                             *(b for _, b in model.layer_weights())])
    arrays["params"] = legacy
    meta["format"] = "backprop.model/1"
    loaded = Model.from_bytes(pack(meta, arrays))
    for (w1, b1), (w2, b2) in zip(loaded.layer_weights(), model.layer_weights(), strict=True):
        assert np.array_equal(w1, w2)
        assert np.array_equal(b1, b2)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(CheckpointError, match=r"expected a backprop\.model/2 archive"):
        Model.from_bytes(pack({**meta, "format": "backprop.model/0"}, arrays))
