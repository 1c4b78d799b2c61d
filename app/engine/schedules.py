"""Learning-rate schedules, evaluated at every optimizer step from the fractional epoch e = step / steps_per_epoch.

constant: lr.  step: lr * gamma^floor(e / step_size).  exponential: lr * gamma^e.
cosine: min_lr + (lr - min_lr) (1 + cos(pi p)) / 2 with p the fraction of the post-warmup epochs done.
warmup_epochs > 0 multiplies any of them by min(1, (step + 1) / warmup_steps).
"""

from __future__ import annotations

import math

from .spec import ScheduleConfig


def learning_rate(cfg: ScheduleConfig, base_lr: float, step: int, steps_per_epoch: int, total_epochs: int) -> float:
    e = step / steps_per_epoch
    if cfg.name == "constant":
        lr = base_lr
    elif cfg.name == "step":
        lr = base_lr * cfg.gamma ** math.floor(e / cfg.step_size)
    elif cfg.name == "exponential":
        lr = base_lr * cfg.gamma**e
    elif cfg.name == "cosine":
        span = max(total_epochs - cfg.warmup_epochs, 1e-12)
        p = min(max((e - cfg.warmup_epochs) / span, 0.0), 1.0)
        lr = cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise ValueError(f"unknown schedule {cfg.name!r}")
    if cfg.warmup_epochs > 0:
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        lr *= min(1.0, (step + 1) / warmup_steps)
    return lr
