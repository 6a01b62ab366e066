"""What an intervention does to the next-token distributions, summed per context, with bootstrap intervals.

Per context and intervention the pass sums, over the predictions it scores (those made at positions the
crosscoder stands in for, whose next token is real):

- `kl_gap`: KL(base ‖ tuned) of the clean models, the gap every fraction is a fraction of;
- `kl_after`: for an intervention in the base model KL(intervened base ‖ tuned) — the scan's
  tuned_into_base convention, so `kl_closed` = 1 − Σ kl_after / Σ kl_gap is the fraction of the gap
  the intervention closes, and the whole residual patched at the hook gives the scan's own number at that
  layer; for one in the tuned model KL(base ‖ intervened tuned) (scan's base_into_tuned convention);
- `kl_self`: KL(clean ‖ intervened) of the intervened model itself (ablate_set: how far the ablation moves
  the tuned model, the "rise in KL" of the tuned model);
- `ce_clean`, `ce_after`: cross-entropy of the true next token without and with the intervention (the
  side effect: ΔCE on general text).

Every reported number is a ratio of sums over predictions (tokens where the models barely differ cannot
dominate), and its 95% interval a percentile bootstrap over contexts: a resample redraws whole contexts,
whose predictions are not independent. Sums are kept per context so a killed pass resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from reasondiff.core.streamed_pass import ContextSums

SUMS = ("n_predictions", "kl_gap", "kl_after", "kl_self", "ce_clean", "ce_after")
MEASURES = ("kl_closed", "kl_gap", "kl_after", "kl_self", "delta_ce")
"""kl_closed: fraction of KL(base ‖ tuned) closed; kl_gap, kl_after, kl_self: nats per prediction;
delta_ce: CE(intervened) − CE(clean) of the intervened model, nats per prediction."""
CI_LEVEL = 0.95


def measures_from_sums(sums: np.ndarray, *, min_kl: float) -> dict[str, np.ndarray]:
    """MEASURES from SUMS (last axis, in SUMS order; any leading axes). kl_closed is NaN where the mean gap
    is below `min_kl` (identical models: nothing to close)."""
    n = sums[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = {key: np.where(n > 0, sums[..., i] / np.where(n > 0, n, 1), np.nan) for i, key in enumerate(SUMS) if i}
        gap = mean["kl_gap"]
        closed = np.where(np.isfinite(gap) & (gap > min_kl), 1.0 - mean["kl_after"] / np.where(gap > 0, gap, 1), np.nan)
    return {"kl_closed": closed, "kl_gap": gap, "kl_after": mean["kl_after"], "kl_self": mean["kl_self"],
            "delta_ce": mean["ce_after"] - mean["ce_clean"]}


def bootstrap_intervals(per_context: np.ndarray, *, n_resamples: int, seed: int, min_kl: float,
                        level: float = CI_LEVEL) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Percentile bootstrap over contexts of every measure of every intervention: per_context
    [C, I, len(SUMS)] -> {measure: (low [I], high [I])}; NaN with fewer than 2 contexts."""
    n_contexts, n_interventions = per_context.shape[:2]
    nan = np.full(n_interventions, math.nan)
    if n_contexts < 2 or n_resamples < 1:
        return {key: (nan.copy(), nan.copy()) for key in MEASURES}
    rng = np.random.default_rng(seed)
    totals = np.empty((n_resamples, *per_context.shape[1:]))
    step = max(1, 2 ** 22 // max(1, per_context.size))  # resamples per block: a few M numbers at a time
    for lo in range(0, n_resamples, step):
        idx = rng.integers(0, n_contexts, size=(min(step, n_resamples - lo), n_contexts))
        totals[lo:lo + len(idx)] = per_context[idx].sum(axis=1)
    tail = 100 * (1 - level) / 2
    out = {}
    for key, values in measures_from_sums(totals, min_kl=min_kl).items():  # [R, I]
        low, high = nan.copy(), nan.copy()
        for i in range(n_interventions):
            finite = values[:, i][np.isfinite(values[:, i])]
            if len(finite):
                low[i], high[i] = np.percentile(finite, [tail, 100 - tail])
        out[key] = (low, high)
    return out


class InterventionMeter(ContextSums):
    """SUMS per (context, intervention), filled batch by batch; resumable (state_dict)."""

    def __init__(self, n_contexts: int, n_interventions: int):
        super().__init__(SUMS, n_contexts, n_interventions, what="intervention")

    def add(self, contexts: torch.Tensor, intervention: int, values: dict[str, torch.Tensor]) -> None:
        """values[key]: [B] per-context sums for the contexts `contexts` (global indices)."""
        self.add_sums(contexts, (intervention,), values)

    def rows(self, names: Sequence[str], *, n_bootstrap: int, seed: int, min_kl: float) -> list[dict]:
        """Per intervention: every measure with its interval, the tokens and contexts it was read on."""
        per_context = self.sums.numpy()
        point = measures_from_sums(per_context.sum(axis=0), min_kl=min_kl)
        ci = bootstrap_intervals(per_context, n_resamples=n_bootstrap, seed=seed, min_kl=min_kl)
        n_tokens = per_context[:, :, 0].sum(axis=0)
        n_contexts = (per_context[:, :, 0] > 0).sum(axis=0)
        rows = []
        for i, name in enumerate(names):
            row = {"name": name, "n_tokens": int(n_tokens[i]), "n_contexts": int(n_contexts[i])}
            for key in MEASURES:
                row.update({key: float(point[key][i]), f"{key}_ci_low": float(ci[key][0][i]),
                            f"{key}_ci_high": float(ci[key][1][i])})
            rows.append(row)
        return rows


def kl_terms(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """[n] KL(p ‖ q) in nats from log-probabilities [n, V] (a p_v = 0 term counts 0)."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)
