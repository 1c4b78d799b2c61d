"""The thread count of NumPy's BLAS (OpenBLAS), read and set at run time through ctypes.

Small GEMMs lose more to OpenBLAS's thread hand-off than a second core gains them, and after every threaded call
OpenBLAS's idle worker spins on the other core for a while, which slows the single-threaded elementwise passes
(the optimizer step, the activations) that follow. Measured on a 2-core machine: a 64-256-128-10 network at batch
64 trains 20% faster on one BLAS thread than on two; a 100-512-256-10 network breaks even at batch 64 and loses
17% at batch 256. So `Trainer.fit` runs small problems single-threaded (see `SMALL_STEP`).

The library is the OpenBLAS that NumPy loaded (found in /proc/self/maps, preferring the copy NumPy ships in
numpy.libs); its set/get_num_threads symbols carry scipy-openblas's prefix and suffix or none. Elsewhere (no
/proc, MKL or Accelerate, a symbol not found) every call here does nothing. The thread count is process-wide:
`limit_threads` counts its users, so concurrent trainers in one process leave the original count restored only
when the last of them is done.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

# A training step with fewer multiply-adds than this in its GEMMs' forward pass (batch rows x weights) runs on one
# BLAS thread. Measured on 2 cores, epochs alternating between 1 and 2 threads in one process: 64-256-128-10 at
# batch 64 (3.2M) 1.20x faster on one thread, at batch 256 (12.9M) 1.07x; 100-512-256-10 at batch 64 (11.8M)
# even (0.98x); at batch 256 (47M) 1.2x slower on one thread.
SMALL_STEP = 16_000_000

_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "")


class _Blas:
    def __init__(self) -> None:
        self.set_fn: Any = None
        self.get_fn: Any = None
        path = _numpy_openblas()
        if path is None:
            return
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            return
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                set_fn = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                get_fn = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if set_fn is not None and get_fn is not None:
                    set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                    get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                    self.set_fn, self.get_fn = set_fn, get_fn
                    return


def _numpy_openblas() -> str | None:
    paths = set()
    try:
        with open("/proc/self/maps") as maps:      # address perms offset dev inode [path]
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    paths.add(fields[5].strip())
    except OSError:
        return None
    found = sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p)
    numpy_libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(np.__file__))), "numpy.libs")
    own = [p for p in found if p.startswith(numpy_libs + os.sep)]
    if len(own) == 1:
        return own[0]
    return found[0] if len(found) == 1 else None


_blas: _Blas | None = None
_lock = threading.Lock()
_users = 0
_saved = 0


def _get() -> _Blas:
    global _blas
    if _blas is None:
        _blas = _Blas()
    return _blas


def step_threads(batch_size: int, n_weights: int) -> int | None:
    """The BLAS thread limit for training steps of this size: 1 for small ones, None (leave it) otherwise."""
    return 1 if batch_size * n_weights < SMALL_STEP else None


def get_threads() -> int | None:
    """NumPy's BLAS thread count, or None when it cannot be read here."""
    blas = _get()
    return None if blas.get_fn is None else int(blas.get_fn())


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Within the block, NumPy's BLAS uses at most n threads (None: leave it). Process-wide and counted."""
    global _users, _saved
    blas = _get()
    if n is None or blas.set_fn is None:
        yield
        return
    with _lock:
        if _users == 0:
            _saved = int(blas.get_fn())
        _users += 1
        if n < _saved:
            blas.set_fn(n)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                blas.set_fn(_saved)
