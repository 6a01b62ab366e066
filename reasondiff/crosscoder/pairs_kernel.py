"""The C++/OpenMP kernels of the sparse step (`pairs_kernel.cpp`): built once per machine, cached.

torch's `embedding_bag` reads one whole M·d-float row per active pair, so each of the sparse step's
three products moves B·L0 rows (~1 GB at the paper's shapes) however it is ordered. The kernels here
walk the pairs latent-major over column blocks of the rows: each W row is read once per product
and the [B, block] slice of the token-side operand stays in the L2 cache. They also fuse what
the torch path does as separate passes: the decoder rows' norms into the decoder forward, the
gradient wrt the active latents (the per-sample-weight dots) and the decoder-norm penalty's term
into the decoder-weight gradient, the encoder-bias gradient into the encoder-weight gradient.

The extension is compiled with `torch.utils.cpp_extension.load` (gcc or clang with OpenMP, and
ninja) into torch's extension cache (`$TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions),
under a name that carries a hash of the source, torch's version and the CPU's instruction-set
flags (the build uses -march=native, so a cache shared between different CPUs never loads a foreign
build). `train.sparse_kernel=auto` falls back to the torch path, with one logged warning, when the
build fails (no compiler, no ninja, no OpenMP); `cpp` makes that failure an error.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("pairs_kernel.cpp")
_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def _build_tag() -> str:
    """Hash of what the compiled code depends on: the source, torch, and the CPU's instruction sets."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        flags = ""
    machine = flags or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(f"{SOURCE.read_text()}\n{torch.__version__}\n{machine}".encode()).hexdigest()[:16]


def load() -> ModuleType | None:
    """The compiled kernels, or None when they cannot be built on this machine (the reason is
    logged once, and kept in `failure()`)."""
    global _module, _failure
    if _module is not None or _failure is not None:
        return _module
    with _lock:
        if _module is None and _failure is None:
            try:
                from torch.utils.cpp_extension import load as build

                _module = build(name=f"reasondiff_pairs_{_build_tag()}", sources=[str(SOURCE)],
                                extra_cflags=["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                verbose=False)
            except Exception as err:  # no compiler, no ninja, no OpenMP, a headerless torch: all mean "fall back"
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                _failure = f"{type(err).__name__}: {first}"
                log.warning("train: the sparse step's C++ kernels could not be built (%s); using the torch "
                            "path (same numbers, slower; train.sparse_kernel=torch silences this)", _failure)
    return _module


def failure() -> str | None:
    """Why `load` returned None (None before a failed build)."""
    return _failure


def usable(device: torch.device) -> bool:
    """The kernels are CPU code: on another device the torch path runs."""
    return device.type == "cpu" and load() is not None
