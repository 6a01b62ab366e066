"""Keep a long CPU stage's resident memory from creeping up: glibc's mmap threshold.

glibc serves allocations above its mmap threshold with mmap and returns them to the system on free;
smaller ones come from the heap, which is rarely given back. By default the threshold is *dynamic*: each
freed mmap'ed block raises it (up to 32 MiB), so after a few steps a training loop's many-megabyte
tensors are served from the heap, and varying shapes (padded batches of varying length) fragment it.
A CPU fine-tune of Qwen2.5-0.5B (experiments/qwen05b_cpu_v3) grew from 12 to 21 GB resident in 23 steps
and was killed by the OOM killer; resumed with a fixed 64 KiB threshold it stayed at 11-13 GB to the end.
A fixed threshold (mallopt(M_MMAP_THRESHOLD), which also turns the dynamic rule off) is what
`MALLOC_MMAP_THRESHOLD_=65536` in the environment does, applied from inside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("reasondiff")

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc's malloc.h)."""


def set_mmap_threshold(n_bytes: int) -> bool:
    """Fix glibc's mmap threshold at `n_bytes` for this process; False (and nothing changed) where the C
    library is not glibc (macOS, musl) or refuses the value."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it: mallopt numbers differ elsewhere
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, int(n_bytes)) == 1
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", n_bytes)
    return ok
