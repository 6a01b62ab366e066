"""`python -m reasondiff.pipeline +exp=NAME`: the five stages in order, skipping finished ones."""

from __future__ import annotations

import dataclasses
import logging

from reasondiff.config import STAGES, Config
from reasondiff.stage import hydra_app, run_stage

log = logging.getLogger("reasondiff")


def run_pipeline(cfg: Config, stages: tuple[str, ...] = STAGES) -> None:
    for stage in stages:
        log.info("pipeline: %s", stage)
        run_stage(dataclasses.replace(cfg, stage=stage), stage)


main = hydra_app("pipeline", body=run_pipeline)

if __name__ == "__main__":
    main()
