"""Multirun sweeps that report: grids checked before the first job, a tally and an exit code at the end.

`SweepReport` is a Hydra callback (registered for every app in conf/common.yaml):
- `on_multirun_start` expands the sweep into its jobs (as Hydra's basic sweeper will), composes each
  job's config and checks it against the experiment — a token limit beyond the model's context, a
  hook past its last layer, a missing input — refusing the whole sweep in one line before any job;
- each job records its outcome (ok / failed / skipped, with the one-line error) in its Hydra job
  directory (`record_outcome`, called by the app's main);
- `on_multirun_end` prints the tally and exits non-zero when any job failed or left no outcome.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("reasondiff")

OUTCOME_FILE = "outcome.json"


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return first if not first or type(err).__name__ in ("UserError", "ValueError") else f"{type(err).__name__}: {first}"


def record_outcome(status: str, *, run_dir: str | None = None, error: str | None = None) -> None:
    """Called inside a multirun job: write its outcome into the job's Hydra output directory."""
    from hydra.core.hydra_config import HydraConfig

    from reasondiff.core import artifacts
    hydra_cfg = HydraConfig.get()
    outcome = {"status": status, "run_dir": run_dir, "error": error, "job": int(hydra_cfg.job.num),
               "overrides": list(hydra_cfg.overrides.task)}
    artifacts.write_json(Path(hydra_cfg.runtime.output_dir) / OUTCOME_FILE, outcome)


SWEPT_KEYS_ENV = "REASONDIFF_SWEPT_KEYS"
"""Set at the start of a multirun: the keys it sweeps, which name each job's run (train@l1_coeff=4);
the overrides every job shares (+exp, ARGS) are in the fingerprint, not in the name."""


def _sweep_overrides(config: DictConfig):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    return OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))


def swept_keys(config: DictConfig) -> list[str]:
    return [o.key_or_group for o in _sweep_overrides(config) if o.is_sweep_override()]


def expand_jobs(config: DictConfig) -> list[list[str]] | None:
    """The override list of every job, as Hydra's basic sweeper builds them (None for other sweepers)."""
    target = str(config.hydra.sweeper.get("_target_", ""))
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return [job for batch in BasicSweeper.split_arguments(_sweep_overrides(config), None) for job in batch]


def job_run_name(stage: str, overrides: list[str], swept: list[str] | None) -> str:
    """A job's run name: its values of the swept keys (all its overrides when they are unknown)."""
    from reasondiff.core.runs import name_from_overrides

    if swept:
        overrides = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] in swept]
    return name_from_overrides(stage, overrides)


def grid_problems(config_name: str, jobs: list[list[str]], prepare: Callable[[Any, str], None] | None = None) -> list[str]:
    """What would make jobs fail before doing any work, checked on each job's composed config;
    `prepare(cfg, stage)` first does what the first job would do before its checks (the tiny world)."""
    from hydra import compose

    from reasondiff.app import preflight
    from reasondiff.config import STAGES, to_config
    from reasondiff.core import artifacts, runs

    problems: list[str] = []
    built = False
    swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k] or None
    for job in jobs:
        try:
            cfg = to_config(compose(config_name=config_name, overrides=job))
        except Exception as err:  # a value the schema rejects (ValueError) or Hydra cannot compose
            if one_line(err) not in problems:
                problems.append(one_line(err))
            continue
        cfg.run = runs.join(cfg.run, job_run_name(cfg.stage, job, swept))
        stages = list(STAGES) if cfg.stage == "pipeline" else [cfg.stage]
        if not built and prepare is not None:
            prepare(cfg, stages[0])  # what the first job would do anyway
            built = True
        checks = [(cfg, s) for s in stages if not artifacts.is_complete(cfg.stage_dir(s))]
        if cfg.stage == "pipeline":
            checks = checks[:1]  # later stages read what earlier ones write
        problems += [p for p in preflight.problems(checks, disk=False) if p not in problems]
    return problems


def tally(sweep_dir: Path, expected: int | None) -> tuple[list[dict[str, Any]], int]:
    """The recorded outcomes under `sweep_dir` (by job number) and how many jobs left none."""
    outcomes = []
    for path in sorted(Path(sweep_dir).rglob(OUTCOME_FILE)):
        try:
            outcomes.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    outcomes.sort(key=lambda o: o.get("job", 0))
    missing = max(0, (expected or len(outcomes)) - len(outcomes))
    return outcomes, missing


def format_tally(outcomes: list[dict[str, Any]], missing: int) -> str:
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("ok", "failed", "skipped")}
    failed = counts["failed"] + missing
    lines = [f"sweep: {len(outcomes) + missing} jobs — {counts['ok']} ok, {failed} failed, "
             f"{counts['skipped']} skipped (already complete)"]
    for outcome in outcomes:
        where = Path(outcome["run_dir"]).name if outcome.get("run_dir") else " ".join(outcome.get("overrides", []))
        if outcome["status"] == "failed":
            lines.append(f"  failed  #{outcome.get('job')} {where}: {outcome.get('error')}")
        else:
            lines.append(f"  {outcome['status']:<7} #{outcome.get('job')} {where}")
    if missing:
        lines.append(f"  failed  {missing} job(s) recorded no outcome (killed?)")
    return "\n".join(lines)


class SweepReport(Callback):
    def __init__(self, check_grid: bool = True, prepare: str | None = None) -> None:
        """`prepare`: the dotted name of what a job runs before its checks (conf/common.yaml hands in
        the tiny world's builder, reasondiff.tiny.prepare_tiny_world: the foundation imports no stage)."""
        self.check_grid = check_grid
        self.prepare = prepare
        self.expected: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(config))
        jobs = expand_jobs(config)
        self.expected = len(jobs) if jobs is not None else None
        if not jobs or not self.check_grid:
            return
        config_name = kwargs.get("config_name") or str(config.hydra.job.config_name)
        from reasondiff.core.errors import UserError

        try:
            from hydra.utils import get_method

            problems = grid_problems(config_name, jobs, get_method(self.prepare) if self.prepare else None)
        except (UserError, ValueError) as err:
            problems = [str(err)]
        if problems:
            grids = ", ".join(f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items())
            message = (f"sweep refused before its first job ({len(jobs)} jobs{': ' + grids if grids else ''}): "
                       + " | ".join(problems)
                       + " — change the grid (sweeps.* of the experiment, or the swept keys) to fit the model")
            log.error("%s", message)
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcomes, missing = tally(Path(str(config.hydra.sweep.dir)), self.expected)
        report = format_tally(outcomes, missing)
        failed = missing + sum(o["status"] == "failed" for o in outcomes)
        print(report, file=sys.stderr if failed else sys.stdout)
        if failed:
            sys.exit(1)
