"""Network specs and training configs: plain dataclasses, built from JSON-like dicts and validated field by field.

Every `from_dict` rejects unknown fields and bad values with a `SpecError` whose `field` is the dotted path of the
offending value (`layers[1].units`, `optimizer.learning_rate`), so the service can pass it straight to the client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import SpecError

ACTIVATIONS = ("linear", "relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softmax")
LOSSES = ("mse", "mae", "huber", "binary_cross_entropy", "cross_entropy")
CLASSIFICATION_LOSSES = ("binary_cross_entropy", "cross_entropy")
INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine")
DTYPES = ("float32", "float64")
MONITORS = ("loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae", "rmse", "val_rmse", "r2", "val_r2")


# --- field readers ----------------------------------------------------------------------------------------------


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path or "spec", f"must be an object, got {type(value).__name__}")
    return value


def _no_unknown(d: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise SpecError(where, f"unknown field; expected one of {', '.join(allowed)}")


def _sub(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _int(d: Mapping[str, Any], name: str, path: str, *, default: int | None = None, lo: int | None = None,
         hi: int | None = None, required: bool = False) -> int:
    where = _sub(path, name)
    if name not in d or d[name] is None:
        if required or default is None:
            raise SpecError(where, "is required")
        return default
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            v = int(v)
        else:
            raise SpecError(where, f"must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise SpecError(where, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise SpecError(where, f"must be <= {hi}, got {v}")
    return v


def _float(d: Mapping[str, Any], name: str, path: str, *, default: float | None = None, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> float:
    where = _sub(path, name)
    if name not in d or d[name] is None:
        if default is None:
            raise SpecError(where, "is required")
        return default
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(where, f"must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise SpecError(where, f"must be finite, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise SpecError(where, f"must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise SpecError(where, f"must be {'<' if hi_open else '<='} {hi:g}, got {v:g}")
    return v


def _choice(d: Mapping[str, Any], name: str, path: str, choices: tuple[str, ...], *, default: str | None = None,
            nullable: bool = False) -> Any:
    where = _sub(path, name)
    if name not in d or d[name] is None:
        if default is None and not nullable:
            raise SpecError(where, f"is required; one of {', '.join(choices)}")
        return default
    v = d[name]
    if not isinstance(v, str) or v not in choices:
        raise SpecError(where, f"unknown value {v!r}; expected one of {', '.join(choices)}")
    return v


def _bool(d: Mapping[str, Any], name: str, path: str, *, default: bool) -> bool:
    if name not in d or d[name] is None:
        return default
    v = d[name]
    if not isinstance(v, bool):
        raise SpecError(_sub(path, name), f"must be true or false, got {v!r}")
    return v


# --- network ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One dense layer: `units` outputs, then `activation`, then (hidden layers only) inverted dropout."""

    units: int
    activation: str = "linear"
    dropout: float = 0.0
    init: str | None = None

    def initializer(self) -> str:
        """The weight initializer: as given, else He for the ReLU family and Glorot for the rest."""
        if self.init is not None:
            return self.init
        return "he_uniform" if self.activation in ("relu", "leaky_relu", "elu", "gelu") else "glorot_uniform"


@dataclass(frozen=True)
class NetworkSpec:
    """A multilayer perceptron: `input_dim` features through dense `layers` to the output, trained on `loss`."""

    input_dim: int
    layers: tuple[LayerSpec, ...]
    loss: str

    @property
    def output_dim(self) -> int:
        return self.layers[-1].units

    @property
    def is_classifier(self) -> bool:
        return self.loss in CLASSIFICATION_LOSSES

    @property
    def n_params(self) -> int:
        return param_count(self.input_dim, [layer.units for layer in self.layers])

    def layer_sizes(self) -> list[int]:
        return [self.input_dim, *(layer.units for layer in self.layers)]

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for layer in self.layers:
            d: dict[str, Any] = {"units": layer.units, "activation": layer.activation}
            if layer.dropout:
                d["dropout"] = layer.dropout
            if layer.init is not None:
                d["init"] = layer.init
            layers.append(d)
        return {"input_dim": self.input_dim, "layers": layers, "loss": self.loss}

    @classmethod
    def from_dict(cls, raw: Any, *, max_units: int = 1 << 20) -> NetworkSpec:
        d = _mapping(raw, "")
        _no_unknown(d, ("input_dim", "layers", "loss", "name"), "")
        input_dim = _int(d, "input_dim", "", lo=1, hi=max_units, required=True)
        raw_layers = d.get("layers")
        if not isinstance(raw_layers, list | tuple) or not raw_layers:
            raise SpecError("layers", "must be a non-empty list of {units, activation, dropout?}")
        layers = []
        last = len(raw_layers) - 1
        for i, raw_layer in enumerate(raw_layers):
            path = f"layers[{i}]"
            ld = _mapping(raw_layer, path)
            _no_unknown(ld, ("units", "activation", "dropout", "init"), path)
            units = _int(ld, "units", path, lo=1, hi=max_units, required=True)
            activation = _choice(ld, "activation", path, ACTIVATIONS, default="linear" if i == last else "relu")
            dropout = _float(ld, "dropout", path, default=0.0, lo=0.0, hi=1.0, hi_open=True)
            init = _choice(ld, "init", path, INITIALIZERS, nullable=True)
            if activation == "softmax" and i != last:
                raise SpecError(f"{path}.activation", "softmax is only allowed on the output layer")
            if dropout and i == last:
                raise SpecError(f"{path}.dropout", "dropout is only allowed on hidden layers, not the output layer")
            layers.append(LayerSpec(units=units, activation=activation, dropout=dropout, init=init))
        loss = _choice(d, "loss", "", LOSSES)
        out = layers[-1]
        out_path = f"layers[{last}]"
        if loss == "cross_entropy":
            if out.activation != "softmax":
                raise SpecError(f"{out_path}.activation",
                                f"loss cross_entropy needs a softmax output layer, got {out.activation}")
            if out.units < 2:
                raise SpecError(f"{out_path}.units", "loss cross_entropy needs at least 2 output units (classes)")
        if loss == "binary_cross_entropy" and out.activation != "sigmoid":
            raise SpecError(f"{out_path}.activation",
                            f"loss binary_cross_entropy needs a sigmoid output layer, got {out.activation}")
        if out.activation == "softmax" and out.units < 2:
            raise SpecError(f"{out_path}.units", "a softmax output layer needs at least 2 units")
        return cls(input_dim=input_dim, layers=tuple(layers), loss=loss)


def param_count(input_dim: int, units: list[int]) -> int:
    sizes = [input_dim, *units]
    return sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(units)))


# --- training config --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9        # momentum: the velocity's decay
    nesterov: bool = False
    beta1: float = 0.9           # adam, adamw
    beta2: float = 0.999
    rho: float = 0.9             # rmsprop
    eps: float = 1e-8
    weight_decay: float = 0.0    # L2 penalty on weights (decoupled for adamw)

    FIELDS = ("name", "learning_rate", "momentum", "nesterov", "beta1", "beta2", "rho", "eps", "weight_decay")

    @classmethod
    def from_dict(cls, raw: Any, path: str = "optimizer") -> OptimizerConfig:
        if isinstance(raw, str):
            raw = {"name": raw}
        d = _mapping(raw, path)
        _no_unknown(d, cls.FIELDS, path)
        name = _choice(d, "name", path, OPTIMIZERS, default="adam")
        default_lr = 0.01 if name in ("sgd", "momentum") else 1e-3
        return cls(
            name=name,
            learning_rate=_float(d, "learning_rate", path, default=default_lr, lo=0.0, lo_open=True, hi=1e3),
            momentum=_float(d, "momentum", path, default=0.9, lo=0.0, hi=1.0, hi_open=True),
            nesterov=_bool(d, "nesterov", path, default=False),
            beta1=_float(d, "beta1", path, default=0.9, lo=0.0, hi=1.0, hi_open=True),
            beta2=_float(d, "beta2", path, default=0.999, lo=0.0, hi=1.0, hi_open=True),
            rho=_float(d, "rho", path, default=0.9, lo=0.0, hi=1.0, hi_open=True),
            eps=_float(d, "eps", path, default=1e-8, lo=0.0, lo_open=True, hi=1.0),
            weight_decay=_float(d, "weight_decay", path, default=0.0, lo=0.0, hi=10.0),
        )


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule over (fractional) epochs; an optional linear warmup multiplies it."""

    name: str = "constant"
    step_size: float = 10.0      # step: epochs between decays
    gamma: float = 0.1           # step: factor per step; exponential: factor per epoch
    min_lr: float = 0.0          # cosine: the floor
    warmup_epochs: float = 0.0

    FIELDS = ("name", "step_size", "gamma", "min_lr", "warmup_epochs")

    @classmethod
    def from_dict(cls, raw: Any, path: str = "schedule") -> ScheduleConfig:
        if isinstance(raw, str):
            raw = {"name": raw}
        d = _mapping(raw, path)
        _no_unknown(d, cls.FIELDS, path)
        name = _choice(d, "name", path, SCHEDULES, default="constant")
        default_gamma = 0.95 if name == "exponential" else 0.1
        return cls(
            name=name,
            step_size=_float(d, "step_size", path, default=10.0, lo=0.0, lo_open=True, hi=1e6),
            gamma=_float(d, "gamma", path, default=default_gamma, lo=0.0, lo_open=True, hi=1.0),
            min_lr=_float(d, "min_lr", path, default=0.0, lo=0.0, hi=1e3),
            warmup_epochs=_float(d, "warmup_epochs", path, default=0.0, lo=0.0, hi=1e6),
        )


@dataclass(frozen=True)
class EarlyStoppingConfig:
    monitor: str | None = None   # default: val_loss when there is validation data, else loss
    patience: int = 10
    min_delta: float = 0.0
    restore_best_weights: bool = True

    FIELDS = ("monitor", "patience", "min_delta", "restore_best_weights", "enabled")

    @classmethod
    def from_dict(cls, raw: Any, path: str = "early_stopping") -> EarlyStoppingConfig | None:
        if raw is None or raw is False:
            return None
        if raw is True:
            return cls()
        d = _mapping(raw, path)
        _no_unknown(d, cls.FIELDS, path)
        if not _bool(d, "enabled", path, default=True):
            return None
        return cls(
            monitor=_choice(d, "monitor", path, MONITORS, nullable=True),
            patience=_int(d, "patience", path, default=10, lo=0, hi=1_000_000),
            min_delta=_float(d, "min_delta", path, default=0.0, lo=0.0),
            restore_best_weights=_bool(d, "restore_best_weights", path, default=True),
        )


@dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs of shuffled mini-batches, an optimizer, a schedule and the stopping rules."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip_norm: float | None = None
    validation_split: float = 0.0
    early_stopping: EarlyStoppingConfig | None = None
    shuffle: bool = True
    seed: int = 0
    dtype: str = "float32"
    standardize: bool = False

    FIELDS = ("epochs", "batch_size", "optimizer", "schedule", "clip_norm", "validation_split", "early_stopping",
              "shuffle", "seed", "dtype", "standardize")

    @classmethod
    def from_dict(cls, raw: Any, *, max_epochs: int = 1_000_000, max_batch_size: int = 1 << 24,
                  ignore: tuple[str, ...] = ()) -> TrainConfig:
        """`ignore` lists fields a caller handles itself (the service's network_id, dataset_id, ...)."""
        d = _mapping(raw, "")
        _no_unknown(d, cls.FIELDS + ignore, "")
        clip = d.get("clip_norm")
        return cls(
            epochs=_int(d, "epochs", "", default=10, lo=1, hi=max_epochs),
            batch_size=_int(d, "batch_size", "", default=32, lo=1, hi=max_batch_size),
            optimizer=OptimizerConfig.from_dict({} if d.get("optimizer") is None else d["optimizer"]),
            schedule=ScheduleConfig.from_dict({} if d.get("schedule") is None else d["schedule"]),
            clip_norm=None if clip is None else _float(d, "clip_norm", "", lo=0.0, lo_open=True),
            validation_split=_float(d, "validation_split", "", default=0.0, lo=0.0, hi=1.0, hi_open=True),
            early_stopping=EarlyStoppingConfig.from_dict(d.get("early_stopping")),
            shuffle=_bool(d, "shuffle", "", default=True),
            seed=_int(d, "seed", "", default=0, lo=0, hi=2**63 - 1),
            dtype=_choice(d, "dtype", "", DTYPES, default="float32"),
            standardize=_bool(d, "standardize", "", default=False),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d
