"""Where to put the crosscoder: the layer at which the fine-tune's causal effect first becomes large.

Rule (documented in docs/scan.md): on the chosen text, the recommended hook is the FIRST residual
layer L (0..N) whose patch of the tuned model's residual stream into the base model closes at least
`scan.large_effect` of KL(base || tuned) on the next-token distribution. Patching the whole residual
at L hands the base model everything the tuned model computed before L, so the fraction rises from
about 0 at the embeddings to about 1 at the final residual (exactly 1 when the final norm and
unembedding are unchanged); the first layer past the threshold is the earliest point where most of
the change is already written into the stream, which is what a crosscoder at that hook can see.
The block that adds the most (the largest one-layer rise of the curve) is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from reasondiff.scan.meters import resid_hook_name


@dataclass
class Recommendation:
    hook: str | None
    """TransformerLens hook to harvest at (None: nothing to recommend, see `reason`)."""
    layer: int | None
    """Residual layer index 0..N of `hook`."""
    text: str
    """Which curve was read: general, reasoning or reasoning_answer."""
    direction: str
    threshold: float
    closed: float | None
    """Fraction of the KL that the patch at `layer` closes."""
    largest_step_block: int | None
    """The block whose output raises the fraction the most (layer k+1 minus layer k)."""
    largest_step: float | None
    line: str
    """One sentence for the report and the log."""
    follow_up: list[str]
    """Commands that take it from here."""

    def to_dict(self) -> dict:
        return asdict(self)


def first_large_layer(fractions: list[float], threshold: float) -> int | None:
    """Index of the first finite fraction >= threshold (None when none reaches it)."""
    return next((i for i, f in enumerate(fractions) if math.isfinite(f) and f >= threshold), None)


def largest_step(fractions: list[float]) -> tuple[int | None, float | None]:
    """(block k, rise) with the largest fractions[k + 1] - fractions[k] (None when undefined)."""
    steps = [(k, fractions[k + 1] - fractions[k]) for k in range(len(fractions) - 1)
             if math.isfinite(fractions[k]) and math.isfinite(fractions[k + 1])]
    if not steps:
        return None, None
    return max(steps, key=lambda s: s[1])


def follow_up_commands(exp_args: str, hook: str, layer: int, n_layers: int) -> list[str]:
    """A harvest sweep around `layer`, then train and analyze on the recommended hook's sibling run
    (docs/runs.md: a run named R reads the upstream runs named R; the main run is left alone)."""
    around = sorted({max(0, layer - 2), min(layer, n_layers - 1), min(layer + 2, n_layers - 1)})
    grid = ",".join(f"blocks.{i}.hook_resid_pre" for i in around)
    if hook not in grid.split(","):
        grid += f",{hook}"
    return [f"python -m reasondiff.harvest -m {exp_args} harvest.hook={grid}",
            f"python -m reasondiff.train {exp_args} run=hook={hook}",
            f"python -m reasondiff.analyze {exp_args} run=hook={hook}",
            f"# +sweep=layers sweeps the experiment's grid (sweeps.layers); harvest.hook={hook} moves the main run"]


def recommend(fractions: list[float], *, threshold: float, text: str, direction: str, n_layers: int,
              exp_args: str, mean_kl: float, min_kl: float) -> Recommendation:
    """The recommendation from one curve of fractions over residual layers 0..N; `exp_args` is what
    selects the experiment on a command line (`+exp=qwen05b`)."""
    block, step = largest_step(fractions)
    common = {"text": text, "direction": direction, "threshold": threshold, "largest_step_block": block,
              "largest_step": step}
    if not math.isfinite(mean_kl) or mean_kl <= min_kl:
        return Recommendation(hook=None, layer=None, closed=None, follow_up=[], **common, line=(
            f"No layer recommended: on {text} text the two models' next-token distributions agree "
            f"(mean KL(base || tuned) = {mean_kl:.3g} nats/token <= scan.min_kl = {min_kl:g}); there is no "
            "fine-tuning effect to localise."))
    layer = first_large_layer(fractions, threshold)
    if layer is None:
        best = max((f for f in fractions if math.isfinite(f)), default=math.nan)
        return Recommendation(hook=None, layer=None, closed=None, follow_up=[], **common, line=(
            f"No layer recommended: on {text} text no residual patch ({direction}) closes {threshold:.0%} of "
            f"KL(base || tuned) (best {best:.0%}); the difference lies in the final norm / unembedding "
            "or is spread thinly. Read the curves."))
    hook = resid_hook_name(layer, n_layers)
    where = "the final residual" if layer == n_layers else (
        "the embeddings" if layer == 0 else f"the residual stream after block {layer - 1}")
    step_text = f"; block {block} adds the most (+{step:.0%})" if block is not None and step is not None else ""
    line = (f"Recommended crosscoder hook: `{hook}` ({where}), the first layer whose {direction.replace('_', ' ')} "
            f"patch closes >= {threshold:.0%} of KL(base || tuned) on {text.replace('_', ' ')} text "
            f"({fractions[layer]:.0%} there{step_text}).")
    return Recommendation(hook=hook, layer=layer, closed=fractions[layer], line=line,
                          follow_up=follow_up_commands(exp_args, hook, layer, n_layers), **common)
