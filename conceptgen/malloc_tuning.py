"""Keep freed memory mapped for reuse instead of handing it back to the OS (glibc, Linux).

PyTorch's CPU operators allocate and free a few MB of activations per layer per batch.
glibc's defaults return much of that to the OS at once (mmap'd blocks and heap trims),
so every batch pays page faults to map it again: about 3,500 faults per forward of the
demo model at batch 16, and ~30 % of its CPU forward time on a 2-core VM
(benchmarks/embedding.py). Raising the mmap and trim thresholds keeps it mapped. The
price is that resident memory stays at its peak between batches instead of shrinking.
"""
from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: larger blocks still get their own mapping
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it is returned

__all__ = ["keep_freed_memory"]


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True if glibc took them (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
