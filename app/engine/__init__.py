"""The NumPy backpropagation engine: multilayer perceptrons, their losses, optimizers and training loop.

Imports NumPy and the standard library only; knows nothing of the web, the database or settings.

    spec = NetworkSpec.from_dict({"input_dim": 4, "layers": [{"units": 16, "activation": "relu"},
                                  {"units": 3, "activation": "softmax"}], "loss": "cross_entropy"})
    trainer = Trainer(spec, TrainConfig.from_dict({"epochs": 50, "batch_size": 32}), x, labels)
    result = trainer.fit(callback=lambda record: print(record["loss"]))
    model = trainer.model(); model.predict(x_new); Model.from_bytes(model.to_bytes())
"""

from . import blas, fpenv
from .errors import CheckpointError, DivergenceError, EngineError, SpecError
from .model import Model
from .network import MLP
from .spec import (
    ACTIVATIONS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    EarlyStoppingConfig,
    LayerSpec,
    NetworkSpec,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    param_count,
)
from .training import FitResult, Trainer, prepare_targets, split_indices, train

__all__ = [
    "ACTIVATIONS", "LOSSES", "MLP", "OPTIMIZERS", "SCHEDULES", "CheckpointError", "DivergenceError",
    "EarlyStoppingConfig", "EngineError", "FitResult", "LayerSpec", "Model", "NetworkSpec", "OptimizerConfig",
    "ScheduleConfig", "SpecError", "TrainConfig", "Trainer", "blas", "fpenv", "param_count", "prepare_targets",
    "split_indices", "train",
]
