"""glibc's mmap threshold (reasondiff/core/memory.py): large blocks must go to mmap (and back to the system)."""

import subprocess
import sys
import textwrap

import pytest

from reasondiff.config import HardwareConfig

PROBE = textwrap.dedent("""
    import ctypes, sys
    from reasondiff.core.memory import set_mmap_threshold
    libc = ctypes.CDLL("libc.so.6")
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    if sys.argv[1] == "fixed":
        assert set_mmap_threshold(64 * 1024)
    libc.free(libc.malloc(16 << 20))  # glibc's dynamic rule: freeing it raises the threshold to 16 MiB
    before = libc.mallinfo2().hblks
    block = libc.malloc(1 << 20)      # 1 MiB: from the heap under the raised threshold, mmap'ed under a fixed one
    print(libc.mallinfo2().hblks - before)
    libc.free(block)
""")


def _new_mmapped_blocks(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_threshold_keeps_large_blocks_out_of_the_heap():
    try:
        default = _new_mmapped_blocks("default")
    except subprocess.CalledProcessError as error:  # musl or a glibc without mallinfo2
        pytest.skip(f"not glibc >= 2.33: {error.stderr.strip().splitlines()[-1]}")
    assert default == 0, "glibc's dynamic threshold should have served 1 MiB from the heap"
    assert _new_mmapped_blocks("fixed") == 1


def test_threshold_config_is_checked():
    assert HardwareConfig(malloc_mmap_threshold_kb=None).malloc_mmap_threshold_kb is None
    with pytest.raises(ValueError, match="malloc_mmap_threshold_kb"):
        HardwareConfig(malloc_mmap_threshold_kb=0)
