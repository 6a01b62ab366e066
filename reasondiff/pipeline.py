"""`python -m reasondiff.pipeline +exp=NAME`: the stages in order (config.STAGES).

Before any work the pipeline plans every stage (reasondiff.app.stage.decide): a finished stage with the
same settings and inputs is skipped; one whose input stage will be redone is stale and redone; a
partial one is resumed; a finished or partial one made with other settings stops the pipeline, with
every such stage and key named at once, and so does an input that read an input redone since (a
harvest of an older fine-tune). Then the inputs of all the stages that will run are checked
together (a missing model or data file is reported before hours of earlier stages). It ends by
printing the path of report.md.

Which stages: `pipeline.stages=[...]`, else every stage — without finetune when `tuned_model` names a
model other than this experiment's fine-tune (diffing an existing pair). A named run (`run=NAME`)
reuses every stage whose settings and inputs match the main run's; the name applies from the first
stage that differs, and to every stage that reads it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from reasondiff.app import preflight
from reasondiff.app.commands import user_command
from reasondiff.app.stage import Decision, decide, execute, follow_runs, hydra_app
from reasondiff.config import STAGES, Config
from reasondiff.core import distributed, fingerprint
from reasondiff.core.errors import UserError
from reasondiff.core.fingerprint import SettingsChanged, as_override, describe_changes, suggested_run
from reasondiff.core.runs import dir_name, split_dir_name
from reasondiff.tiny import prepare_tiny_world

log = logging.getLogger("reasondiff")


def selected_stages(cfg: Config, stages: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], str]:
    """(the stages to run in the pipeline's order, a note on a stage left out or "")."""
    chosen = stages or tuple(cfg.pipeline.stages)
    given = preflight.tuned_model_given(cfg)
    if chosen:
        if "finetune" in chosen and given:
            raise UserError(f"pipeline.stages includes finetune, but {preflight.nothing_to_finetune(cfg)}")
        return tuple(s for s in STAGES if s in chosen), ""
    if given:
        return tuple(s for s in STAGES if s != "finetune"), \
            f"finetune not run: tuned_model={cfg.tuned_model} is given (not this experiment's fine-tune)"
    return STAGES, ""


def _stage_config(cfg: Config, stage: str, planned: dict[Path, Path]) -> Config:
    """The config `stage` runs with; a named fine-tune the plan will make is the tuned model."""
    stage_cfg = dataclasses.replace(cfg, stage=stage)
    main_model = cfg.exp_dir / "finetune" / "model"
    named = planned.get(main_model.parent.absolute())
    if named is not None and Path(cfg.tuned_model).absolute() == main_model.absolute():
        return dataclasses.replace(stage_cfg, tuned_model=str(named / "model"))
    return follow_runs(stage_cfg)


def _main_dir(cfg: Config, stage: str) -> Path:
    return dataclasses.replace(cfg, stage=stage, run="").stage_dir(stage)


def _decide(cfg: Config, stage_cfg: Config, stage: str, pending: set[Path], planned: dict[Path, Path]) -> Decision:
    """decide() for one stage of the plan. A named run reuses the main run of a stage whose
    fingerprint (settings and inputs as the named run would read them) matches it."""
    directory = stage_cfg.stage_dir(stage)
    if cfg.run and not cfg.overwrite and not directory.is_dir():
        main = dataclasses.replace(stage_cfg, run="")
        same_reads = [preflight.relative_name(cfg, d) for d in preflight.upstream_dirs(main, stage)] == \
            [preflight.relative_name(cfg, planned.get(d.absolute(), d)) for d in preflight.upstream_dirs(stage_cfg, stage)]
        if same_reads:
            try:
                reused = decide(main, stage, pending=pending)
            except UserError:  # other settings, or a stale input: not reusable (the named run says why)
                reused = None
            if reused is not None and reused.action == "skip":
                return dataclasses.replace(reused, directory=main.stage_dir(stage),
                                           reason="the main run: same settings and inputs")
    decision = decide(stage_cfg, stage, pending=pending, planned=planned)
    return dataclasses.replace(decision, directory=directory)


def _readers(configs: dict[str, Config], stages: tuple[str, ...], changed: set[str]) -> list[str]:
    """`changed` and every stage of `stages` that reads one of them, directly or further down."""
    affected = set(changed)
    for stage in stages:
        if stage in affected:
            continue
        reads = {split_dir_name(d.name)[0] for d in preflight.upstream_dirs(configs[stage], stage)}
        if reads & affected:
            affected.add(stage)
    return [s for s in stages if s in affected]


def _redone_alone(cfg: Config, directory: Path) -> bool:
    """Whether a finished stage was redone after a stage that read it (its readers hold an older id)."""
    found = fingerprint.artifact_id(directory)
    name = preflight.relative_name(cfg, directory)
    for reader in cfg.exp_dir.iterdir() if cfg.exp_dir.is_dir() else ():
        record = fingerprint.recorded(reader)
        if record is not None and name in record.upstream and record.upstream[name] != found:
            return True
    return False


def refusal_message(cfg: Config, refused: list[SettingsChanged], others: list[str],
                    configs: dict[str, Config], stages: tuple[str, ...]) -> str:
    """One line: every stage that would refuse, then the commands that do what the user most likely
    wants — keep a stage redone alone (pass its settings again), or a separate run of the changed
    stages and their readers beside the main run, or a redo in place."""
    parts = [f"{e.stage}: {'finished' if e.finished else 'a partial run'} with "
             f"{describe_changes(e.changes)[0]}; you asked {describe_changes(e.changes)[1]} ({e.directory})"
             for e in refused] + others
    if not refused:
        return "pipeline: nothing was run: " + " | ".join(parts)
    changes = [c for e in refused for c in e.changes]
    keep = ("to keep what is there, pass the same "
            + " ".join(as_override(k, old, cfg.output_root) for k, old, _ in changes) + " to the pipeline")
    name = suggested_run(refused[0].stage, changes)
    new = [as_override(k, value, cfg.output_root) for k, _, value in changes]
    affected = _readers(configs, stages, {e.stage for e in refused})
    if len(affected) <= 3:
        apps = " && ".join(user_command(s, cfg, *new, f"run={name}", drop=("overwrite", "run", "pipeline."))
                           for s in affected)
        separate = (f"for a separate run beside it: {apps} (or the pipeline with run={name}: it reuses every "
                    "stage whose settings did not change)")
    else:
        separate = (f"for a separate run beside it: {user_command('pipeline', cfg, *new, f'run={name}')} (it "
                    f"reuses every stage whose settings did not change)")
    in_place = (f"overwrite=true on {refused[0].stage} alone redoes it in place and the pipeline then redoes "
                "only what reads it (pipeline overwrite=true redoes every stage)")
    options = [keep, separate, in_place]
    if not any(_redone_alone(cfg, e.directory) for e in refused):
        options = [separate, keep, in_place]  # a changed key: most likely a new run; else a stage redone alone
    return "pipeline: nothing was run: " + " | ".join(parts) + " — " + "; ".join(options)


def plan(cfg: Config, stages: tuple[str, ...] | None = None) -> list[tuple[str, Decision]]:
    """What each stage will do and where (`Decision.directory`), decided before any of them runs;
    raises one UserError naming every stage that would refuse (settings changed, a stale input)
    and every input that is missing."""
    stages, _ = selected_stages(cfg, stages)
    pending: set[Path] = set()
    planned_runs: dict[Path, Path] = {}
    """{main run's dir: named run's dir} for named runs this plan creates (not on disk yet)."""
    planned, refused, others = [], [], []
    configs: dict[str, Config] = {}
    for stage in stages:
        stage_cfg = configs[stage] = _stage_config(cfg, stage, planned_runs)
        try:
            decision = _decide(cfg, stage_cfg, stage, pending, planned_runs)
        except SettingsChanged as err:
            refused.append(err)
            continue
        except UserError as err:
            others.append(str(err).removesuffix(" (nothing was run)"))
            continue
        assert decision.directory is not None
        if decision.action != "skip":
            pending.add(decision.directory.absolute())
        main = _main_dir(cfg, stage)
        if decision.directory.absolute() != main.absolute() and not decision.directory.is_dir():
            planned_runs[main.absolute()] = decision.directory
        planned.append((stage, decision))
    if refused or others:
        raise UserError(refusal_message(cfg, refused, others, configs, stages))
    working = [(configs[s], s) for s, d in planned if d.action != "skip"]
    if working:
        if distributed.is_main_process():  # under torchrun one rank builds the tiny world
            prepare_tiny_world(*working[0])
        distributed.barrier()
        preflight.check(working, produced=pending | set(planned_runs))
    return planned


def describe(cfg: Config, planned: list[tuple[str, Decision]], note: str = "") -> str:
    """The plan as printed: each stage, what it does, and where."""
    steps = [f"{s} {d.action} {preflight.relative_name(cfg, d.directory) if d.directory else ''}".rstrip()
             + (f" ({d.reason})" if d.reason else "") for s, d in planned]
    return ", ".join(([note] if note else []) + steps)


def run_pipeline(cfg: Config, stages: tuple[str, ...] | None = None) -> Path | None:
    distributed.init()  # torchrun: every stage below runs on every rank (docs/distributed.md)
    _, note = selected_stages(cfg, stages)
    planned = plan(cfg, stages)
    log.info("pipeline: %s", describe(cfg, planned, note))
    for stage, decision in planned:
        log.info("pipeline: %s", stage)
        main = decision.directory is not None and decision.directory.absolute() == _main_dir(cfg, stage).absolute()
        execute(dataclasses.replace(cfg, stage=stage, run="" if main else cfg.run), stage, prepare=prepare_tiny_world)
    analyzed = dict(planned).get("analyze")
    report = (analyzed.directory if analyzed is not None and analyzed.directory is not None
              else cfg.exp_dir / dir_name("analyze", cfg.run)) / "report.md"
    if analyzed is not None and report.is_file():
        log.info("pipeline: report in %s", report)
        print(f"report: {report}")
        return report
    return None


def run_stage(cfg: Config, stage: str | None = None, func=None) -> Path:
    """One stage as its app runs it (the tiny world built first where `model.build_tiny` asks): the
    public `reasondiff.run_stage`."""
    return execute(cfg, stage, func, prepare=prepare_tiny_world).directory


main = hydra_app("pipeline", body=run_pipeline)

if __name__ == "__main__":
    main()
