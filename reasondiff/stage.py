"""What every stage app shares: typed config, stable output dir, skip/resume, manifest, signals.

A stage is the package `reasondiff/<stage>/`; its `run.py` holds the recipe `run(cfg, ctx) -> dict`
(the manifest's outputs), found here by the stage's own name. `hydra_app(stage)` wraps it into a
thin Hydra entry point (`<stage>/__main__.py`) and `run_stage` is what the pipeline and the tests
call directly.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import OmegaConf

from reasondiff import artifacts
from reasondiff.config import Config, to_config
from reasondiff.errors import UserError
from reasondiff.tracking import MetricsLogger, init_wandb

log = logging.getLogger("reasondiff")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

@dataclass
class StageContext:
    cfg: Config
    dir: Path
    """The stage's stable artifact directory (exists; may hold a previous partial run to resume)."""
    metrics: MetricsLogger
    wandb_run: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    """Filled by the stage: what it read (paths, hub ids, hashes), recorded in manifest.json."""


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (Slurm preemption, `kill`) takes the same save-and-exit path as Ctrl-C."""

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupts(stop: Any | None = None) -> Iterator[Any]:
    """Ctrl-C / SIGTERM inside a training loop only set `stop.requested`: the loop finishes its
    step (never a half-applied optimizer update), saves a checkpoint and stops; a second signal
    interrupts at once. `stop` is any object with a `requested` attribute (a trl callback, say).

    Not in distributed runs: ranks could see the signal at different steps and hang in a collective.
    """
    stop = stop if stop is not None else SimpleNamespace(requested=False)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield stop
        return

    def _request(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt(f"signal {signum}")
        stop.requested = True
        log.warning("signal %d: finishing this step and saving a checkpoint (again to abort now)", signum)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _request)
    except ValueError:  # not the main thread: interrupts arrive as exceptions instead
        pass
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def models_needed(cfg: Config, stage: str) -> dict[str, str]:
    """config key -> model path for the models `stage` will load (checked before any work)."""
    needed = {}
    uses_base = stage in ("finetune", "harvest", "analyze") or (stage == "train" and cfg.train.data == "live")
    uses_tuned = stage in ("harvest", "analyze") or (stage == "train" and cfg.train.data == "live")
    if stage == "bench":
        uses_base, uses_tuned = "base" in cfg.bench.models, "tuned" in cfg.bench.models
    if uses_base and not cfg.model.build_tiny:
        needed["model.path"] = cfg.model.path
    if uses_tuned:
        needed["tuned_model"] = cfg.tuned_model
    return needed


def preflight(cfg: Config, stage: str) -> None:
    from reasondiff.models import check_local_path

    for key, path in models_needed(cfg, stage).items():
        if key == "tuned_model" and path == str(cfg.stage_dir("finetune") / "model") and not artifacts.is_complete(cfg.stage_dir("finetune")):
            raise UserError(f"tuned_model={path}: the finetune stage has not finished; run it first "
                            "(python -m reasondiff.finetune ...) or set tuned_model=<hub id or local dir>")
        check_local_path(path, key)


def stage_function(stage: str) -> Callable[[Config, StageContext], dict[str, Any]]:
    """`reasondiff.<stage>.run.run`, imported only now so `--cfg job` and --help stay instant."""
    return importlib.import_module(f"reasondiff.{stage}.run").run


def is_main_process() -> bool:
    """torchrun / accelerate set RANK; only rank 0 owns the stage directory's bookkeeping."""
    return int(os.environ.get("RANK", "0")) == 0


def run_stage(cfg: Config, stage: str | None = None,
              func: Callable[[Config, StageContext], dict[str, Any]] | None = None) -> Path:
    """Run one stage into its stable directory, or skip it when already complete."""
    stage = stage or cfg.stage
    out_dir = cfg.stage_dir(stage)
    main = is_main_process()
    if artifacts.is_complete(out_dir) and not cfg.overwrite:
        log.info("%s: already complete in %s (overwrite=true redoes it)", stage, out_dir)
        return out_dir
    preflight(cfg, stage)
    if cfg.overwrite and out_dir.exists() and main:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.hardware.cpu_threads:
        import torch

        torch.set_num_threads(cfg.hardware.cpu_threads)
    if cfg.model.build_tiny and not (stage == "train" and cfg.train.data == "synthetic"):
        from reasondiff.tiny import ensure_tiny_world

        ensure_tiny_world(cfg.model.path, seed=cfg.seed)
    if main:
        artifacts.write_text(out_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    seed_everything(cfg.seed)
    func = func or stage_function(stage)
    run = None if not main else init_wandb(cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                     group=cfg.wandb.group or cfg.exp_name, name=f"{cfg.exp_name}-{stage}",
                     config=asdict(cfg), directory=out_dir)
    ctx = StageContext(cfg=cfg, dir=out_dir, metrics=MetricsLogger(out_dir, run=run), wandb_run=run)
    start = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            outputs = func(cfg, ctx) or {}
        if not main:
            return out_dir
        manifest = artifacts.build_manifest(stage, inputs=ctx.inputs, outputs=outputs, seed=cfg.seed,
                                            wall_seconds=time.perf_counter() - start)
        artifacts.write_json(out_dir / artifacts.MANIFEST, manifest)
        artifacts.mark_complete(out_dir)
        log.info("%s: done in %.1fs -> %s", stage, time.perf_counter() - start, out_dir)
    finally:
        if run is not None:
            run.finish()
    return out_dir


def _apply_hydra_runtime(cfg: Config) -> Config:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and not cfg.stage_subdir:
            cfg.stage_subdir = hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"
    return cfg


def main_for(cfg_node, body: Callable[[Config], Any] | None = None) -> None:
    """Body of every Hydra app: validate, run `body(cfg)` (default: this run's stage), and turn
    user errors into one line + exit 2."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        cfg = _apply_hydra_runtime(to_config(cfg_node))
        (body or run_stage)(cfg)
    except (UserError, ValueError) as err:
        log.error("%s", err)
        if multirun:  # one bad job must not stop the sweep
            return
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        log.warning("interrupted: partial work is saved; re-run the same command to resume")
        sys.exit(130)
    except Exception:
        if multirun:
            log.exception("job failed; the sweep continues")
            return
        raise


def hydra_app(config_name: str, body: Callable[[Config], Any] | None = None) -> Callable[[], None]:
    """The `main` of an app: conf/<config_name>.yaml composed by Hydra, then `main_for(cfg, body)`."""
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _main(cfg_node) -> None:
        main_for(cfg_node, body)

    return _main
