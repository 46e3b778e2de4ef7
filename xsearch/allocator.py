"""Keep freed memory in the process instead of handing it back to the kernel after every training step.

glibc's ``malloc`` serves large blocks (a batch's activations: megabytes each) with ``mmap`` and returns them with
``munmap`` when freed, and trims the heap top when it shrinks, so every training step faults its activation buffers
back in page by page (the kernel zeroes each 4 KiB page): about 14,500 page faults a step for the quickstart's model
on CPU, about 500 with these thresholds, which make freed buffers reusable by the next step (``benchmarks/allocator.py``;
a one-epoch quickstart ``fit`` runs about 2.5% faster). The numbers the model computes do not change; the process keeps
its peak memory rather than returning it between steps. The ``xsearch`` command sets them at start.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Callable

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts: blocks up to 32 MiB come from the reusable heap
TRIM_THRESHOLD = 1 << 30   # free memory at the heap top is handed back to the kernel only beyond 1 GiB
TOP_PAD = 64 << 20         # the heap grows 64 MiB at a time


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` of this process's C library; ``None`` where the C library is not glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (module docstring); ``False`` where the C library is not glibc or refused one."""
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    accepted = [mallopt(parameter, value) == 1 for parameter, value in
                ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))]
    return all(accepted)
