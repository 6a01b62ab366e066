"""`python -m reasondiff.pipeline`: which stages it runs (each stage's own keys are in its section)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=list)
    """Stages to run, like [harvest,train,analyze]; empty runs every stage (finetune left out when
    tuned_model names a model other than this experiment's fine-tune). They run in the pipeline's
    order whatever the order given; the stages left out are read where they are."""
