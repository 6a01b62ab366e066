"""Names of runs: the main run of a stage lives in `outputs/<exp>/<stage>/`, every other run beside it.

A run named R (`run=R`, or a multirun job, named after its overrides) writes to
`outputs/<exp>/<stage>@R/`, a sibling of the main run, never inside it: `overwrite=true` of one run
removes only that run's directory. Names stay readable and safe as directory names — no brackets,
commas, quotes or slashes — and long ones are cut and suffixed with a hash; `outputs/<exp>/runs.json`
maps every name to the overrides that made it.

    train.l1_coeff=4                      -> train@l1_coeff=4          (a stage's own prefix is dropped)
    bench.token_limits=[16,32,64]         -> bench@token_limits=16-32-64
    train.l1_coeff=4 train.lr=1e-3        -> train@l1_coeff=4+lr=0.001 (items joined by +)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

RUN_SEPARATOR = "@"
ITEM_SEPARATOR = "+"
MAX_NAME = 60
RUNS_FILE = "runs.json"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+\-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=\-]")

# Overrides that choose where or how a job runs, not what it computes: never part of a run's name.
NAME_EXCLUDED = ("exp", "pair", "debug", "sweep", "hardware", "overwrite", "output_root", "run", "wait_for_lock",
                 "model.build_tiny", "exp_name", "stage", "null")
NAME_EXCLUDED_PREFIXES = ("hydra.", "hydra/", "wandb.", "sweeps.", "nulls.")


def dir_name(stage: str, run: str) -> str:
    return f"{stage}{RUN_SEPARATOR}{run}" if run else stage


def split_dir_name(name: str) -> tuple[str, str]:
    """`train@l1_coeff=4` -> ("train", "l1_coeff=4"); `train` -> ("train", "")."""
    stage, _, run = name.partition(RUN_SEPARATOR)
    return stage, run


def check_run_name(run: str) -> None:
    if run and (not _VALID.match(run) or len(run) > 2 * MAX_NAME):
        raise ValueError(f"run={run!r}: a run name may hold letters, digits and . _ = + - (at most "
                         f"{2 * MAX_NAME} characters), e.g. run=l1_coeff=4")


def _clean_value(value: str) -> str:
    value = value.strip().strip("'\"")
    value = re.sub(r"[\[\]{}()'\" ]", "", value)
    value = value.replace(",", "-").replace("/", "_").replace(":", "-")
    return _UNSAFE.sub("_", value).strip("_") or "empty"


def _item_name(stage: str, override: str) -> str | None:
    text = override.lstrip("+~")
    key, sep, value = text.partition("=")
    key = key.strip()
    changes_results = key in ("hardware.dtype", "hardware.attn_implementation")
    if not changes_results and (key in NAME_EXCLUDED or key.startswith((*NAME_EXCLUDED_PREFIXES, "hardware."))):
        return None
    if key.startswith(f"{stage}."):
        key = key[len(stage) + 1:]
    return f"{_UNSAFE.sub('_', key)}={_clean_value(value)}" if sep else _UNSAFE.sub("_", key)


def name_from_overrides(stage: str, overrides: Iterable[str]) -> str:
    """A run name from a job's overrides (those that change what is computed), in their given order."""
    items = [item for item in (_item_name(stage, o) for o in overrides) if item]
    name = ITEM_SEPARATOR.join(items)
    return shorten(name, raw=" ".join(overrides))


def shorten(name: str, *, raw: str = "") -> str:
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1((raw or name).encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9].rstrip('+=-_.')}-{digest}"


def join(*parts: str) -> str:
    return ITEM_SEPARATOR.join(p for p in parts if p)


def record_run(exp_dir: str | os.PathLike, name: str, entry: dict) -> None:
    """Add `name -> entry` to `<exp_dir>/runs.json` (read-modify-write under an flock, since
    multirun jobs on a cluster may finish at once)."""
    _update_runs(exp_dir, name, entry)


def forget_run(exp_dir: str | os.PathLike, name: str) -> None:
    """Drop `name` from runs.json: its run failed and left no directory, so no run has that name."""
    if (Path(exp_dir) / RUNS_FILE).is_file():
        _update_runs(exp_dir, name, None)


def _update_runs(exp_dir: str | os.PathLike, name: str, entry: dict | None) -> None:
    from reasondiff.core import artifacts
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / RUNS_FILE
    with open(exp_dir / f".{RUNS_FILE}.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            runs = {}
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                runs = json.loads(path.read_text())
            if entry is None and name in runs:
                del runs[name]
                artifacts.write_json(path, runs)
            elif entry is not None and runs.get(name) != entry:
                runs[name] = entry
                artifacts.write_json(path, runs)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
