"""Flush-to-zero for the training loop: subnormal floats are treated as, and rounded to, zero.

Adam's first moment of a weight whose gradient is exactly zero (every weight into or out of a dead ReLU unit: a
quarter of the benchmark network's weights within one epoch) decays by beta1 each step and passes through the
subnormal range (below 1.2e-38 in float32) on its way to zero. x86 cores take a microcode assist on every
subnormal operand or result, 20-30x the time of a normal multiply, so with a few thousand such values an Adam step
over 185k parameters took 1.3-1.4 ms instead of 0.4 ms and epochs slowed down as training went on. Setting the
FTZ and DAZ bits of the SSE control register (MXCSR) for the training thread removes that, as TensorFlow does for
its threads and as `torch.set_flush_denormal(True)` offers: values below 1.2e-38 carry no useful signal in an update
scaled by 1 / (sqrt(v) + eps).

The register is per thread (a thread inherits its creator's at start): `flush_denormals()` sets it for the calling
thread and restores the previous value on exit, so code that runs outside it (prediction, callbacks run under
`keep_denormals()`, threads already running) is unaffected. It goes through glibc's
fegetenv/fesetenv (fenv_t holds the MXCSR at byte 28 on x86-64) with ctypes; elsewhere (other architectures, other
C libraries) it does nothing, and training runs as before, only slower when subnormals occur.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

_FENV_SIZE = 32             # sizeof(fenv_t) on x86-64 glibc
_MXCSR_OFFSET = 28
_FTZ_DAZ = 0x8040           # MXCSR bit 15 flush-to-zero, bit 6 denormals-are-zero
_MASKS = 0x1F80             # MXCSR exception masks: all set unless someone unmasked FP exceptions


class _Fenv:
    def __init__(self) -> None:
        self.libm: ctypes.CDLL | None = None
        if platform.machine().lower() not in ("x86_64", "amd64") or platform.libc_ver()[0] != "glibc":
            return
        try:
            libm = ctypes.CDLL("libm.so.6")
            libm.fegetenv.argtypes = libm.fesetenv.argtypes = [ctypes.c_char_p]
            libm.fegetenv.restype = libm.fesetenv.restype = ctypes.c_int
        except (OSError, AttributeError):
            return
        self.libm = libm
        env = self.get()
        # Only trust the layout if what sits at the offset looks like an MXCSR (its exception masks set).
        if env is None or self._mxcsr(env) & _MASKS != _MASKS:
            self.libm = None

    def get(self) -> ctypes.Array[ctypes.c_char] | None:
        assert self.libm is not None
        env = ctypes.create_string_buffer(_FENV_SIZE)
        return env if self.libm.fegetenv(env) == 0 else None

    def set(self, env: ctypes.Array[ctypes.c_char]) -> bool:
        assert self.libm is not None
        return self.libm.fesetenv(env) == 0

    @staticmethod
    def _mxcsr(env: ctypes.Array[ctypes.c_char]) -> int:
        return int.from_bytes(env.raw[_MXCSR_OFFSET:_MXCSR_OFFSET + 4], "little")

    def with_ftz(self, env: ctypes.Array[ctypes.c_char], on: bool) -> ctypes.Array[ctypes.c_char]:
        mxcsr = self._mxcsr(env) | _FTZ_DAZ if on else self._mxcsr(env) & ~_FTZ_DAZ
        raw = bytearray(env.raw)
        raw[_MXCSR_OFFSET:_MXCSR_OFFSET + 4] = mxcsr.to_bytes(4, "little")
        return ctypes.create_string_buffer(bytes(raw), _FENV_SIZE)


_fenv: _Fenv | None = None


def _get_fenv() -> _Fenv:
    global _fenv
    if _fenv is None:
        _fenv = _Fenv()
    return _fenv


def supported() -> bool:
    """Whether flush_denormals() takes effect on this platform."""
    return _get_fenv().libm is not None


def denormals_flushed() -> bool:
    """Whether the calling thread flushes subnormals to zero now."""
    fenv = _get_fenv()
    if fenv.libm is None:
        return False
    env = fenv.get()
    return env is not None and fenv._mxcsr(env) & _FTZ_DAZ == _FTZ_DAZ


@contextmanager
def _ftz(on: bool) -> Iterator[None]:
    fenv = _get_fenv()
    saved = fenv.get() if fenv.libm is not None else None
    if saved is None or not fenv.set(fenv.with_ftz(saved, on)):
        yield
        return
    try:
        yield
    finally:
        fenv.set(saved)


def flush_denormals() -> AbstractContextManager[None]:
    """Within the block, the calling thread's float operations flush subnormal inputs and results to zero."""
    return _ftz(True)


def keep_denormals() -> AbstractContextManager[None]:
    """Within the block, the calling thread computes with subnormals as IEEE 754 says (for callbacks that run
    inside flush_denormals())."""
    return _ftz(False)
