"""``keep_freed_memory``: a training-step-like allocation pattern stops faulting its memory in again every step."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from xsearch.allocator import glibc_mallopt

STEPS = textwrap.dedent("""
    import ctypes, resource, sys
    from xsearch.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # a step: ten 8 MiB activation buffers written, all freed at its end
        blocks = [libc.malloc(8 << 20) for _ in range(10)]
        for block in blocks:
            libc.memset(block, 1, 8 << 20)
        for block in blocks:
            libc.free(block)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, setting], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(glibc_mallopt() is None, reason="glibc's mallopt: the C library here is not glibc")
def test_freed_buffers_are_reused_instead_of_faulted_in_every_step():
    pages = 10 * (8 << 20) // 4096  # one step's buffers, in 4 KiB pages
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 5 * pages  # glibc's defaults hand the buffers back and fault them in again, step after step
    assert kept < 2 * pages     # kept: only the first step faults its buffers in
