"""Engine errors.

EngineError
├── SpecError          a network spec or training config that cannot work; names the offending field
├── DivergenceError    a NaN or Inf in the loss or the gradients; says where, suggests a fix
└── CheckpointError    checkpoint or model bytes that cannot be read or do not fit the data
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


class SpecError(EngineError, ValueError):
    """A spec or config field is invalid. `field` is a dotted path such as `layers[2].activation`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DivergenceError(EngineError, ArithmeticError):
    """Training produced a non-finite loss or gradient."""

    def __init__(self, *, epoch: int, batch: int, what: str, learning_rate: float) -> None:
        self.epoch = epoch
        self.batch = batch
        self.what = what
        self.learning_rate = learning_rate
        super().__init__(
            f"training diverged: {what} became NaN or Inf at epoch {epoch}, batch {batch}. "
            f"Try a smaller learning_rate (it was {learning_rate:g}), gradient clipping (clip_norm), "
            f"or standardized inputs."
        )


class CheckpointError(EngineError, ValueError):
    """Checkpoint or model bytes are corrupt, of another format, or do not fit the given data."""
