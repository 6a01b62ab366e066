"""Metrics go to a CSV in the stage directory and, when enabled, to Weights & Biases.

W&B never blocks: `disabled` imports nothing, `offline` needs no account, and `online` without
credentials falls back to `offline` with a warning instead of prompting for a login.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class MetricsLogger:
    """Appends rows to `<dir>/<name>.csv` (columns grow as new keys appear) and mirrors to W&B."""

    def __init__(self, directory: str | os.PathLike, name: str = "metrics", run: Any = None):
        self.path = Path(directory) / f"{name}.csv"
        self.run = run
        self._columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as handle:
                header = next(csv.reader(handle), None)
            self._columns = header or None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {"step": step, **{k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()}}
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._columns is None or any(k not in self._columns for k in row):
            self._rewrite_with_columns(list(dict.fromkeys((self._columns or []) + list(row))))
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._columns).writerow(row)

    def truncate(self, last_step: int) -> int:
        """Drop rows logged after `last_step`: a run killed after its last checkpoint logged steps
        that the resumed run does again (kill -9 leaves no chance to clean up). Returns rows dropped."""
        return truncate_metrics(self.path, last_step)

    def _rewrite_with_columns(self, columns: list[str]) -> None:
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        self._columns = columns


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Keep the rows of a metrics CSV with step <= `last_step` (rows without a step stay)."""
    from reasondiff.core import artifacts
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if r.get("step") in (None, "") or _step(r["step"]) <= last_step]
    if len(kept) == len(rows):
        return 0
    with artifacts.atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(kept)
    log.info("%s: dropped %d rows logged after step %d (redone by this resumed run)", path, len(rows) - len(kept),
             last_step)
    return len(rows) - len(kept)


def _step(value: str) -> float:
    try:
        return float(value)
    except ValueError:  # a torn row: drop it
        return math.inf


def init_wandb(mode: str, *, project: str, entity: str | None, group: str | None, name: str,
               config: dict[str, Any], directory: str | os.PathLike) -> Any:
    """Start a W&B run, or return None when disabled."""
    if mode == "disabled":
        return None
    if mode == "online" and not _wandb_has_credentials():
        log.warning("wandb.mode=online but no W&B credentials found (WANDB_API_KEY or ~/.netrc): logging offline")
        mode = "offline"
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(mode=mode, project=project, entity=entity, group=group, name=name, config=config,
                     dir=str(directory), reinit="finish_previous")
    if mode == "offline":
        log.info("W&B offline run in %s; upload it later with: wandb sync %s", offline_dir(run), offline_dir(run))
    return run


def offline_dir(run: Any) -> str:
    """The directory `wandb sync` takes (the run's files live in <it>/files)."""
    return str(Path(run.dir).parent)


def finish_wandb(run: Any) -> None:
    offline = getattr(getattr(run, "settings", None), "mode", None) == "offline" or \
        getattr(getattr(run, "settings", None), "_offline", False)
    where = offline_dir(run) if offline else None
    run.finish()
    if where:
        log.info("W&B offline run saved in %s: wandb sync %s uploads it", where, where)


def require_finite(name: str, value: float, step: int | None = None) -> None:
    """Raise instead of letting a NaN/Inf loss be filtered out of the logs."""
    if not math.isfinite(value):
        where = f" at step {step}" if step is not None else ""
        raise FloatingPointError(f"{name} is {value}{where}: stopping")
