"""Data-parallel training steps: each batch split by rows across R replicas of the network, on R cores.

NumPy runs one core per call (and a small GEMM gains little from a second BLAS thread), while Python threads
cannot share the work: a handful of microseconds of NumPy per call and the GIL between calls serialize them. So the
replicas are processes. The trainer's process is replica 0 and forks R - 1 helpers that share, through anonymous
shared memory, the parameters, the optimizer's moments, every replica's gradient buffer, the epoch's row order
(permutation) and a small control block. A step:

1. every replica gathers its rows of the batch (rows [s + (e-s) j / R, s + (e-s) (j+1) / R) of the epoch's order)
   from the training data and runs forward and backward over them, its dL/d(output) scaled by its share of the
   rows, into its own gradient buffer;
2. every replica sums the R gradients over its own slice of the parameter vector (into replica 0's buffer), adds
   the L2 penalty there, and reports that slice's squared norm;
3. every replica reads all the partial sums and takes the same decision (divergence: nothing is updated and the
   trainer raises; clipping: the factor);
4. every replica applies the optimizer step to its own slice (optimizer updates are elementwise). The trainer's
   process returns as soon as its own slice is done; `sync()` waits for the helpers' before anything reads the
   parameters (the next step, a callback, a checkpoint, the end of a fit).

The replicas wait for each other by spinning on counters in the control block (a step of a small network takes
0.1-1 ms; waking a sleeping process takes 20-100 us). A helper waiting for the next step spins for 20 ms, then
sets its sleep flag and sleeps on a pipe, which the trainer writes to when it publishes a step and finds the flag
set (a memory fence on each side makes sure one of them sees the other's store). Results depend on R
(the gradient is summed from R partial sums), never on where the replicas run: `processes=1` runs the same R-way
split in one process, one replica after the other, with the same bits (resuming an R-way checkpoint on a one-core
host stays exact). The trainer uses it for networks without dropout (the masks come from the trainer's one
Generator); see Trainer for when.

Helpers are forked (Linux; the control block relies on x86-64's ordering of stores, so elsewhere the split runs in
one process), close the pipes of other trainers' helpers they inherit, die with the trainer's process
(PR_SET_PDEATHSIG, and the pipe's end of file), ignore SIGINT (the trainer stops them), and never return into the
caller's code: they leave through os._exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import platform
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from . import blas, fpenv
from .optimizers import _BLOCK

if TYPE_CHECKING:
    from .training import Trainer

Array = NDArray[np.floating[Any]]

# Control block, int64 slots: what replica 0 publishes, then per replica the step it has finished phases of.
_SEQ, _ROW_S, _ROW_E, _OPT_T, _COUNT_FROM, _HEADER = 0, 1, 2, 3, 4, 8
# A helper waiting for the next step spins this long before it sleeps on its pipe (setting its sleep flag): long
# enough to carry it over the trainer's work between steps and between fit() calls (an epoch's end, a callback),
# short enough to give the core back soon when training stops. OpenBLAS's idle threads spin ~0.1 s the same way.
_GRACE_SECONDS = 0.02
# Float64 slots per replica: its loss sum, correct count, |err| sum, squared gradient norm of its slice, then the
# squared error per output; slot 0 of replica 0's row also carries the step's learning rate and clip scale.
_LOSS, _CORRECT, _ABS, _GN2, _SQ = 0, 1, 2, 3, 4
_SPIN_BEFORE_YIELD = 2000        # spins (~0.1 ms) before each further spin also yields the core
MAX_REPLICAS = 64


_FENCE = threading.Lock()


def _fence() -> None:
    """A full memory barrier: an uncontended lock's acquire and release are atomic read-modify-writes (x86 `lock`
    instructions), which order every store before them against every load after them. Needed where each side stores
    its flag and then loads the other's (a helper going to sleep, the trainer publishing a step): without it both
    loads may miss both stores, and the helper would sleep through the step."""
    _FENCE.acquire()
    _FENCE.release()


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork_replicas() -> bool:
    """Helper processes work here: Linux (fork, anonymous shared memory) on x86-64 (ordered stores)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") and hasattr(os, "fork")


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Arena:
    """Arrays in anonymous shared memory (MAP_SHARED): a fork()ed child sees the same pages."""

    def __init__(self) -> None:
        self.maps: list[mmap.mmap] = []

    def array(self, shape: int | tuple[int, ...], dtype: Any, order: str = "C") -> NDArray[Any]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        buf = mmap.mmap(-1, max(1, count * dt.itemsize))
        self.maps.append(buf)
        return np.ndarray(shape, dtype=dt, buffer=buf, order=order)


_LIVE_WFDS: set[int] = set()     # every live Split's pipe ends: a new helper closes the ones it inherits


def _shutdown(pids: list[int], wfds: list[int], state: dict[str, bool]) -> None:
    """Stop the helpers: a closed pipe wakes a sleeping helper into its exit; one that does not go is killed (at
    once when a step was cut short: its helpers are spinning in the middle of it)."""
    for fd in wfds:
        _LIVE_WFDS.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
    for pid in pids:
        for _ in range(0 if state["busy"] else 200):     # up to ~1 s each
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.005)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


class Split:
    """A trainer's R-way data-parallel step (R >= 2), run by `processes` processes (1: all in this one)."""

    def __init__(self, trainer: Trainer, replicas: int, processes: int) -> None:
        self.R = R = replicas
        self.parallel = processes > 1
        net, opt = trainer.net, trainer.optimizer
        n, dt, k = net.n_params, trainer.dtype, trainer.spec.output_dim
        arena = self.arena = _Arena()
        net.share(arena.array(n, dt), arena.array(n, dt))
        opt.share(lambda size: arena.array(size, dt))
        self.nets = [net, *(net.replica(arena.array(n, dt)) for _ in range(R - 1))]
        self.opt, self.rng, self.is_classifier = opt, trainer.rng, trainer.spec.is_classifier
        # Each replica's slice of the parameters, cut at multiples of 16 floats (64-byte cache lines).
        cuts = [min(n, (n * j // R) // 16 * 16) for j in range(R)] + [n]
        self.slices = [(cuts[j], cuts[j + 1]) for j in range(R)]
        # The optimizer's scratch: the summed gradient itself where the optimizer allows (Adam, SGD: the step then
        # touches one vector less; 1-1.5% of a digits epoch), else a buffer per replica.
        self.tmps: list[Array | None] = [
            None if opt.grads_as_scratch else np.empty(max(1, min(hi - lo, _BLOCK)), dtype=dt)
            for lo, hi in self.slices]
        self.width = _SQ + k
        # Scalars go through memoryviews: an item read or write is a third of a NumPy scalar's cost.
        self.ctl = memoryview(arena.array(_HEADER + 4 * R, np.int64))    # + per replica 3 flags, per helper sleep
        self.vals = arena.array((R + 1, self.width), np.float64)
        self.val = memoryview(self.vals.reshape(-1))
        self.lr_at, self.clip_at = R * self.width, R * self.width + 1
        # The data: every replica gathers its rows of each step from the training arrays (helpers see them through
        # fork, read-only) by the epoch's permutation, which the trainer writes here at the start of each epoch. No
        # shuffled copy of the data: none for the trainer's process to write at each epoch's start while the
        # helpers wait, and none in shared memory.
        self.x, self.yt, self.labels = trainer._xa, np.ascontiguousarray(trainer.y.T), trainer.labels
        self.perm = arena.array(trainer.n, np.intp)
        self._batch: dict[int, tuple[Array, Array]] = {}      # rows -> x and y buffers (each process its own)
        # Cross-entropy accuracy: in every full batch, replica j's output layer writes its logits straight into
        # logits[j][batch] (the loss leaves them shifted by the row max, which keeps the argmax), and the
        # predictions of many steps are counted at once: by each replica over its own in the epoch's last step,
        # by the trainer before anything else reads the epoch's sums (`count_correct`).
        self.bs = trainer.batch_size
        self.n_full = trainer.n // self.bs
        self.logits: list[Array] | None = None
        if self.labels is not None:
            self.logits = [arena.array((self.n_full, k, self.bs * (j + 1) // R - self.bs * j // R), dt)
                           for j in range(R)]
        self.seq = 0
        self.state = {"busy": False}        # a step in progress (shared with the finalizer)
        self.closed = False
        self.pids: list[int] = []
        self.wfds: list[int] = []
        self._finalizer: Any = None
        if self.parallel:
            self._fork(processes)

    # --- helper processes -------------------------------------------------------------------------------------

    def _fork(self, processes: int) -> None:
        helpers = min(processes, self.R) - 1
        # Replicas 1..R-1 go round-robin to the helpers; replica 0's process also runs the ones left to it.
        self.owner = [0] + [1 + (j - 1) % helpers for j in range(1, self.R)]
        pipes = [os.pipe() for _ in range(helpers)]
        parent = os.getpid()
        for h in range(helpers):
            pid = os.fork()
            if pid == 0:                            # the helper: never returns
                code = 1
                try:
                    _die_with_parent()
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    rfd = pipes[h][0]
                    for i, (r, w) in enumerate(pipes):
                        if i != h:
                            os.close(r)
                        os.close(w)
                    for fd in _LIVE_WFDS:           # other trainers' helpers must see their pipes close
                        with contextlib.suppress(OSError):
                            os.close(fd)
                    if os.getppid() != parent:
                        os._exit(0)
                    self._helper(h + 1, rfd)
                    code = 0
                finally:
                    os._exit(code)
            self.pids.append(pid)
        for r, w in pipes:
            os.close(r)
            self.wfds.append(w)
            _LIVE_WFDS.add(w)
        self._finalizer = weakref.finalize(self, _shutdown, list(self.pids), list(self.wfds), self.state)

    def _helper(self, h: int, rfd: int) -> None:
        mine = [j for j in range(1, self.R) if self.owner[j] == h]
        b = blas._get()
        if b.set_fn is not None:
            b.set_fn(1)
        ctl = self.ctl
        seq = 0
        with fpenv.flush_denormals(), np.errstate(all="ignore"):
            while True:
                seq += 1
                if not self._await_step(h, seq, rfd):
                    return                          # end of file: the trainer closed us (or is gone)
                for j in mine:
                    self._phase1(j)
                    ctl[_HEADER + j] = seq
                self._wait_all(_HEADER, seq, None)
                for j in mine:
                    self._phase2(j)
                    ctl[_HEADER + self.R + j] = seq
                self._wait_all(_HEADER + self.R, seq, None)
                what, _loss, scale = self._decide()
                for j in mine:
                    if what is None:
                        self._phase3(j, scale)
                    ctl[_HEADER + 2 * self.R + j] = seq

    def _await_step(self, h: int, seq: int, rfd: int) -> bool:
        """Wait for step `seq`: spin for the grace period, then sleep on the pipe until the trainer writes to it
        (it does when it finds the sleep flag set). False at the pipe's end of file."""
        ctl, sleep_at = self.ctl, _HEADER + 3 * self.R + h
        while True:
            deadline = time.perf_counter() + _GRACE_SECONDS
            spins = 0
            while ctl[_SEQ] < seq:
                spins += 1
                if spins % 256 == 0 and time.perf_counter() > deadline:
                    break
            else:
                return True
            ctl[sleep_at] = 1
            _fence()
            if ctl[_SEQ] >= seq:                    # published while we were setting the flag
                ctl[sleep_at] = 0
                return True
            if not os.read(rfd, 64):                # every wake-up byte written so far; b"": end of file
                return False
            ctl[sleep_at] = 0                       # then spin again: a wake-up may come early or be spurious

    def _spin(self, slot: int, seq: int, check: Callable[[], None] | None) -> None:
        ctl, spins = self.ctl, 0
        while ctl[slot] < seq:
            spins += 1
            if spins > _SPIN_BEFORE_YIELD:
                os.sched_yield()                    # a busy host: give the core to whoever we wait for
                if check is not None and spins % 1024 == 0:
                    check()

    def _wait_all(self, base: int, seq: int, check: Callable[[], None] | None) -> None:
        ctl = self.ctl
        for j in range(self.R):
            if ctl[base + j] < seq:
                self._spin(base + j, seq, check)

    def _check_helpers(self) -> None:
        """Called while the trainer waits long for a helper: a helper that died fails training; one asleep is woken
        (a safety net: `_wake` after each publication already does)."""
        self._wake()
        for pid in self.pids:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.pids.remove(pid)
                raise RuntimeError(f"a training helper process (pid {pid}) died (wait status {status}); "
                                   "training cannot go on in parallel")

    @contextmanager
    def active(self) -> Iterator[None]:
        """Helpers spin for steps within the block and sleep outside it."""
        if not self.parallel:
            yield
            return
        if len(self.pids) != len(self.wfds):
            raise RuntimeError("a training helper process died earlier; this trainer cannot train in parallel")
        try:
            yield
        finally:
            if self.state["busy"]:              # a step cut short (an exception in this process): helpers are out of
                self.close()                    # step with us, so they go; the trainer starts new ones if asked
            else:
                self.sync()

    def _wake(self) -> None:
        """Write to the pipe of every helper that says it sleeps (after a publication and a fence: see _fence)."""
        for h, fd in enumerate(self.wfds):
            if self.ctl[_HEADER + 3 * self.R + h + 1]:
                os.write(fd, b"w")

    def sync(self) -> None:
        """Wait until the helpers have finished the last step's updates: before anything reads the parameters
        or the moments (a step returns when this process's own slice is updated)."""
        if self.parallel:
            self._wait_all(_HEADER + 2 * self.R, self.seq, self._check_helpers)

    def count_correct(self, start: int, stop: int) -> int:
        """Correct predictions in full batches [start, stop) of the epoch (cross-entropy; after `sync`)."""
        return sum(self._count(j, start, stop) for j in range(self.R))

    def _count(self, j: int, start: int, stop: int) -> int:
        """Replica j's correct predictions in full batches [start, stop) of the epoch."""
        if self.logits is None or self.labels is None or stop <= start:
            return 0
        bs, R = self.bs, self.R
        lo, hi = bs * j // R, bs * (j + 1) // R
        if hi <= lo:
            return 0
        rows = self.perm[: self.n_full * bs].reshape(self.n_full, bs)[start:stop, lo:hi]
        pred = np.argmax(self.logits[j][start:stop], axis=1)
        return int(np.count_nonzero(pred == self.labels.take(rows)))

    def close(self) -> None:
        self.closed = True
        if self._finalizer is not None:
            self._finalizer()

    # --- a step -----------------------------------------------------------------------------------------------

    def step(self, s: int, e: int, lr: float, clip: float | None,
             count_from: int = -1) -> tuple[float, int, float, list[float]]:
        """One optimizer step on rows [s, e) of the epoch's permutation. Returns (loss sum over the rows, correct
        count, |err| sum, squared error per output) once this process's replicas are done: `sync()` waits for the
        helpers. Raises _Diverged(what), with nothing updated, when the loss or the gradient is not finite.
        `count_from` >= 0 (the epoch's last step): the correct count also covers full batches count_from.. of the
        epoch (see `logits`)."""
        ctl, val, R, w = self.ctl, self.val, self.R, self.width
        if self.parallel:                       # the helpers still read the last step's inputs until then
            self._wait_all(_HEADER + 2 * R, self.seq, self._check_helpers)
        state = self.state
        state["busy"] = True
        self.seq += 1
        seq = self.seq
        ctl[_ROW_S], ctl[_ROW_E], ctl[_OPT_T], ctl[_COUNT_FROM] = s, e, self.opt.t, count_from
        val[self.lr_at] = lr
        val[self.clip_at] = math.nan if clip is None else clip
        if self.parallel:
            check = self._check_helpers
            ctl[_SEQ] = seq
            _fence()
            self._wake()
            self._phase1(0)
            ctl[_HEADER] = seq
            self._wait_all(_HEADER, seq, check)
            self._phase2(0)
            ctl[_HEADER + R] = seq
            self._wait_all(_HEADER + R, seq, check)
            what, loss, scale = self._decide()
            if what is None:
                self._phase3(0, scale)
            ctl[_HEADER + 2 * R] = seq
            if what is not None:
                self.sync()
        else:
            for j in range(R):
                self._phase1(j)
            for j in range(R):
                self._phase2(j)
            what, loss, scale = self._decide()
            if what is None:
                for j in range(R):
                    self._phase3(j, scale)
        self.opt.t = ctl[_OPT_T] + (what is None)
        state["busy"] = False
        if what is not None:
            raise _Diverged(what)
        correct = 0
        for j in range(R):
            correct += int(val[j * w + _CORRECT])
        if self.is_classifier:
            return loss, correct, 0.0, []
        sums = self.vals[:R].sum(axis=0)
        return loss, correct, float(sums[_ABS]), [float(v) for v in sums[_SQ:]]

    def _decide(self) -> tuple[str | None, float, float]:
        """(what diverged or None, the loss sum, the clip factor) from every replica's partial sums: each process
        works it out alike from the shared values, so none waits for another's decision."""
        val, w = self.val, self.width
        # Summed in replica order, the same in every process (math.fsum would raise on an overflowing sum).
        loss, gn2 = val[_LOSS], val[_GN2]
        for j in range(1, self.R):
            loss += val[j * w + _LOSS]
            gn2 += val[j * w + _GN2]
        if not math.isfinite(loss):
            return "the loss", loss, 1.0
        if not math.isfinite(gn2):
            return "the gradient", loss, 1.0
        clip = val[self.clip_at]
        return None, loss, clip / math.sqrt(gn2) if clip == clip and gn2 > clip * clip else 1.0

    def _phase1(self, j: int) -> None:
        """Forward and backward over replica j's rows into its gradient buffer; its partial sums into val[j]."""
        net, val, at, ctl = self.nets[j], self.val, j * self.width, self.ctl
        s, e, R = ctl[_ROW_S], ctl[_ROW_E], self.R
        total = e - s
        lo, hi = s + total * j // R, s + total * (j + 1) // R
        if hi <= lo:                            # a last batch of fewer rows than replicas: none here
            net.grads[...] = 0.0
            self.vals[j] = 0.0
            if self.logits is not None and ctl[_COUNT_FROM] >= 0:
                val[at + _CORRECT] = self._count(j, ctl[_COUNT_FROM], self.n_full)
            return
        rows = hi - lo
        ws = net.workspace(rows)
        bufs = self._batch.get(rows)
        if bufs is None:
            bufs = self._batch[rows] = (np.empty((rows, self.x.shape[1]), self.x.dtype),
                                        np.empty((rows, self.yt.shape[0]), self.yt.dtype, order="F"))
        xb, yb = bufs
        idx = self.perm[lo:hi]
        # mode="clip": the default "raise" buffers `out` (twice the time); idx is a permutation's slice.
        np.take(self.x, idx, 0, xb, "clip")
        np.take(self.yt, idx, 1, yb.T, "clip")
        full = self.logits is not None and total == self.bs
        zl = self.logits[j][s // total].T if full else None     # type: ignore[index]
        loss = net._train_step(xb, yb, self.rng, ws, zl, rows / total, False)
        val[at + _LOSS] = loss * rows
        last = net._last
        if self.labels is not None:
            count_from = ctl[_COUNT_FROM]
            if full:                            # counted from the logits: now if this is the epoch's last step
                val[at + _CORRECT] = self._count(j, count_from, self.n_full) if count_from >= 0 else 0
            else:
                val[at + _CORRECT] = (np.count_nonzero(np.argmax(ws.z[last], axis=1) == self.labels.take(idx))
                                      + (self._count(j, count_from, self.n_full) if count_from >= 0 else 0))
        elif self.is_classifier:
            val[at + _CORRECT] = np.count_nonzero((ws.z[last] > 0) == (yb > 0.5))
        else:
            err = ws.a[last] - yb
            val[at + _ABS] = float(np.abs(err).sum())
            self.vals[j, _SQ:] = (err * err).sum(axis=0, dtype=np.float64)

    def _phase2(self, j: int) -> None:
        """Sum the replicas' gradients over replica j's slice into replica 0's buffer, add L2, note the norm."""
        lo, hi = self.slices[j]
        g = self.nets[0].grads[lo:hi]
        for other in self.nets[1:]:
            np.add(g, other.grads[lo:hi], g)
        net0 = self.nets[0]
        if net0.l2:
            net0.add_l2_grad(lo, hi)
        self.val[j * self.width + _GN2] = float(np.dot(g, g))

    def _phase3(self, j: int, scale: float) -> None:
        """The optimizer step on replica j's slice."""
        lo, hi = self.slices[j]
        net0, opt = self.nets[0], self.opt
        if scale != 1.0:
            net0.grads[lo:hi] *= scale
        opt.t = self.ctl[_OPT_T]
        opt.begin(self.val[self.lr_at])
        opt.update(net0.params, net0.grads, lo, hi, self.tmps[j])


class _Diverged(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
