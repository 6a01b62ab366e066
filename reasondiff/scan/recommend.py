"""Where to put the crosscoder: the layer at which the fine-tune's causal effect first becomes large.

Rule (documented in docs/scan.md): on the chosen text, the recommended hook is the FIRST residual
layer L (0..N) whose patch of the tuned model's residual stream into the base model closes at least
`scan.large_effect` of KL(base || tuned) on the next-token distribution. Patching the whole residual
at L hands the base model everything the tuned model computed before L, so the fraction rises from
about 0 at the embeddings to about 1 at the final residual (exactly 1 when the final norm and
unembedding are unchanged); the first layer past the threshold is the earliest point where most of
the change is already written into the stream, which is what a crosscoder at that hook can see.
The block that adds the most (the largest one-layer rise of the curve) is reported beside it.

The fractions are estimated on a few patched contexts, so the recommendation states its
uncertainty (issue 26.6): each fraction has a bootstrap interval over contexts, the layers whose
interval contains the threshold are the ones the rule cannot place on either side of it, and the
rule's answer could be any layer from the first whose interval reaches the threshold to the first
whose interval lies wholly above it. The other patching direction (base into tuned) is read by the
same rule and reported beside it: the two directions need not agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

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
    closed_low: float | None = None
    closed_high: float | None = None
    """95% bootstrap interval over the patched contexts of `closed`."""
    uncertain_layers: list[int] = field(default_factory=list)
    """Layers whose interval contains the threshold: the rule cannot tell on which side they are."""
    layer_range: list[int | None] = field(default_factory=list)
    """[earliest, latest] layer the rule could give within the intervals: the first layer whose
    interval reaches the threshold, the first whose interval lies wholly above it (None: no layer)."""
    n_contexts: int | None = None
    """Patched contexts the fractions (and their intervals) come from."""
    directions: dict[str, dict] = field(default_factory=dict)
    """Per patching direction scanned, the same rule on its curve: `layer` (its first layer past the
    threshold), `closed` / `closed_low` / `closed_high` at the recommended layer, `uncertain_layers`,
    `layer_range`."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Curve:
    """Fractions closed over residual layers 0..N in one patching direction, with their interval."""

    fractions: Sequence[float]
    low: Sequence[float] = ()
    high: Sequence[float] = ()

    def interval(self, layer: int) -> tuple[float | None, float | None]:
        if not self.low or not math.isfinite(self.low[layer]) or not math.isfinite(self.high[layer]):
            return None, None
        return float(self.low[layer]), float(self.high[layer])


def first_large_layer(fractions: list[float], threshold: float) -> int | None:
    """Index of the first finite fraction >= threshold (None when none reaches it)."""
    return next((i for i, f in enumerate(fractions) if math.isfinite(f) and f >= threshold), None)


def uncertain_layers(low: Sequence[float], high: Sequence[float], threshold: float) -> list[int]:
    """Layers whose interval contains the threshold (low < threshold <= high): their fraction may be
    on either side of the rule's test `fraction >= threshold`."""
    return [i for i, (lo, hi) in enumerate(zip(low, high, strict=True))
            if math.isfinite(lo) and math.isfinite(hi) and lo < threshold <= hi]


def layer_range(low: Sequence[float], high: Sequence[float], threshold: float) -> list[int | None]:
    """[earliest, latest] layer the rule "first layer >= threshold" could give within the
    intervals: the first layer whose upper bound reaches the threshold, and the first whose lower
    bound does (by then every plausible curve has crossed). None where no layer qualifies."""
    return [first_large_layer(list(high), threshold), first_large_layer(list(low), threshold)]


def direction_reading(curve: Curve, threshold: float, layer: int | None) -> dict:
    """The rule read on one direction's curve, and that curve at `layer` (the recommended one)."""
    low, high = curve.interval(layer) if layer is not None else (None, None)
    with_interval = bool(curve.low)
    return {"layer": first_large_layer(list(curve.fractions), threshold),
            "closed": None if layer is None or not math.isfinite(curve.fractions[layer]) else float(curve.fractions[layer]),
            "closed_low": low, "closed_high": high,
            "uncertain_layers": uncertain_layers(curve.low, curve.high, threshold) if with_interval else [],
            "layer_range": layer_range(curve.low, curve.high, threshold) if with_interval else []}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _span(layers: Sequence[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"


def uncertainty_sentence(reading: dict, threshold: float, n_contexts: int | None) -> str:
    """What the intervals say about where the rule's layer lies."""
    contexts = f"{n_contexts} patched context{'s' if n_contexts != 1 else ''}" if n_contexts is not None else "the patched contexts"
    if not reading["layer_range"]:
        return (f" No interval: {contexts} (intervals need two or more; raise scan.patch_contexts), so the layer's "
                "uncertainty is unknown.")
    earliest, latest = reading["layer_range"]
    if earliest is None:
        return (f" Uncertainty ({contexts}): no 95% interval reaches {threshold:.0%}; only the point estimate "
                "crosses it.")
    where = (f"any layer from {earliest} to {latest}" if latest is not None
             else f"layer {earliest} or any later one (no layer's interval lies wholly above {threshold:.0%})")
    if earliest == latest:
        return f" Uncertainty: no 95% interval over {contexts} contains {threshold:.0%}, so the rule gives this layer."
    straddle = reading["uncertain_layers"]
    which = f"the 95% intervals of {_span(straddle)} contain {threshold:.0%}" if straddle else "the intervals"
    return f" Uncertainty ({contexts}): {which}, so the rule could give {where}."


def other_direction_sentence(direction: str, reading: dict, layer: int, threshold: float) -> str:
    name = DIRECTION_NAMES.get(direction, direction)
    interval = (f" [{reading['closed_low']:.0%}, {reading['closed_high']:.0%}]"
                if reading["closed_low"] is not None else "")
    first = (f"first reaches {threshold:.0%} at layer {reading['layer']}" if reading["layer"] is not None
             else f"never reaches {threshold:.0%}")
    ranged = ""
    if reading["layer_range"] and reading["layer"] is not None and reading["layer_range"][0] != reading["layer_range"][1]:
        earliest, latest = reading["layer_range"]
        ranged = f" (within its intervals: layer {earliest} to {latest if latest is not None else 'the end'})"
    return (f" The other direction, {name}, closes {_pct(reading['closed'])}{interval} at layer {layer} and "
            f"{first}{ranged}.")


DIRECTION_NAMES = {"tuned_into_base": "tuned → base", "base_into_tuned": "base → tuned"}


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
              exp_args: str, mean_kl: float, min_kl: float, low: Sequence[float] = (), high: Sequence[float] = (),
              others: dict[str, Curve] | None = None, n_contexts: int | None = None) -> Recommendation:
    """The recommendation from one curve of fractions over residual layers 0..N; `exp_args` is what
    selects the experiment on a command line (`+exp=qwen05b`). `low` / `high`: the curve's bootstrap
    interval per layer; `others`: the other patching directions' curves, read by the same rule and
    reported beside it; `n_contexts`: how many contexts were patched."""
    block, step = largest_step(fractions)
    curves = {direction: Curve(fractions, low, high), **(others or {})}
    common = {"text": text, "direction": direction, "threshold": threshold, "largest_step_block": block,
              "largest_step": step, "n_contexts": n_contexts}
    if not math.isfinite(mean_kl) or mean_kl <= min_kl:
        return Recommendation(hook=None, layer=None, closed=None, follow_up=[], **common, line=(
            f"No layer recommended: on {text} text the two models' next-token distributions agree "
            f"(mean KL(base || tuned) = {mean_kl:.3g} nats/token <= scan.min_kl = {min_kl:g}); there is no "
            "fine-tuning effect to localise."))
    layer = first_large_layer(fractions, threshold)
    readings = {d: direction_reading(c, threshold, layer) for d, c in curves.items()}
    mine = readings[direction]
    if layer is None:
        best = max((f for f in fractions if math.isfinite(f)), default=math.nan)
        line = (f"No layer recommended: on {text} text no residual patch ({direction}) closes {threshold:.0%} of "
                f"KL(base || tuned) (best {best:.0%}); the difference lies in the final norm / unembedding "
                "or is spread thinly. Read the curves.")
        if mine["layer_range"] and mine["layer_range"][0] is not None:
            line += (f" Within the 95% intervals it could reach {threshold:.0%} from layer {mine['layer_range'][0]} "
                     f"({n_contexts} patched contexts).")
        return Recommendation(hook=None, layer=None, closed=None, follow_up=[], directions=readings,
                              uncertain_layers=mine["uncertain_layers"], layer_range=mine["layer_range"],
                              **common, line=line)
    hook = resid_hook_name(layer, n_layers)
    where = "the final residual" if layer == n_layers else (
        "the embeddings" if layer == 0 else f"the residual stream after block {layer - 1}")
    step_text = f"; block {block} adds the most (+{step:.0%})" if block is not None and step is not None else ""
    interval = f" [{mine['closed_low']:.0%}, {mine['closed_high']:.0%}]" if mine["closed_low"] is not None else ""
    line = (f"Recommended crosscoder hook: `{hook}` ({where}), the first layer whose "
            f"{DIRECTION_NAMES.get(direction, direction)} patch closes >= {threshold:.0%} of KL(base || tuned) on "
            f"{text.replace('_', ' ')} text ({fractions[layer]:.0%}{interval} there{step_text}).")
    line += uncertainty_sentence(mine, threshold, n_contexts)
    line += "".join(other_direction_sentence(d, r, layer, threshold) for d, r in readings.items() if d != direction)
    return Recommendation(hook=hook, layer=layer, closed=fractions[layer], line=line,
                          follow_up=follow_up_commands(exp_args, hook, layer, n_layers),
                          closed_low=mine["closed_low"], closed_high=mine["closed_high"],
                          uncertain_layers=mine["uncertain_layers"], layer_range=mine["layer_range"],
                          directions=readings, **common)
