"""What every stage app shares: typed config, stable output dir, skip/resume, manifest, signals.

A stage is the package `reasondiff/<stage>/`; its `run.py` holds the recipe `run(cfg, ctx) -> dict`
(the manifest's outputs), found here by the stage's own name. `hydra_app(stage)` wraps it into a
thin Hydra entry point (`<stage>/__main__.py`) and `run_stage` is what the pipeline and the tests
call directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from reasondiff.app import commands, preflight
from reasondiff.config import CONF_DIR, Config, to_config, upstream_candidates
from reasondiff.core import artifacts, distributed, fingerprint, input_files, memory, progress, runs
from reasondiff.core.errors import UserError
from reasondiff.core.fingerprint import Fingerprint
from reasondiff.core.locking import StageLock
from reasondiff.core.tracking import MetricsLogger, finish_wandb, init_wandb

log = logging.getLogger("reasondiff")


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


def stage_function(stage: str) -> Callable[[Config, StageContext], dict[str, Any]]:
    """`reasondiff.<stage>.run.run`, imported only now so `--cfg job` and --help stay instant."""
    return importlib.import_module(f"reasondiff.{stage}.run").run


def is_main_process() -> bool:
    """torchrun / accelerate set RANK; only rank 0 owns the stage directory's bookkeeping."""
    return distributed.is_main_process()


# --- skip, resume, refuse or redo ------------------------------------------------------------------
@dataclass
class Decision:
    action: str
    """run (nothing there yet) | resume (partial work, same settings) | skip (finished, same settings
    and inputs) | redo (overwrite=true, or stale: an input was redone since)."""
    fingerprint: Fingerprint
    reason: str = ""
    directory: Path | None = None
    """Where the stage reads or writes (set by the pipeline's plan: a named run may reuse the main run)."""


BOOKKEEPING = {".hydra", fingerprint.FINGERPRINT_FILE, "metrics.csv", "wandb", artifacts.MANIFEST, artifacts.COMPLETED}
"""What run_stage itself writes into a stage directory: a directory holding nothing else holds no work."""


def holds_work(directory: Path, stage: str | None = None) -> bool:
    """Whether a stage directory holds work worth resuming: anything beyond the bookkeeping and the
    files the stage declares cheap to write again (`PREPARED_FILES` in its run.py, e.g. train's
    synthetic ground truth, written before the first step)."""
    if not directory.is_dir():
        return False
    prepared: tuple[str, ...] = ()
    if stage is not None:
        with contextlib.suppress(ImportError):
            prepared = tuple(getattr(importlib.import_module(f"reasondiff.{stage}.run"), "PREPARED_FILES", ()))
    return any(p.name not in BOOKKEEPING and p.name not in prepared for p in directory.iterdir())


def follow_runs(cfg: Config) -> Config:
    """A named run reads the finetune run of its own name when there is one (tuned_model's default
    points at the main run)."""
    if cfg.run and Path(cfg.tuned_model) == cfg.exp_dir / "finetune" / "model":
        for run in upstream_candidates(cfg.run):  # `a+seed=1` reads finetune@a+seed=1, else finetune@a
            sibling = cfg.exp_dir / runs.dir_name("finetune", run)
            if sibling.is_dir():
                return dataclasses.replace(cfg, tuned_model=str(sibling / "model"))
    return cfg


def current_fingerprint(cfg: Config, stage: str, reads: list[Path] | None = None) -> Fingerprint:
    """This run's settings and the artifact ids of the finished stage directories it reads
    (`reads`: those directories, when the caller resolved them itself)."""
    reads = preflight.upstream_dirs(cfg, stage) if reads is None else reads
    finished = {d: found for d in reads if (found := fingerprint.artifact_id(d)) is not None}
    settings = fingerprint.settings(cfg, stage)
    if distributed.world_size() > 1 and _world_size_matters(stage):
        settings["world_size"] = distributed.world_size()
    return Fingerprint(settings=settings,
                       upstream={preflight.relative_name(cfg, d): found for d, found in finished.items()},
                       lineage=preflight.lineage(cfg, list(finished)))


def input_identities(cfg: Config, stage: str, known: dict[str, dict] | None = None) -> dict[str, dict]:
    """What each local data file `stage` reads holds now (Fingerprint.input_files); `known`: a
    recorded one, whose files of unchanged size and mtime are not read again."""
    out = {}
    for key, (path, files) in preflight.local_data(cfg, stage).items():
        before = (known or {}).get(key, {})
        recorded_as = fingerprint.portable(path, cfg.output_root)
        known_files = before.get("files") if before.get("path") == recorded_as else None
        out[key] = {"path": recorded_as, "files": input_files.identify(files, known_files)}
    return out


def changed_input(cfg: Config, stage: str, recorded: dict[str, dict]) -> str | None:
    """`key=path changed (what changed)` for the first local data source whose files no longer hold
    what a run recorded; None when all do. A source gone since (preflight reports it when it is needed)
    or read from another path now (a setting a partial run tolerates) is not compared."""
    if not recorded:
        return None  # a run recorded before input_files existed: resumed as before
    now = input_identities(cfg, stage, recorded)
    for key, before in sorted(recorded.items()):
        after = now.get(key)
        if after is None or after["path"] != before.get("path"):
            continue
        path = fingerprint.unportable(before["path"], cfg.output_root)
        what = input_files.difference(path, before.get("files", {}), after["files"])
        if what:
            return f"{key}={path} changed ({what})"
    return None


def _world_size_matters(stage: str) -> bool:
    """A stage whose result depends on the number of torchrun ranks says so (`WORLD_SIZE_MATTERS` in
    its run.py: harvest under a token budget); elsewhere a result is the same at any world size and
    so is its fingerprint."""
    with contextlib.suppress(ImportError):
        return bool(getattr(importlib.import_module(f"reasondiff.{stage}.run"), "WORLD_SIZE_MATTERS", False))
    return False


def decide(cfg: Config, stage: str, *, pending: set[Path] | frozenset = frozenset(),
           planned: dict[Path, Path] | None = None) -> Decision:
    """Compare this run's fingerprint with the one recorded in the stage directory. Raises a
    one-line UserError naming every changed key when the settings differ, or naming the first
    stale stage up the chain when an input read an input redone since. `pending`: upstream
    directories that will be (re)done before this stage runs (the pipeline's plan); `planned`:
    directories the stage will read instead of the ones resolved today (a named run the plan
    will create: {main run's dir: named run's dir})."""
    out_dir = cfg.stage_dir(stage)
    planned = {Path(k).absolute(): Path(v) for k, v in (planned or {}).items()}
    reads = [planned.get(d.absolute(), d) for d in preflight.upstream_dirs(cfg, stage)]
    current = current_fingerprint(cfg, stage, reads)
    check_chain(cfg, stage, reads, pending)
    if cfg.overwrite:
        return Decision("redo", current, "overwrite=true")
    old = fingerprint.recorded(out_dir)
    finished = artifacts.is_complete(out_dir)
    if not finished and not holds_work(out_dir, stage):
        return Decision("run", current)
    if old is None:
        log.warning("%s: %s was made by an older reasondiff without a fingerprint: %s without checking its settings",
                    stage, out_dir, "keeping it" if finished else "resuming it")
        return Decision("skip" if finished else "resume", current)
    defaults = fingerprint.flatten(Config())
    tolerate = () if finished else fingerprint.RESUME_TOLERANT.get(stage, ())
    changes = fingerprint.changed_keys(old.settings, current.settings, defaults=defaults, tolerate=tolerate)
    if changes:
        raise fingerprint.refusal(stage, out_dir, changes, finished=finished)
    names = [preflight.relative_name(cfg, d) for d in reads]
    replaced = sibling_replacements(list(old.upstream), names)
    if replaced:
        before, after = replaced[0]
        raise UserError(f"{stage}: {out_dir} was made from {before}; this run reads {after} instead (a run of that "
                        f"name made since) — overwrite=true redoes it on {after}, or another run= name keeps both")
    pending_names = {preflight.relative_name(cfg, p) for p in pending}
    stale = [name for name in sorted(set(old.upstream) | set(current.upstream))
             if old.upstream.get(name) != current.upstream.get(name) or name in pending_names]
    stale += [n for n in names if n in pending_names and n not in stale]
    if stale:
        return Decision("redo", current, f"stale: {', '.join(stale)} {'was' if len(stale) == 1 else 'were'} redone "
                                         f"since this {'result' if finished else 'partial run'} read "
                                         f"{'it' if len(stale) == 1 else 'them'}")
    rewritten = changed_input(cfg, stage, old.input_files)
    if rewritten:
        raise UserError(f"{stage}: {rewritten} since this {'result was made from it' if finished else 'partial run started'}"
                        f" ({out_dir}) — restore the file to {'keep the result' if finished else 'resume it'}, or "
                        f"overwrite=true {'redoes it' if finished else 'starts it over'} on the file as it is now")
    return Decision("skip" if finished else "resume", current)


def sibling_replacements(recorded: list[str], reads: list[str]) -> list[tuple[str, str]]:
    """(what a result read, what this run reads in its place) for each input now read from another
    run of the same stage (`harvest` -> `harvest@x`): a changed input, not a redone one, so never
    called stale."""
    out = []
    for before in recorded:
        if before in reads:
            continue
        parent, stage = str(Path(before).parent), runs.split_dir_name(Path(before).name)[0]
        for after in reads:
            if after not in recorded and str(Path(after).parent) == parent \
                    and runs.split_dir_name(Path(after).name)[0] == stage:
                out.append((before, after))
    return out


def check_chain(cfg: Config, stage: str, reads: list[Path], pending: set[Path] | frozenset = frozenset()) -> None:
    """Refuse, in one line, to read an input that itself read an input redone since (a harvest
    of the old fine-tune, a crosscoder of the old harvest): name the first stale stage and the
    command that redoes the chain."""
    links = preflight.stale_links(cfg, reads, pending=pending)
    if not links:
        return
    link = links[0]
    pending_abs = {Path(p).absolute() for p in pending}
    reader, redone = preflight.relative_name(cfg, link.reader), preflight.relative_name(cfg, link.redone)
    when = "is redone before it in this run" if link.redone.absolute() in pending_abs else \
        "was redone after it was read"
    reader_stage = runs.split_dir_name(link.reader.name)[0]
    raise UserError(f"{stage}: {reader} is stale: {redone} {when} — {redo_chain_command(cfg, link.redone)} "
                    f"redoes the chain from {reader_stage} (nothing was run)")


def redo_chain_command(cfg: Config, redone: Path) -> str:
    """The pipeline command that keeps the redone stage and redoes what read it: this run's
    overrides plus the redone stage's own settings where they differ from this run's (the
    finetune redone alone with `finetune.learning_rate=1e-3` needs it again on the pipeline)."""
    from reasondiff.config import STAGES

    redone_stage = runs.split_dir_name(redone.name)[0]
    extra: list[str] = []
    record = fingerprint.recorded(redone)
    if record is not None and redone_stage in STAGES and \
            redone.absolute() == cfg.stage_dir(redone_stage).absolute():
        today = fingerprint.settings(cfg, redone_stage)
        extra = [fingerprint.as_override(key, value, cfg.output_root) for key, value in sorted(record.settings.items())
                 if key in today and today[key] != value]
    return commands.user_command("pipeline", cfg, *extra, drop=("overwrite", "pipeline.stages"))


def verify_finished(cfg: Config, stage: str, directory: Path) -> str | None:
    """A stage may check its finished output on the skip path (`verify_finished(cfg, dir)` in its
    run.py, e.g. harvest's shard checksums); a problem reopens the stage, whose resume repairs it."""
    check = getattr(importlib.import_module(f"reasondiff.{stage}.run"), "verify_finished", None)
    return check(cfg, directory) if check is not None else None


# --- running -----------------------------------------------------------------------------------------
Prepare = Callable[[Config, str], None]
"""Work handed in by an app to run before a stage's input checks (the tiny world's builder,
reasondiff.tiny.prepare_tiny_world): the stage contract itself imports no stage package."""


def preflight_stage(cfg: Config, stage: str, prepare: Prepare | None = None) -> None:
    if prepare is not None:
        prepare(cfg, stage)
    preflight.check([(cfg, stage)])


def disk_error(err: BaseException, cfg: Config, stage: str, directory: Path) -> UserError | None:
    """A write that hit a full or read-only filesystem, as one line (the work saved so far is kept)."""
    kind = artifacts.disk_error_kind(err)
    if kind is None:
        return None
    where = artifacts.existing_ancestor(directory)
    if kind == "read-only":
        return UserError(f"read-only filesystem at {where}: {stage} cannot write its outputs; set output_root "
                         "to a writable directory")
    need = preflight.disk_needed(cfg, stage)
    free = artifacts.human_bytes(artifacts.free_bytes(directory))
    needed = f"{need[1]} needs about {artifacts.human_bytes(need[0])}" if need else "more space needed"
    return UserError(f"disk full at {where}: {needed}, {free} free; the work saved so far is kept — free "
                     "space and re-run the same command to resume")


@dataclass
class Outcome:
    directory: Path
    status: str
    """done | skipped"""


def run_stage(cfg: Config, stage: str | None = None,
              func: Callable[[Config, StageContext], dict[str, Any]] | None = None,
              prepare: Prepare | None = None) -> Path:
    """Run one stage into its stable directory, or skip it when finished with the same settings."""
    return execute(cfg, stage, func, prepare).directory


def execute(cfg: Config, stage: str | None = None,
            func: Callable[[Config, StageContext], dict[str, Any]] | None = None,
            prepare: Prepare | None = None) -> Outcome:
    """Under torchrun every rank calls this: rank 0 takes the stage's lock and does the bookkeeping
    (decide, preflight, fingerprint, and once every rank has finished its part, the manifest and
    COMPLETED); the other ranks wait for its decision and run the stage on their share."""
    stage = stage or cfg.stage
    cfg = follow_runs(cfg)
    if stage == "finetune" and preflight.tuned_model_given(cfg):
        raise UserError(preflight.nothing_to_finetune(cfg))
    out_dir = cfg.stage_dir(stage)
    distributed.init()
    main = is_main_process()
    try:
        with StageLock(out_dir, wait=cfg.wait_for_lock) if main else contextlib.nullcontext():
            return _execute_locked(cfg, stage, func, out_dir, main, prepare)
    except Exception as err:
        converted = disk_error(err, cfg, stage, out_dir)
        if converted is not None:
            raise converted from err
        raise


def _open_stage_dir(cfg: Config, stage: str, out_dir: Path, prepare: Prepare | None) -> Decision:
    """Rank 0's part before any work: skip / resume / redo, the input checks, the fingerprint."""
    decision = decide(cfg, stage)
    recorded = fingerprint.recorded(out_dir)
    if decision.action == "skip":
        problem = verify_finished(cfg, stage, out_dir)
        if problem is None:
            log.info("%s: already complete in %s with the same settings (overwrite=true redoes it)", stage, out_dir)
            return decision
        log.warning("%s: %s; reopening it to repair it", stage, problem)
        decision = Decision("resume", decision.fingerprint, problem)
        artifacts.clear_complete(out_dir)
    elif decision.action == "redo" and decision.reason != "overwrite=true":
        log.warning("%s: %s: redoing %s", stage, decision.reason, out_dir)
    elif decision.action == "resume":
        log.info("%s: resuming the partial run in %s (same settings)", stage, out_dir)
    preflight_stage(cfg, stage, prepare)
    # after the checks (and the tiny world's data written); a run recorded before input_files existed
    # gets them now, at its resume
    identities = input_identities(cfg, stage, recorded.input_files if recorded else None)
    decision = dataclasses.replace(decision, fingerprint=dataclasses.replace(decision.fingerprint, input_files=identities))
    if decision.action == "redo" and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = cfg.run_of(stage)
    fingerprint.write(out_dir, stage, decision.fingerprint, name)
    artifacts.write_text(out_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    if name:
        runs.record_run(cfg.exp_dir, out_dir.name, {"stage": stage, "run": name, "overrides": list(commands.RUN_OVERRIDES)})
    return decision


def _agreed_decision(cfg: Config, stage: str, out_dir: Path, main: bool, prepare: Prepare | None) -> Decision:
    """Rank 0's decision on every rank; a refusal on rank 0 (a UserError) ends every rank with it."""
    if not distributed.is_distributed():
        return _open_stage_dir(cfg, stage, out_dir, prepare)
    decision, error = None, None
    if main:
        try:
            decision = _open_stage_dir(cfg, stage, out_dir, prepare)
        except UserError as err:
            error = str(err)
            distributed.broadcast((None, error))
            raise
        except BaseException:
            distributed.broadcast((None, "rank 0 failed before the stage started (see its log)"))
            raise
    decision, error = distributed.broadcast((decision, error))
    if error is not None:
        raise UserError(error)
    return decision


class _RankMetrics:
    """Ranks other than 0 log nothing: metrics.csv has one writer (rank 0, which logs its own share)."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def truncate(self, last_step: int) -> int:
        return 0


def _execute_locked(cfg: Config, stage: str, func, out_dir: Path, main: bool, prepare: Prepare | None) -> Outcome:
    decision = _agreed_decision(cfg, stage, out_dir, main, prepare)
    if decision.action == "skip":
        return Outcome(out_dir, "skipped")
    if cfg.hardware.cpu_threads:
        import torch

        torch.set_num_threads(cfg.hardware.cpu_threads)
    if cfg.hardware.malloc_mmap_threshold_kb:
        memory.set_mmap_threshold(cfg.hardware.malloc_mmap_threshold_kb * 1024)
    progress.set_log_interval(cfg.hardware.progress_log_seconds)
    name = cfg.run_of(stage)
    seed_everything(cfg.seed)
    func = func or stage_function(stage)
    run = None if not main else init_wandb(cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                     group=cfg.wandb.group or cfg.exp_name, name=f"{cfg.exp_name}-{out_dir.name}",
                     config=asdict(cfg), directory=out_dir)
    metrics = MetricsLogger(out_dir, run=run) if main else _RankMetrics()
    ctx = StageContext(cfg=cfg, dir=out_dir, metrics=metrics, wandb_run=run)
    start = time.perf_counter()
    git = artifacts.git_state() if main else {}  # the code that runs: taken now, not when it ends
    if artifacts.dirty_warning(git, stage):
        log.warning("%s", artifacts.dirty_warning(git, stage))
    try:
        with sigterm_as_interrupt():
            outputs = func(cfg, ctx) or {}
        distributed.barrier()  # every rank finished its part before the stage is marked complete
        if not main:
            distributed.barrier()  # until rank 0 has written COMPLETED
            return Outcome(out_dir, "done")
        record = {"stage": stage, "run": name, "fingerprint": decision.fingerprint.digest,
                  "artifact_id": fingerprint.new_artifact_id(decision.fingerprint)}
        extra = {**record, "settings": decision.fingerprint.settings, "upstream": decision.fingerprint.upstream,
                 "input_files": decision.fingerprint.input_files}
        if distributed.is_distributed():
            extra["world_size"] = distributed.world_size()
        manifest = artifacts.build_manifest(stage, inputs=ctx.inputs, outputs=outputs, seed=cfg.seed,
                                            wall_seconds=time.perf_counter() - start, git=git, extra=extra)
        artifacts.write_json(out_dir / artifacts.MANIFEST, manifest)
        artifacts.mark_complete(out_dir, record)
        distributed.barrier()
        log.info("%s: done in %.1fs -> %s", stage, time.perf_counter() - start, out_dir)
    except Exception:
        if main and not holds_work(out_dir, stage) and artifacts.disk_error_kind(sys.exc_info()[1]) is None:
            shutil.rmtree(out_dir, ignore_errors=True)  # a failed run leaves no directory that looks like a run
            if name:
                runs.forget_run(cfg.exp_dir, out_dir.name)  # nor a name in runs.json
        raise
    finally:
        if run is not None:
            finish_wandb(run)
    return Outcome(out_dir, "done")


def _apply_hydra_runtime(cfg: Config) -> Config:
    """A multirun job is a separate run named after its overrides (`train@l1_coeff=4`), a sibling of
    the main run; the command line's overrides are kept for runs.json."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        commands.RUN_OVERRIDES[:] = overrides
        if hydra_cfg.mode == RunMode.MULTIRUN:
            from reasondiff.app.sweeps import SWEPT_KEYS_ENV, job_run_name

            swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k] or None
            cfg.run = runs.join(cfg.run, job_run_name(cfg.stage, overrides, swept))
    return cfg


def main_for(cfg_node, body: Callable[[Config], Any] | None = None, prepare: Prepare | None = None) -> None:
    """Body of every Hydra app: validate, run `body(cfg)` (default: this run's stage), and turn
    user errors into one line + exit 2. In a multirun, a failing job is logged and recorded for
    the sweep's tally (reasondiff.app.sweeps), and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from reasondiff.app.sweeps import one_line, record_outcome

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    status, error, run_dir = "failed", None, None
    try:
        cfg = _apply_hydra_runtime(to_config(cfg_node))
        run_dir = str(cfg.stage_dir(cfg.stage)) if cfg.stage != "pipeline" else None
        if body is None:
            outcome = execute(cfg, prepare=prepare)
            run_dir, status = str(outcome.directory), "skipped" if outcome.status == "skipped" else "ok"
        else:
            body(cfg)
            status = "ok"
    except (UserError, ValueError) as err:
        error = one_line(err)
        if multirun:  # one bad job must not stop the sweep
            log.error("%s", error)
            return
        _log_to_files(logging.ERROR, error)  # the console gets it once, below (it was printed twice)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        error = "interrupted"
        log.warning("interrupted: partial work is saved; re-run the same command to resume")
        sys.exit(130)
    except Exception as err:
        error = one_line(err)
        if multirun:
            log.exception("job failed; the sweep continues")
            return
        raise
    finally:
        if multirun and is_main_process():  # a job of several ranks has one outcome
            record_outcome(status, run_dir=run_dir, error=error)


def _log_to_files(level: int, message: str) -> None:
    """Log `message` to the run's log files only (Hydra's `<job>.log`), not to the console."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def hydra_app(config_name: str, body: Callable[[Config], Any] | None = None,
              prepare: Prepare | None = None) -> Callable[[], None]:
    """The `main` of an app: conf/<config_name>.yaml composed by Hydra, then `main_for(cfg, body)`.
    Before Hydra parses the command line: our `--help`, the typo check, `run=` quoting (cli.py)."""
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _main(cfg_node) -> None:
        main_for(cfg_node, body, prepare)

    def entry() -> None:
        from reasondiff.app import cli
        argv = sys.argv[1:]
        if cli.help_requested(argv):
            try:
                print(cli.app_help(config_name, [a for a in argv if a not in ("--help", "-h")]))
            except Exception as err:  # a bad override alongside --help
                print(f"error: {cli.one_line_error(err)}", file=sys.stderr)
                sys.exit(2)
            sys.exit(0)
        problem = cli.unknown_key(config_name, argv) or cli.bad_value(config_name, cli.quote_run_values(argv))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        sys.argv[1:] = cli.multirun_first(cli.quote_run_values(argv))
        _main()

    return entry
