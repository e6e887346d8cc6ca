"""Keep freed activation memory in the process instead of handing it back to the kernel.

glibc's malloc serves every allocation above ``M_MMAP_THRESHOLD`` (at most 32 MiB by default)
with a fresh ``mmap`` and returns it to the kernel on ``free``; below it, freed memory at the top
of the heap above ``M_TRIM_THRESHOLD`` is also returned. A network forward allocates and frees
feature maps of tens of MiB at every layer, so each layer's output is page-faulted in anew, 4 KiB
at a time: measured on a 2-core Zen 4 machine, a 1x1 convolution writing a 1x128x256x256 output
took 18 ms with 8,200 page faults per call, and 6.2 ms with 760 once malloc keeps its memory
(docs/performance.md has the network- and image-level figures).

:func:`tune_malloc` raises both thresholds to 1 GiB, so feature maps come from and go back to the
heap. The process then keeps its peak heap until it exits; the peak itself (what the memory targets
measure) does not grow. It is applied by the pipeline, ``refusion.restore`` and the training engine
on CPU; set ``REFUSION_MALLOC_TUNING=0`` to leave malloc alone. It does nothing where glibc's
``mallopt`` is missing (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_malloc", "tune_malloc_for", "malloc_tuned", "ENV_VAR"]

ENV_VAR = "REFUSION_MALLOC_TUNING"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DEFAULT_THRESHOLD = 1 << 30  # 1 GiB: above any single feature map of a 6000x4000 tile

_state = {"tuned": False}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.gnu_get_libc_version  # only glibc has it; musl's mallopt is a no-op
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(threshold: int = _DEFAULT_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes; True when applied.

    Idempotent and process-wide. Returns False (and changes nothing) when ``REFUSION_MALLOC_TUNING``
    is ``0``/``false``/``off`` or when the C library is not glibc.
    """
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 0 < threshold < 2 ** 31:
        raise ValueError(f"threshold must be an int in (0, 2**31) bytes, got {threshold!r}")
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    if _state["tuned"] == threshold:
        return True
    libc = _glibc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    if applied:
        _state["tuned"] = threshold
    return applied


def tune_malloc_for(device) -> bool:
    """:func:`tune_malloc` when ``device`` is the CPU (feature maps then reuse the heap instead of
    being page-faulted in at every layer); False for other devices, whose memory malloc does not hold."""
    return str(device).startswith("cpu") and tune_malloc()


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has been applied in this process."""
    return bool(_state["tuned"])
