"""reasondiff: what reasoning fine-tuning changes inside a language model (see README.md).

The package tree is the pipeline: one package per app (`finetune/ bench/ harvest/ scan/ train/
analyze/`, each run as `python -m reasondiff.<app>`), the crosscoder as a library of its own
(`crosscoder/`), the typed configs (`config/`), and three foundation packages under them, arrows
pointing down only: `app/` (the stage contract, preflight, sweeps, --help) -> `lm/` (models, hook
points, forwards resumed at a hook, data) -> `core/` (files, run dirs, fingerprints, metrics,
figures). The names below are the public API, imported on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A PEP 562 module `__getattr__`: `name` comes from module `where[name]` on first use, so
    importing a package (every `python -m reasondiff.<app> --help`) does not import torch. The
    package also gets the matching module `__dir__`, so `dir(package)` and tab completion list the
    lazy names before their first use."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    module = sys.modules.get(package)
    if module is not None:
        namespace = vars(module)
        namespace.setdefault("__dir__", lambda: sorted(set(namespace) | set(where)))
    return __getattr__


__getattr__ = lazy_exports(__name__, {
    "load_crosscoder": "reasondiff.crosscoder.model",
    "CrossCoder": "reasondiff.crosscoder.model",
    "CrossCoderConfig": "reasondiff.crosscoder.model",
    "verify_crosscoder": "reasondiff.crosscoder.model",
    "to_dictionary_learning": "reasondiff.crosscoder.convert",
    "from_dictionary_learning": "reasondiff.crosscoder.convert",
    "to_kissane": "reasondiff.crosscoder.convert",
    "from_kissane": "reasondiff.crosscoder.convert",
    "grade": "reasondiff.bench.grading",
    "extract_answer": "reasondiff.bench.grading",
    "ActivationStore": "reasondiff.harvest.store",
    "run_stage": "reasondiff.pipeline",
    "Config": "reasondiff.config",
})
__all__ = ["ActivationStore", "Config", "CrossCoder", "CrossCoderConfig", "extract_answer", "from_dictionary_learning",
           "from_kissane", "grade", "lazy_exports", "load_crosscoder", "run_stage", "to_dictionary_learning", "to_kissane",
           "verify_crosscoder"]
