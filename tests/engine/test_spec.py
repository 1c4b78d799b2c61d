"""Network specs and training configs: invalid ones are rejected with a SpecError naming the offending field."""

import math

import pytest

from app.engine import (
    EarlyStoppingConfig,
    NetworkSpec,
    OptimizerConfig,
    ScheduleConfig,
    SpecError,
    TrainConfig,
    param_count,
)


def spec_dict(**overrides):
    d = {"input_dim": 4, "layers": [{"units": 8, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
         "loss": "cross_entropy"}
    d.update(overrides)
    return d


def layers(*specs):
    return [dict(s) for s in specs]


HIDDEN = {"units": 8, "activation": "relu"}

INVALID_SPECS = {
    "softmax hidden layer": (spec_dict(layers=layers({"units": 8, "activation": "softmax"},
                                                     {"units": 3, "activation": "softmax"})), "layers[0].activation"),
    "cross_entropy without softmax": (spec_dict(layers=layers(HIDDEN, {"units": 3, "activation": "sigmoid"})),
                                      "layers[1].activation"),
    "cross_entropy with one class": (spec_dict(layers=layers(HIDDEN, {"units": 1, "activation": "softmax"})),
                                     "layers[1].units"),
    "softmax output of one unit": (spec_dict(loss="mse", layers=layers(HIDDEN, {"units": 1, "activation": "softmax"})),
                                   "layers[1].units"),
    "binary_cross_entropy without sigmoid": (spec_dict(loss="binary_cross_entropy",
                                                       layers=layers(HIDDEN, {"units": 1, "activation": "linear"})),
                                             "layers[1].activation"),
    "binary_cross_entropy with softmax": (spec_dict(loss="binary_cross_entropy"), "layers[1].activation"),
    "zero units": (spec_dict(layers=layers({"units": 0}, {"units": 3, "activation": "softmax"})), "layers[0].units"),
    "fractional units": (spec_dict(layers=layers({"units": 2.5}, {"units": 3, "activation": "softmax"})),
                         "layers[0].units"),
    "string units": (spec_dict(layers=layers({"units": "8"}, {"units": 3, "activation": "softmax"})),
                     "layers[0].units"),
    "boolean units": (spec_dict(layers=layers({"units": True}, {"units": 3, "activation": "softmax"})),
                      "layers[0].units"),
    "missing units": (spec_dict(layers=layers({"activation": "relu"}, {"units": 3, "activation": "softmax"})),
                      "layers[0].units"),
    "unknown activation": (spec_dict(layers=layers({"units": 8, "activation": "swish"},
                                                   {"units": 3, "activation": "softmax"})), "layers[0].activation"),
    "unknown initializer": (spec_dict(layers=layers({"units": 8, "init": "zeros"},
                                                    {"units": 3, "activation": "softmax"})), "layers[0].init"),
    "unknown loss": (spec_dict(loss="hinge"), "loss"),
    "missing loss": ({"input_dim": 4, "layers": layers(HIDDEN, {"units": 3})}, "loss"),
    "unknown top-level field": (spec_dict(optimizer="adam"), "optimizer"),
    "unknown layer field": (spec_dict(layers=layers({"units": 8, "size": 8}, {"units": 3, "activation": "softmax"})),
                            "layers[0].size"),
    "dropout on output layer": (spec_dict(layers=layers(HIDDEN, {"units": 3, "activation": "softmax",
                                                                 "dropout": 0.5})), "layers[1].dropout"),
    "dropout of 1": (spec_dict(layers=layers({"units": 8, "dropout": 1.0}, {"units": 3, "activation": "softmax"})),
                     "layers[0].dropout"),
    "negative dropout": (spec_dict(layers=layers({"units": 8, "dropout": -0.1},
                                                 {"units": 3, "activation": "softmax"})), "layers[0].dropout"),
    "zero input_dim": (spec_dict(input_dim=0), "input_dim"),
    "missing input_dim": ({"layers": layers(HIDDEN, {"units": 3, "activation": "softmax"}), "loss": "cross_entropy"},
                          "input_dim"),
    "no layers": (spec_dict(layers=[]), "layers"),
    "layers not a list": (spec_dict(layers={"units": 3}), "layers"),
    "layer not an object": (spec_dict(layers=[8, {"units": 3, "activation": "softmax"}]), "layers[0]"),
}


@pytest.mark.parametrize(("raw", "field"), INVALID_SPECS.values(), ids=INVALID_SPECS.keys())
def test_invalid_network_spec_names_the_field(raw, field):
    with pytest.raises(SpecError) as exc:
        NetworkSpec.from_dict(raw)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")


def test_spec_must_be_an_object():
    with pytest.raises(SpecError) as exc:
        NetworkSpec.from_dict([1, 2])
    assert exc.value.field == "spec"


def test_units_above_the_limit_are_rejected():
    with pytest.raises(SpecError) as exc:
        NetworkSpec.from_dict(spec_dict(layers=layers({"units": 65}, {"units": 3, "activation": "softmax"})),
                              max_units=64)
    assert exc.value.field == "layers[0].units"


def test_spec_error_is_a_value_error_with_the_bad_value_in_its_message():
    with pytest.raises(ValueError, match="swish"):
        NetworkSpec.from_dict(spec_dict(layers=layers({"units": 8, "activation": "swish"},
                                                      {"units": 3, "activation": "softmax"})))


def test_valid_spec_defaults_and_round_trip():
    spec = NetworkSpec.from_dict({"input_dim": 3, "layers": [{"units": 5}, {"units": 4, "dropout": 0.2},
                                                             {"units": 2}], "loss": "mse", "name": "ignored"})
    assert [layer.activation for layer in spec.layers] == ["relu", "relu", "linear"]   # hidden relu, output linear
    assert spec.layers[0].initializer() == "he_uniform"
    assert spec.layers[2].initializer() == "glorot_uniform"
    assert spec.n_params == param_count(3, [5, 4, 2]) == (3 * 5 + 5) + (5 * 4 + 4) + (4 * 2 + 2)
    assert not spec.is_classifier
    assert NetworkSpec.from_dict(spec.to_dict()) == spec


def test_integral_floats_are_accepted_as_integers():
    spec = NetworkSpec.from_dict(spec_dict(input_dim=4.0))
    assert spec.input_dim == 4
    assert isinstance(spec.input_dim, int)


INVALID_CONFIGS = {
    "negative learning_rate": ({"optimizer": {"learning_rate": -0.1}}, "optimizer.learning_rate"),
    "zero learning_rate": ({"optimizer": {"learning_rate": 0}}, "optimizer.learning_rate"),
    "NaN learning_rate": ({"optimizer": {"learning_rate": math.nan}}, "optimizer.learning_rate"),
    "string learning_rate": ({"optimizer": {"learning_rate": "0.1"}}, "optimizer.learning_rate"),
    "bad optimizer name": ({"optimizer": {"name": "lbfgs"}}, "optimizer.name"),
    "bad optimizer shorthand": ({"optimizer": "lbfgs"}, "optimizer.name"),
    "unknown optimizer field": ({"optimizer": {"name": "adam", "lr": 0.1}}, "optimizer.lr"),
    "momentum of 1": ({"optimizer": {"name": "momentum", "momentum": 1.0}}, "optimizer.momentum"),
    "beta2 of 1": ({"optimizer": {"beta2": 1.0}}, "optimizer.beta2"),
    "zero eps": ({"optimizer": {"eps": 0.0}}, "optimizer.eps"),
    "negative weight_decay": ({"optimizer": {"weight_decay": -1e-4}}, "optimizer.weight_decay"),
    "string nesterov": ({"optimizer": {"name": "momentum", "nesterov": "yes"}}, "optimizer.nesterov"),
    "optimizer not an object": ({"optimizer": 5}, "optimizer"),
    "optimizer of zero": ({"optimizer": 0}, "optimizer"),
    "optimizer empty string": ({"optimizer": ""}, "optimizer.name"),
    "schedule empty list": ({"schedule": []}, "schedule"),
    "bad schedule name": ({"schedule": {"name": "linear"}}, "schedule.name"),
    "zero gamma": ({"schedule": {"name": "step", "gamma": 0}}, "schedule.gamma"),
    "gamma above 1": ({"schedule": {"name": "exponential", "gamma": 1.5}}, "schedule.gamma"),
    "zero step_size": ({"schedule": {"name": "step", "step_size": 0}}, "schedule.step_size"),
    "negative warmup": ({"schedule": {"warmup_epochs": -1}}, "schedule.warmup_epochs"),
    "unknown schedule field": ({"schedule": {"name": "cosine", "t_max": 3}}, "schedule.t_max"),
    "zero epochs": ({"epochs": 0}, "epochs"),
    "fractional epochs": ({"epochs": 2.5}, "epochs"),
    "epochs above the limit": ({"epochs": 1_000_001}, "epochs"),
    "zero batch_size": ({"batch_size": 0}, "batch_size"),
    "validation_split of 1": ({"validation_split": 1.0}, "validation_split"),
    "negative validation_split": ({"validation_split": -0.1}, "validation_split"),
    "zero clip_norm": ({"clip_norm": 0}, "clip_norm"),
    "negative seed": ({"seed": -1}, "seed"),
    "float16 dtype": ({"dtype": "float16"}, "dtype"),
    "string shuffle": ({"shuffle": "yes"}, "shuffle"),
    "numeric standardize": ({"standardize": 1}, "standardize"),
    "negative patience": ({"early_stopping": {"patience": -1}}, "early_stopping.patience"),
    "unknown monitor": ({"early_stopping": {"monitor": "f1"}}, "early_stopping.monitor"),
    "unknown early_stopping field": ({"early_stopping": {"wait": 3}}, "early_stopping.wait"),
    "early_stopping not an object": ({"early_stopping": 3}, "early_stopping"),
    "unknown field": ({"learning_rate": 0.1}, "learning_rate"),
}


@pytest.mark.parametrize(("raw", "field"), INVALID_CONFIGS.values(), ids=INVALID_CONFIGS.keys())
def test_invalid_train_config_names_the_field(raw, field):
    with pytest.raises(SpecError) as exc:
        TrainConfig.from_dict(raw)
    assert exc.value.field == field


def test_train_config_defaults():
    cfg = TrainConfig.from_dict({})
    assert cfg == TrainConfig()
    assert cfg.dtype == "float32"
    assert cfg.optimizer == OptimizerConfig(name="adam", learning_rate=1e-3)
    assert cfg.early_stopping is None
    assert TrainConfig.from_dict({"optimizer": "sgd"}).optimizer.learning_rate == 0.01
    assert TrainConfig.from_dict({"schedule": "exponential"}).schedule == ScheduleConfig(name="exponential",
                                                                                          gamma=0.95)


def test_early_stopping_shorthands():
    assert TrainConfig.from_dict({"early_stopping": True}).early_stopping == EarlyStoppingConfig()
    assert TrainConfig.from_dict({"early_stopping": False}).early_stopping is None
    assert TrainConfig.from_dict({"early_stopping": {"enabled": False, "patience": 3}}).early_stopping is None


def test_ignored_fields_are_left_to_the_caller():
    cfg = TrainConfig.from_dict({"epochs": 3, "dataset_id": "abc"}, ignore=("dataset_id",))
    assert cfg.epochs == 3


def test_train_config_round_trip():
    cfg = TrainConfig.from_dict({
        "epochs": 7, "batch_size": 16, "optimizer": {"name": "momentum", "learning_rate": 0.05, "nesterov": True},
        "schedule": {"name": "cosine", "min_lr": 1e-4, "warmup_epochs": 1}, "clip_norm": 5.0,
        "validation_split": 0.25, "early_stopping": {"monitor": "val_accuracy", "patience": 2}, "shuffle": False,
        "seed": 2**40, "dtype": "float64", "standardize": True,
    })
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
