"""Training: shuffled mini-batches over epochs, with validation, metrics, early stopping, callbacks and checkpoints.

A `Trainer` owns the whole training state: the network, the optimizer and its moments, the step count that drives
the learning-rate schedule, the random Generator (initialization, the validation split, shuffling and dropout all
draw from the one Generator seeded by `config.seed`), the position in the data (epoch, batch and the epoch's
permutation), the running sums of the epoch in progress, the early-stopping best and the history. `checkpoint()`
writes all of it to bytes at any batch boundary and `Trainer.from_checkpoint()` continues from there: the resumed
run ends with the same weights, bit for bit, as an uninterrupted one (same host, NumPy build and BLAS threads).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .blas import limit_threads, step_threads
from .errors import CheckpointError, DivergenceError, SpecError
from .fpenv import flush_denormals, keep_denormals
from .model import Model, from_legacy
from .network import MLP
from .optimizers import make_optimizer
from .parallel import MAX_REPLICAS, Split, _Diverged, can_fork_replicas, cpus
from .schedules import learning_rate
from .serialize import pack, unpack
from .spec import NetworkSpec, TrainConfig

Array = NDArray[np.floating[Any]]
EpochCallback = Callable[[dict[str, Any]], "bool | None"]
BatchCallback = Callable[[int, int], "bool | None"]
# /2: parameters and optimizer moments in the per-layer layout (network.py); /1, still read: weights, then biases.
CHECKPOINT_FORMAT = "backprop.checkpoint/2"
OLDER_CHECKPOINT_FORMATS = ("backprop.checkpoint/1",)
_EVAL_BATCH = 8192
_MAXIMIZE = ("accuracy", "r2")


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    stopped: str                    # completed | early_stopping | callback | stopped (request_stop or batch callback)
    best_epoch: int | None = None
    best_value: float | None = None
    monitor: str | None = None
    epochs_run: int = 0

    @property
    def finished(self) -> bool:
        return self.stopped in ("completed", "early_stopping")


@dataclass
class _EpochSums:
    loss: float = 0.0
    seen: int = 0
    correct: int = 0
    abs_err: float = 0.0
    sq_err: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _as_2d_float(a: Any, name: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(name, f"must be a numeric array: {exc}") from exc
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise SpecError(name, f"must be 2-dimensional (n_samples, n_columns), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise SpecError(name, "is empty: at least one sample is needed")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise SpecError(name, f"contains NaN or Inf (first at row {int(bad[0])}, column {int(bad[1])})")
    return arr


def prepare_targets(spec: NetworkSpec, y: Any, name: str = "y") -> NDArray[np.float64]:
    """Targets as (n, output_dim) floats; 1-D integer labels are one-hot encoded for cross_entropy."""
    raw = np.asarray(y)
    k = spec.output_dim
    if spec.loss == "cross_entropy" and raw.ndim == 1:
        if raw.size == 0:
            raise SpecError(name, "is empty: at least one sample is needed")
        if raw.dtype.kind not in "iu" and not (raw.dtype.kind == "f" and np.all(np.mod(raw, 1) == 0)):
            raise SpecError(name, "1-D targets for cross_entropy must be integer class indices")
        labels = raw.astype(np.int64)
        if labels.min() < 0 or labels.max() >= k:
            raise SpecError(name, f"class indices must be in [0, {k - 1}] for a {k}-unit softmax output")
        out = np.zeros((labels.size, k))
        out[np.arange(labels.size), labels] = 1.0
        return out
    arr = _as_2d_float(raw, name)
    if arr.shape[1] != k:
        raise SpecError(name, f"has {arr.shape[1]} columns but the network has {k} outputs")
    if spec.loss == "cross_entropy" and (arr.min() < 0 or not np.allclose(arr.sum(axis=1), 1.0, atol=1e-6)):
        raise SpecError(name, "cross_entropy targets must be one-hot (or probability) rows summing to 1")
    if spec.loss == "binary_cross_entropy" and (arr.min() < 0 or arr.max() > 1):
        raise SpecError(name, "binary_cross_entropy targets must lie in [0, 1]")
    return arr


def _standardize(xt: NDArray[np.float64], xv: NDArray[np.float64] | None) -> tuple[
        NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
    """(mean, scale, standardized training rows, standardized validation rows) per column; a constant column gets
    scale 1. A column whose sum or squares overflow float64 (values beyond ~1e154) is standardized as column / its
    largest magnitude, so mean and scale stay finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = xt.mean(axis=0)
        scale = xt.std(axis=0)
        scale[scale < 1e-12] = 1.0
        xt_s = (xt - mean) / scale
        xv_s = None if xv is None else (xv - mean) / scale
    bad = ~(np.isfinite(mean) & np.isfinite(scale) & np.isfinite(xt_s).all(axis=0))
    if bad.any():
        peak = np.abs(xt[:, bad]).max(axis=0)
        u = xt[:, bad] / peak
        mu, sd = u.mean(axis=0), u.std(axis=0)
        sd[sd < 1e-12] = 1.0
        mean[bad], scale[bad] = mu * peak, sd * peak
        xt_s[:, bad] = (u - mu) / sd
        if xv_s is not None and xv is not None:
            xv_s[:, bad] = (xv[:, bad] / peak - mu) / sd
    return mean, scale, xt_s, xv_s


def split_indices(n: int, fraction: float, rng: np.random.Generator) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """(train, validation) row indices: a seeded shuffle, the last round(n * fraction) rows held out (at least 1)."""
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise SpecError("validation_split", f"leaves no training rows out of {n}")
    perm = rng.permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val:])


class Trainer:
    def __init__(self, spec: NetworkSpec, config: TrainConfig, x: Any, y: Any, *, x_val: Any = None,
                 y_val: Any = None, replicas: int | None = None, processes: int | None = None) -> None:
        """`replicas`: how many ways each batch is split across data-parallel replicas (parallel.py; None: chosen
        by `_default_replicas`); `processes`: how many processes may run them (None: one per replica where this
        host can, else 1). The replicas decide the result (bit for bit), the processes only the speed."""
        self.spec, self.config = spec, config
        self.dtype = np.dtype(config.dtype)
        self.rng = np.random.default_rng(config.seed)
        self.net = MLP(spec, dtype=self.dtype, rng=self.rng)
        if config.optimizer.name != "adamw":
            self.net.l2 = config.optimizer.weight_decay
        self._prepare_data(x, y, x_val, y_val)
        self.optimizer = make_optimizer(config.optimizer, self.net.n_params, self.dtype, self.net.weight_ranges)
        self.monitor = self._monitor_name()
        # Cursor and accumulated state: everything below goes into a checkpoint.
        self.epoch = 0                  # completed epochs
        self.batch = 0                  # completed batches of the epoch in progress
        self.step = 0                   # optimizer steps so far
        self.perm: NDArray[np.intp] | None = None
        self.sums = _EpochSums(sq_err=[0.0] * spec.output_dim)
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.best_params: Array | None = None
        self.finished: str | None = None          # completed | early_stopping, once training is over
        self.restored_epoch: int | None = None    # the epoch whose weights early stopping restored at the end
        self._stop = False
        self._data_epoch = -1                     # the epoch whose shuffled copy _xs/_ys (or split's perm) hold
        self._perm_split: Split | None = None
        self._xs: Array | None = None
        self._ys: Array | None = None
        self._yt: Array | None = None             # y transposed, C-contiguous: what the shuffle takes columns of
        self._ls: NDArray[np.intp] | None = None
        self._yf: Array | None = None             # y column-major, when not shuffling
        self._logits: Array | None = None         # (full batches, classes, batch size): see _run_batches
        for name, value in (("replicas", replicas), ("processes", processes)):
            if value is not None and not 1 <= value <= MAX_REPLICAS:
                raise SpecError(name, f"must be from 1 to {MAX_REPLICAS}, got {value}")
        if replicas is not None and replicas > 1 and any(layer.dropout for layer in spec.layers):
            raise SpecError("replicas", "must be 1 for a network with dropout (its masks are drawn in order)")
        self.processes = processes
        self.replicas = replicas if replicas is not None else self._default_replicas(processes)
        self._split: Split | None = None

    # --- data parallelism -----------------------------------------------------------------------------------------

    def _default_replicas(self, processes: int | None) -> int:
        """How many ways each batch is split (parallel.py). The result of training depends on it (by rounding), so
        a checkpoint keeps it. 1 with dropout (its masks come from the one Generator in order); otherwise
        `processes`, or by default 2 when this host lets two processes run here, the batch has at least 32 rows
        and a step is big enough (batch x weights >= 2^20: a tiny network's step is shorter than the handshakes)."""
        if any(layer.dropout for layer in self.spec.layers):
            return 1
        if processes is not None:
            return processes
        if (can_fork_replicas() and cpus() >= 2 and self.batch_size >= 32
                and self.batch_size * self.net.n_weights >= 1 << 20):
            return 2
        return 1

    def _get_split(self) -> Split:
        if self._split is None or self._split.closed:
            wanted = min(self.processes or self.replicas, self.replicas)
            procs = wanted if can_fork_replicas() and cpus() >= 2 else 1
            self._split = Split(self, self.replicas, procs)
        return self._split

    def close(self) -> None:
        """Stop the helper processes of data-parallel training, if any (also done when the trainer is garbage
        collected, and at exit). The trainer stays usable: a later fit() starts them again."""
        if self._split is not None:
            self._split.close()
            self._split = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- setup ----------------------------------------------------------------------------------------------------

    def _prepare_data(self, x: Any, y: Any, x_val: Any, y_val: Any) -> None:
        spec, cfg = self.spec, self.config
        xa = _as_2d_float(x, "x")
        if xa.shape[1] != spec.input_dim:
            raise SpecError("x", f"has {xa.shape[1]} features but the network's input_dim is {spec.input_dim}")
        ya = prepare_targets(spec, y, "y")
        if ya.shape[0] != xa.shape[0]:
            raise SpecError("y", f"has {ya.shape[0]} rows but x has {xa.shape[0]}")
        if x_val is not None or y_val is not None:
            if x_val is None or y_val is None:
                raise SpecError("x_val", "x_val and y_val go together")
            xv = _as_2d_float(x_val, "x_val")
            if xv.shape[1] != spec.input_dim:
                raise SpecError("x_val", f"has {xv.shape[1]} features, expected {spec.input_dim}")
            yv: NDArray[np.float64] | None = prepare_targets(spec, y_val, "y_val")
            assert yv is not None
            if yv.shape[0] != xv.shape[0]:
                raise SpecError("y_val", f"has {yv.shape[0]} rows but x_val has {xv.shape[0]}")
            xt, yt = xa, ya
        elif cfg.validation_split > 0:
            tr, va = split_indices(xa.shape[0], cfg.validation_split, self.rng)
            xt, yt, xv, yv = xa[tr], ya[tr], xa[va], ya[va]
        else:
            xt, yt, xv, yv = xa, ya, None, None
        self.x_mean: NDArray[np.float64] | None = None
        self.x_scale: NDArray[np.float64] | None = None
        if cfg.standardize:
            self.x_mean, self.x_scale, xt, xv = _standardize(xt, xv)
        dt = self.dtype
        # Training reads the rows with a last column of ones (network.py); `x` is a view of the rest.
        self._xa = np.empty((xt.shape[0], xt.shape[1] + 1), dtype=dt)
        self._xa[:, -1] = 1.0
        self.x = self._xa[:, :-1]
        with np.errstate(over="ignore"):                # values beyond dt's range: refused just below
            self._xa[:, :-1] = xt
            self.x_val = None if xv is None else np.ascontiguousarray(xv, dtype=dt)
            self.y = np.ascontiguousarray(yt, dtype=dt)
            self.y_val = None if yv is None else np.ascontiguousarray(yv, dtype=dt)
        top = f"{dt.name}'s range (largest {np.finfo(dt).max:.3g})"
        if not (np.isfinite(self._xa).all() and (self.x_val is None or np.isfinite(self.x_val).all())):
            raise SpecError("x", f"feature values beyond {top}: "
                                 + ("use dtype float64" if dt != np.float64 else "rescale them")
                                 + ("" if cfg.standardize else " or standardize the inputs"))
        if not (np.isfinite(self.y).all() and (self.y_val is None or np.isfinite(self.y_val).all())):
            raise SpecError("y", f"target values beyond {top}: "
                                 + ("use dtype float64 or rescale them" if dt != np.float64 else "rescale them"))
        self.n = self.x.shape[0]
        self.batch_size = min(cfg.batch_size, self.n)
        self.n_batches = -(-self.n // self.batch_size)
        self.labels = self.y.argmax(axis=1) if spec.loss == "cross_entropy" else None
        yt64 = np.asarray(yt, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            self._sst = ((yt64 - yt64.mean(axis=0)) ** 2).sum(axis=0)
        h = hashlib.sha256()
        for arr in (self.x, self.y, self.x_val, self.y_val):
            if arr is not None:
                h.update(str(arr.shape).encode())
                h.update(arr.tobytes())
        self.fingerprint = h.hexdigest()

    def _monitor_name(self) -> str | None:
        es = self.config.early_stopping
        if es is None:
            return None
        monitor = es.monitor or ("val_loss" if self.x_val is not None else "loss")
        if monitor.startswith("val_") and self.x_val is None:
            raise SpecError("early_stopping.monitor",
                            f"{monitor} needs validation data: set validation_split or pass a validation set")
        base = monitor.removeprefix("val_")
        if base != "loss" and (base == "accuracy") != self.spec.is_classifier:
            raise SpecError("early_stopping.monitor", f"{monitor} is not a metric of this {self._task()}")
        return monitor

    def _task(self) -> str:
        return "classifier" if self.spec.is_classifier else "regressor"

    # --- the loop -------------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop at the next batch boundary (thread-safe: a flag read after every batch)."""
        self._stop = True

    def lr_now(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.lr_at(self.step)

    def lr_at(self, step: int) -> float:
        cfg = self.config
        return learning_rate(cfg.schedule, cfg.optimizer.learning_rate, max(step, 0), self.n_batches, cfg.epochs)

    def fit(self, callback: EpochCallback | None = None, *, batch_callback: BatchCallback | None = None,
            batch_callback_every: int = 1) -> FitResult:
        """Train until the configured epochs are done, early stopping ends it, or a callback returns False.

        `callback(record)` runs after every epoch with that epoch's record; `batch_callback(epoch, batch)` after
        every `batch_callback_every` batches. Either may return False to stop at once; the trainer is then at a
        clean boundary, so `checkpoint()` and a later `fit()` continue exactly where it stopped. A
        `request_stop()` made before `fit()` is honoured at its first batch boundary.
        """
        every = max(1, int(batch_callback_every))
        inner = batch_callback
        if batch_callback is not None:
            def inner(epoch: int, batch: int) -> bool | None:   # the caller's code runs with IEEE subnormals
                with keep_denormals():
                    return batch_callback(epoch, batch)
        with np.errstate(all="ignore"):
            while self.finished is None:
                if self.epoch >= self.config.epochs:
                    self._finish("completed")
                    break
                # fpenv: subnormal Adam moments cost 20-30x per operation; blas: small GEMMs run faster on 1 thread.
                if self.replicas > 1:
                    # One BLAS thread in every replica, however many processes run them: OpenBLAS on two threads
                    # may round some GEMMs differently (seen with 100-512-256-10 at 128 rows), and a split's result
                    # must depend on its replicas alone.
                    split = self._get_split()
                    with flush_denormals(), limit_threads(1), split.active():
                        done = self._run_split(split, inner, every)
                else:
                    with flush_denormals(), limit_threads(step_threads(self.batch_size, self.net.n_weights)):
                        done = self._run_batches(inner, every)
                if not done:
                    return self._result("stopped")
                record = self._end_epoch()
                if callback is not None and callback(record) is False:
                    if self.finished is None and self.epoch >= self.config.epochs:
                        self._finish("completed")
                    return self._result(self.finished or "callback")
        return self._result(self.finished or "completed")

    def _shuffled(self) -> tuple[Array, Array, NDArray[np.intp] | None]:
        # Targets are kept column-major (the same values): the network's output layer is stored transposed (see
        # MLP._make_workspace), and the loss reads a batch of y beside it, so both then share one memory order.
        if not self.config.shuffle:
            if self._yf is None:
                self._yf = np.asfortranarray(self.y)
            return self._xa, self._yf, self.labels
        if self.perm is None:
            self.perm = self.rng.permutation(self.n)
        if self._data_epoch != self.epoch:
            if self._xs is None:
                self._xs, self._ys = np.empty_like(self._xa), np.empty_like(self.y, order="F")
                self._yt = np.ascontiguousarray(self.y.T)
            # mode="clip" because the default mode="raise" buffers `out` (twice the time); perm is a permutation.
            np.take(self._xa, self.perm, axis=0, out=self._xs, mode="clip")
            np.take(self._yt, self.perm, axis=1, out=self._ys.T, mode="clip")
            self._ls = None if self.labels is None else self.labels[self.perm]
            self._data_epoch = self.epoch
        return self._xs, self._ys, self._ls

    def _permute_shared(self, split: Split) -> None:
        """The epoch's row order into the split's shared permutation (its replicas gather their rows by it)."""
        if self._data_epoch != self.epoch or self._perm_split is not split:
            if self.config.shuffle and self.perm is None:
                self.perm = self.rng.permutation(self.n)
            split.perm[...] = np.arange(self.n) if self.perm is None else self.perm
            self._perm_split, self._data_epoch = split, self.epoch

    def _run_split(self, split: Split, batch_callback: BatchCallback | None, every: int) -> bool:
        """_run_batches for replicas > 1: every step through `split` (parallel.py)."""
        self._permute_shared(split)
        cfg, sums, k = self.config, self.sums, self.spec.output_dim
        bs, n, n_batches = self.batch_size, self.n, self.n_batches
        clip = cfg.clip_norm
        sched = cfg.schedule
        const_lr = cfg.optimizer.learning_rate if sched.name == "constant" and sched.warmup_epochs <= 0 else None
        regressor = not self.spec.is_classifier
        b = self.batch
        n_full = split.n_full
        counted = min(b, n_full)               # full batches whose predictions are in sums.correct (see Split)
        deferred = split.logits is not None

        def sync() -> None:                     # before anything reads the parameters or the sums
            nonlocal counted
            split.sync()
            upto = min(self.batch, n_full)
            sums.correct += split.count_correct(counted, upto)
            counted = max(counted, upto)

        step = split.step
        t0 = time.perf_counter()
        while b < n_batches:
            s = b * bs
            e = min(s + bs, n)
            # The epoch's last step: its replicas count their own predictions of the full batches not yet counted.
            count_from = counted if deferred and e == n else -1
            try:
                loss_sum, correct, abs_err, sq_err = step(s, e, self.lr_now() if const_lr is None else const_lr, clip,
                                                          count_from)
            except _Diverged as exc:
                sync()
                raise DivergenceError(epoch=self.epoch + 1, batch=b + 1, what=exc.what,
                                      learning_rate=cfg.optimizer.learning_rate) from None
            if count_from >= 0:
                counted = n_full
            self.step += 1
            b += 1
            self.batch = b
            sums.loss += loss_sum
            sums.seen += e - s
            sums.correct += correct
            if regressor:
                sums.abs_err += abs_err
                sums.sq_err = [a + v for a, v in zip(sums.sq_err or [0.0] * k, sq_err, strict=True)]
            if self._stop:
                self._stop = False
                sync()
                sums.seconds += time.perf_counter() - t0
                return False
            if batch_callback is not None and b % every == 0 and b < n_batches:
                sync()                          # the callback may read the parameters (a checkpoint)
                sums.seconds += time.perf_counter() - t0
                if batch_callback(self.epoch + 1, b) is False or self._stop:
                    self._stop = False
                    return False
                t0 = time.perf_counter()
        sync()
        sums.seconds += time.perf_counter() - t0
        return True

    def _run_batches(self, batch_callback: BatchCallback | None, every: int) -> bool:
        """The epoch in progress from the current batch on. False if told to stop before its end."""
        xs, ys, labels = self._shuffled()
        net, opt, cfg, sums, rng = self.net, self.optimizer, self.config, self.sums, self.rng
        params, grads = net.params, net.grads
        bs, n, n_batches = self.batch_size, self.n, self.n_batches
        n_full = n // bs                          # batches of exactly bs rows; a shorter last one follows if n % bs
        ws_full = net.workspace(bs)
        clip = cfg.clip_norm
        clip2 = None if clip is None else clip * clip
        classifier, last = self.spec.is_classifier, len(self.spec.layers) - 1
        sched = cfg.schedule
        const_lr = cfg.optimizer.learning_rate if sched.name == "constant" and sched.warmup_epochs <= 0 else None
        # Cross-entropy accuracy: each full batch's output layer writes its logits straight into an epoch-long
        # buffer (the loss leaves them shifted by the row max, which keeps the argmax), and the predictions are
        # counted against the labels in one argmax at the next boundary where sums are read (end of the run, stop,
        # batch callback, divergence) instead of one argmax per batch.
        logits = None
        if labels is not None:
            logits = self._logits
            if logits is None:
                logits = self._logits = np.empty((n_full, self.spec.output_dim, bs), dtype=self.dtype)
        counted = min(self.batch, n_full)         # full batches whose predictions are in sums.correct

        def count_correct() -> None:
            nonlocal counted
            upto = min(self.batch, n_full)
            if logits is not None and labels is not None and upto > counted:
                pred = np.argmax(logits[counted:upto], axis=1)
                sums.correct += int(np.count_nonzero(pred == labels[counted * bs:upto * bs].reshape(-1, bs)))
                counted = upto

        train_step, opt_step, dot, isfinite = net._train_step, opt.step, np.dot, math.isfinite
        b = self.batch
        t0 = time.perf_counter()
        while b < n_batches:
            s = b * bs
            if b < n_full:
                e, ws, zl = s + bs, ws_full, None if logits is None else logits[b].T
            else:
                e, ws, zl = n, net.workspace(n - s), None
            yb = ys[s:e]
            loss = train_step(xs[s:e], yb, rng, ws, zl)
            gn2 = float(dot(grads, grads))
            if not (isfinite(loss) and isfinite(gn2)):
                count_correct()
                what = "the loss" if not isfinite(loss) else "the gradient"
                raise DivergenceError(epoch=self.epoch + 1, batch=b + 1, what=what,
                                      learning_rate=cfg.optimizer.learning_rate)
            if clip2 is not None and gn2 > clip2:
                grads *= clip / math.sqrt(gn2)
            opt_step(params, grads, self.lr_now() if const_lr is None else const_lr)
            self.step += 1
            b += 1
            self.batch = b
            sums.loss += loss * (e - s)
            sums.seen += e - s
            if logits is not None:
                if zl is None and labels is not None:   # the short last batch: counted at once
                    sums.correct += int(np.count_nonzero(np.argmax(ws.z[last], axis=1) == labels[s:e]))
            elif classifier:
                sums.correct += int(np.count_nonzero((ws.z[last] > 0) == (yb > 0.5)))
            else:
                err = ws.a[last] - yb
                sums.abs_err += float(np.abs(err).sum())
                sq = (err * err).sum(axis=0, dtype=np.float64)
                sums.sq_err = [a + float(b) for a, b in zip(sums.sq_err, sq, strict=True)]
            if self._stop:
                self._stop = False   # consumed: a later fit() goes on
                count_correct()
                sums.seconds += time.perf_counter() - t0
                return False
            if batch_callback is not None and b % every == 0 and b < n_batches:
                count_correct()
                sums.seconds += time.perf_counter() - t0
                if batch_callback(self.epoch + 1, b) is False or self._stop:
                    self._stop = False
                    return False
                t0 = time.perf_counter()
        count_correct()
        sums.seconds += time.perf_counter() - t0
        return True

    def _end_epoch(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        sums, k = self.sums, self.spec.output_dim
        metrics: dict[str, float] = {}
        if self.spec.is_classifier:
            per = 1 if self.labels is not None else k
            metrics["accuracy"] = sums.correct / (sums.seen * per)
        else:
            metrics.update(self._regression_metrics(sums.abs_err, np.array(sums.sq_err), sums.seen, self._sst))
        val_loss = None
        if self.x_val is not None and self.y_val is not None:
            val_loss, val_metrics = self.evaluate_prepared(self.x_val, self.y_val)
            metrics.update({f"val_{key}": v for key, v in val_metrics.items()})
        self.epoch += 1
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "loss": sums.loss / sums.seen,
            "val_loss": val_loss,
            "metrics": metrics,
            "lr": self.lr_at(self.step - 1),
            "seconds": sums.seconds + (time.perf_counter() - t0),
        }
        self.history.append(record)
        self.batch = 0
        self.perm = None
        self.sums = _EpochSums(sq_err=[0.0] * k)
        self._early_stopping(record)
        if self.finished is None and self.epoch >= self.config.epochs:
            self._finish("completed")
        return record

    @staticmethod
    def _regression_metrics(abs_err: float, sq_err: NDArray[np.float64], n: int,
                            sst: NDArray[np.float64]) -> dict[str, float]:
        k = sq_err.size
        r2 = np.where(sst > 0, 1.0 - sq_err / np.where(sst > 0, sst, 1.0), np.where(sq_err == 0, 1.0, 0.0))
        return {"mae": abs_err / (n * k), "rmse": math.sqrt(float(sq_err.sum()) / (n * k)), "r2": float(r2.mean())}

    def evaluate_prepared(self, x: Array, y: Array) -> tuple[float, dict[str, float]]:
        """Loss and metrics on already scaled data, in inference mode."""
        net, n, k = self.net, x.shape[0], self.spec.output_dim
        total, correct, abs_err = 0.0, 0, 0.0
        sq_err = np.zeros(k)
        for s in range(0, n, _EVAL_BATCH):
            xb, yb = x[s:s + _EVAL_BATCH], y[s:s + _EVAL_BATCH]
            pred = net.forward(xb, logits=True)
            if self.spec.is_classifier:
                if self.spec.loss == "cross_entropy":
                    correct += int(np.count_nonzero(pred.argmax(axis=1) == yb.argmax(axis=1)))
                else:
                    correct += int(np.count_nonzero((pred > 0) == (yb > 0.5)))
            else:
                err = pred.astype(np.float64) - yb
                abs_err += float(np.abs(err).sum())
                sq_err += (err * err).sum(axis=0)
            total += net.loss.value(pred, yb) * xb.shape[0]
        metrics: dict[str, float]
        if self.spec.is_classifier:
            per = 1 if self.spec.loss == "cross_entropy" else k
            metrics = {"accuracy": correct / (n * per)}
        else:
            y64 = y.astype(np.float64)
            metrics = self._regression_metrics(abs_err, sq_err, n, ((y64 - y64.mean(axis=0)) ** 2).sum(axis=0))
        return total / n, metrics

    def _early_stopping(self, record: dict[str, Any]) -> None:
        es, monitor = self.config.early_stopping, self.monitor
        if es is None or monitor is None:
            return
        value = record[monitor] if monitor in ("loss", "val_loss") else record["metrics"][monitor]
        maximize = monitor.removeprefix("val_") in _MAXIMIZE
        if self.best_value is None or (
            value > self.best_value + es.min_delta if maximize else value < self.best_value - es.min_delta
        ):
            self.best_value, self.best_epoch, self.wait = float(value), record["epoch"], 0
            if es.restore_best_weights:
                if self.best_params is None:
                    self.best_params = self.net.params.copy()
                else:
                    np.copyto(self.best_params, self.net.params)
        else:
            self.wait += 1
            if self.wait >= es.patience:
                self._finish("early_stopping")

    def _finish(self, reason: str) -> None:
        self.finished = reason
        es = self.config.early_stopping
        if es is not None and es.restore_best_weights and self.best_params is not None:
            np.copyto(self.net.params, self.best_params)
            self.restored_epoch = self.best_epoch

    def weights_record(self) -> dict[str, Any] | None:
        """The history record of the epoch whose weights the network holds: the best epoch's once early stopping
        restored its weights, else the last epoch's (None before any epoch)."""
        if self.restored_epoch is not None:
            for record in reversed(self.history):
                if record["epoch"] == self.restored_epoch:
                    return record
        return self.history[-1] if self.history else None

    def _result(self, stopped: str) -> FitResult:
        return FitResult(history=list(self.history), stopped=stopped, best_epoch=self.best_epoch,
                         best_value=self.best_value, monitor=self.monitor, epochs_run=self.epoch)

    # --- outputs --------------------------------------------------------------------------------------------------

    def model(self, meta: dict[str, Any] | None = None) -> Model:
        """The network as it stands (the best weights once early stopping restored them), with its input scaling."""
        info: dict[str, Any] = {"epochs_run": self.epoch, "best_epoch": self.best_epoch, "monitor": self.monitor}
        record = self.weights_record()
        if record is not None:
            # The metrics of the weights the model holds: with restored best weights, the best epoch's.
            info["final"] = {"loss": record["loss"], "val_loss": record["val_loss"], **record["metrics"]}
            info["weights_epoch"] = record["epoch"]
        info.update(meta or {})
        return Model(self.spec, self.net.params.copy(), dtype=str(self.dtype), x_mean=self.x_mean,
                     x_scale=self.x_scale, meta=info)

    def predict(self, x: Any) -> Array:
        return self.model().predict(x)

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """The whole training state at the current batch boundary, as bytes."""
        sums = self.sums
        meta = {
            "format": CHECKPOINT_FORMAT,
            "spec": self.spec.to_dict(),
            "config": self.config.to_dict(),
            "numpy": np.__version__,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "opt_t": self.optimizer.t,
            "sums": {"loss": sums.loss, "seen": sums.seen, "correct": sums.correct, "abs_err": sums.abs_err,
                     "sq_err": sums.sq_err, "seconds": sums.seconds},
            "history": self.history,
            "early_stopping": {"best_value": self.best_value, "best_epoch": self.best_epoch, "wait": self.wait},
            "finished": self.finished,
            "rng": json.dumps(self.rng.bit_generator.state),
            "replicas": self.replicas,
        }
        arrays: dict[str, NDArray[Any]] = {"params": self.net.params}
        for key, arr in self.optimizer.state_arrays().items():
            arrays[f"opt.{key}"] = arr
        if self.perm is not None:
            arrays["perm"] = self.perm
        if self.best_params is not None:
            arrays["best_params"] = self.best_params
        return pack(meta, arrays)

    @classmethod
    def from_checkpoint(cls, data: bytes, x: Any, y: Any, *, x_val: Any = None, y_val: Any = None,
                        processes: int | None = None) -> Trainer:
        """Rebuild a trainer from `checkpoint()` bytes and the same data it was trained on. It goes on with the
        checkpoint's batch split (`replicas`), in as many processes as `processes` and the host allow."""
        meta, arrays = unpack(data, expect_format=CHECKPOINT_FORMAT, older=OLDER_CHECKPOINT_FORMATS)
        try:
            spec = NetworkSpec.from_dict(meta["spec"])
            config = TrainConfig.from_dict(meta["config"])
        except (KeyError, SpecError) as exc:
            raise CheckpointError(f"invalid checkpoint: {exc}") from exc
        replicas = meta.get("replicas", 1)
        if not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS or (
                replicas > 1 and any(layer.dropout for layer in spec.layers)):
            raise CheckpointError(f"invalid checkpoint: replicas {replicas!r}")
        trainer = cls(spec, config, x, y, x_val=x_val, y_val=y_val, replicas=replicas, processes=processes)
        if meta.get("fingerprint") != trainer.fingerprint:
            raise CheckpointError("the checkpoint was written for different training data")
        try:
            if meta["format"] != CHECKPOINT_FORMAT:       # the earlier layout: params, best weights, moments
                n = trainer.net.n_params
                arrays = {k: from_legacy(spec, v) if k in ("params", "best_params") or (
                    k.startswith("opt.") and np.shape(v) == (n,)) else v for k, v in arrays.items()}
            trainer.net.set_params(arrays["params"])
            trainer.optimizer.load_state(meta["opt_t"], {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")})
            trainer.epoch, trainer.batch, trainer.step = int(meta["epoch"]), int(meta["batch"]), int(meta["step"])
            s = meta["sums"]
            trainer.sums = _EpochSums(loss=s["loss"], seen=s["seen"], correct=s["correct"], abs_err=s["abs_err"],
                                      sq_err=list(s["sq_err"]), seconds=s["seconds"])
            trainer.history = list(meta["history"])
            es = meta["early_stopping"]
            trainer.best_value, trainer.best_epoch, trainer.wait = es["best_value"], es["best_epoch"], es["wait"]
            trainer.best_params = arrays.get("best_params")
            trainer.finished = meta["finished"]
            perm = arrays.get("perm")
            if perm is not None and (perm.shape != (trainer.n,) or perm.dtype.kind not in "iu"
                                     or not np.array_equal(np.sort(perm), np.arange(trainer.n))):
                raise ValueError("perm is not a permutation of the training rows")
            trainer.perm = perm
            trainer.rng.bit_generator.state = json.loads(meta["rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid checkpoint: {exc}") from exc
        return trainer


def train(spec: NetworkSpec | dict[str, Any], x: Any, y: Any, config: TrainConfig | dict[str, Any] | None = None,
          **kwargs: Any) -> tuple[Model, FitResult]:
    """One call: build, fit and return (model, result). kwargs go to Trainer (x_val, y_val)."""
    spec = spec if isinstance(spec, NetworkSpec) else NetworkSpec.from_dict(spec)
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
    with Trainer(spec, config, x, y, **kwargs) as trainer:
        result = trainer.fit()
        return trainer.model(), result
