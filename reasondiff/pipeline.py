"""`python -m reasondiff.pipeline +exp=NAME`: the stages in order (config.STAGES).

Before any work the pipeline plans every stage (reasondiff.app.stage.decide): a finished stage with the
same settings and inputs is skipped; one whose input stage will be redone is stale and redone; a
partial one is resumed; a finished or partial one made with other settings stops the pipeline, with
every such stage and key named at once. Then the inputs of all the stages that will run are checked
together (a missing model or data file is reported before hours of earlier stages). It ends by
printing the path of report.md.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from reasondiff.app import preflight
from reasondiff.app.stage import Decision, decide, execute, follow_runs, hydra_app
from reasondiff.config import STAGES, Config
from reasondiff.core import distributed
from reasondiff.core.errors import UserError
from reasondiff.tiny import prepare_tiny_world

log = logging.getLogger("reasondiff")


def plan(cfg: Config, stages: tuple[str, ...] = STAGES) -> list[tuple[str, Decision]]:
    """What each stage will do, decided before any of them runs; raises one UserError naming every
    stage that would refuse (settings changed) and every input that is missing."""
    pending: set[Path] = set()
    planned, refusals = [], []
    for stage in stages:
        stage_cfg = follow_runs(dataclasses.replace(cfg, stage=stage))
        try:
            decision = decide(stage_cfg, stage, pending=pending)
        except UserError as err:
            refusals.append(str(err))
            continue
        if decision.action != "skip":
            pending.add(stage_cfg.stage_dir(stage).absolute())
        planned.append((stage, decision))
    if refusals:
        raise UserError("pipeline: nothing was run: " + " | ".join(refusals)
                        + " (overwrite=true redoes every stage; or redo a stage alone with overwrite=true and the "
                        "pipeline then redoes only the stages after it)")
    working = [(follow_runs(dataclasses.replace(cfg, stage=s)), s) for s, d in planned if d.action != "skip"]
    if working:
        if distributed.is_main_process():  # under torchrun one rank builds the tiny world
            prepare_tiny_world(*working[0])
        distributed.barrier()
        preflight.check(working, produced=pending)
    return planned


def run_pipeline(cfg: Config, stages: tuple[str, ...] = STAGES) -> Path | None:
    distributed.init()  # torchrun: every stage below runs on every rank (docs/distributed.md)
    planned = plan(cfg, stages)
    log.info("pipeline: %s", ", ".join(f"{s} {d.action}" + (f" ({d.reason})" if d.reason and d.action == "redo"
                                                             else "") for s, d in planned))
    for stage, _ in planned:
        log.info("pipeline: %s", stage)
        execute(dataclasses.replace(cfg, stage=stage), stage, prepare=prepare_tiny_world)
    report = dataclasses.replace(cfg, stage="analyze").stage_dir("analyze") / "report.md"
    if "analyze" in stages and report.is_file():
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
