"""Typed configuration for every reasondiff app.

Every app shares one root schema so that `+exp=NAME` (which sets keys of several stages at once)
composes on every app; each app reads its own section. The schema is registered in Hydra's
ConfigStore as `reasondiff_schema`, so a mistyped key or a wrong type fails at composition time,
and `to_config` runs the dataclasses' `__post_init__` checks before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from reasondiff.config.analyze import AnalyzeConfig
from reasondiff.config.bench import BenchConfig, TaskData
from reasondiff.config.common import HardwareConfig, ModelConfig, ReasoningFormat, WandbConfig
from reasondiff.config.finetune import FinetuneConfig, HoldoutConfig
from reasondiff.config.harvest import HarvestConfig
from reasondiff.config.intervene import InterveneConfig
from reasondiff.config.nulls import NullConfig
from reasondiff.config.pipeline import PipelineConfig
from reasondiff.config.scan import ScanConfig
from reasondiff.config.sweeps import SweepGrids
from reasondiff.config.train import SyntheticConfig, TrainConfig
from reasondiff.core.runs import ITEM_SEPARATOR, check_run_name, dir_name, join

STAGES = ("finetune", "bench", "harvest", "scan", "train", "analyze", "intervene")
CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
"""The Hydra config directory of the apps (conf/)."""

__all__ = [
    "AnalyzeConfig", "BenchConfig", "Config", "FinetuneConfig", "HardwareConfig", "HarvestConfig", "HoldoutConfig",
    "InterveneConfig", "ModelConfig", "NullConfig", "PipelineConfig", "ReasoningFormat", "STAGES", "ScanConfig",
    "SweepGrids",
    "SyntheticConfig", "TaskData", "TrainConfig",
    "WandbConfig", "register_configs", "to_config",
]


@dataclass
class Config:
    exp_name: str = "tiny"
    """Artifacts go to <output_root>/<exp_name>/<stage>/ (stable paths, so stages chain)."""
    output_root: str = "outputs"
    """Root of every experiment's artifacts (outputs/ under the working directory)."""
    seed: int = 0
    """Seed of every RNG (recorded in manifest.json)."""
    overwrite: bool = False
    """Redo this run of the stage from scratch, removing only this run's directory (default: skip a
    finished run, resume a partial one, refuse one made with other settings)."""
    run: str = ""
    """Name of a separate run: writes <stage>@<run>/ beside the main run and reads each upstream
    stage's run of the same name when there is one (else its main run). Multirun jobs are named
    after their overrides (train@l1_coeff=4)."""
    wait_for_lock: bool = False
    """When another run holds this stage's directory, wait for it instead of refusing."""
    stage: str = ""
    """Set by each app's primary config; which section this run executes."""
    model: ModelConfig = field(default_factory=ModelConfig)
    tuned_model: str = "${output_root}/${exp_name}/finetune/model"
    """The fine-tuned model: by default the finetune stage's output; any hub id / local dir works."""
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    format: ReasoningFormat = field(default_factory=ReasoningFormat)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    intervene: InterveneConfig = field(default_factory=InterveneConfig)
    sweeps: SweepGrids = field(default_factory=SweepGrids)
    nulls: NullConfig = field(default_factory=NullConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        if self.stage and self.stage not in STAGES + ("pipeline",):
            raise ValueError(f"stage must be one of {STAGES + ('pipeline',)}, got {self.stage!r}")
        if self.nulls.pair and self.run.split(ITEM_SEPARATOR)[0] != self.nulls.pair:
            self.run = join(self.nulls.pair, self.run)  # +null=control: every stage writes <stage>@control
        check_run_name(self.run)
        unknown = [s for s in self.pipeline.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"pipeline.stages: {', '.join(map(repr, unknown))} is not a stage (the stages: "
                             f"{', '.join(STAGES)})")

    @property
    def exp_dir(self) -> Path:
        return Path(self.output_root) / self.exp_name

    def run_of(self, stage: str) -> str:
        """The run of `stage` this config writes (its own stage) or reads (an upstream stage: the
        run named like this one when it exists, else the main run)."""
        # a synthetic validation run must never replace the real crosscoder
        kind = "synthetic" if stage == "train" and self.train.data == "synthetic" else ""
        if stage == self.stage or not self.run:
            return join(kind, self.run) if stage == self.stage else kind
        for run in upstream_candidates(self.run):
            named = join(kind, run)
            if (self.exp_dir / dir_name(stage, named)).is_dir():
                return named
        return kind

    def stage_dir(self, stage: str) -> Path:
        """Stable artifact directory of `stage`: outputs/<exp>/<stage>[@<run>]/ (see `run_of`)."""
        return self.exp_dir / dir_name(stage, self.run_of(stage))


def upstream_candidates(run: str) -> list[str]:
    """The runs an upstream stage is looked up under, longest first: `control+seed=1` reads
    `<stage>@control+seed=1`, else `<stage>@control`, else the main run (a seed sibling of a null
    pair trains on the null pair's store)."""
    items = run.split(ITEM_SEPARATOR) if run else []
    return [ITEM_SEPARATOR.join(items[:n]) for n in range(len(items), 0, -1)]


def register_configs() -> None:
    ConfigStore.instance().store(name="reasondiff_schema", node=Config)


def to_config(cfg: DictConfig | Config) -> Config:
    """Resolve and validate a composed DictConfig into the typed `Config` (runs __post_init__)."""
    if isinstance(cfg, Config):
        return cfg
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config), type(obj)
    return obj


register_configs()
