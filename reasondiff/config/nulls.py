"""Schema of the null pairs (`+null=base_vs_base`, `+null=control`; docs/null.md).

A null pair is a whole harvest -> train -> analyze run beside the main one (`<stage>@<pair>/`) whose
"tuned" model is not the reasoning fine-tune: the base model itself (base_vs_base) or the base
fine-tuned with the same recipe on non-reasoning chat data (control). What a crosscoder reports as
model-specific for a null pair is a false discovery; analyze sets the reasoning pair's counts beside
them. The section is outside every fingerprint (like `sweeps`): a null pair changes its results only
through keys that are fingerprinted (`tuned_model`, `finetune.dataset`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

NULL_PAIRS = ("base_vs_base", "control")


@dataclass
class NullConfig:
    pair: str = ""
    """Set by `+null=NAME` (conf/null/): base_vs_base | control; empty for the reasoning pair."""
    control_dataset: str = "${output_root}/_tiny/data/control.jsonl"
    """The control fine-tune's data: non-reasoning chat rows in the s1K-1.1 columns with an empty
    thinking, as many as the reasoning fine-tune's (the tiny world writes its own; docs/null.md
    says what to use for a real model)."""

    def __post_init__(self) -> None:
        if self.pair and self.pair not in NULL_PAIRS:
            raise ValueError(f"nulls.pair={self.pair!r} is not one of {', '.join(NULL_PAIRS)}")
