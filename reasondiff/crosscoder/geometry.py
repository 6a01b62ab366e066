"""Decoder geometry of a two-model crosscoder: relative norms, latent classes, cosines.

Always computed on the *unfolded* decoder (the normalised space the crosscoder was trained in):
folding different scaling factors into W_dec would move every relative norm.
Two measures of how model-specific a latent is, both with the fine-tuned model in the numerator
(0 = base-only, 1 = tuned-only):
- r = ||d_tuned|| / (||d_base|| + ||d_tuned||) (Kissane/Nanda, the paper; the primary column), classes by
  the paper's bands (base-only r <= 0.1, shared 0.3-0.7, tuned-only r >= 0.9);
- Δ = ½·((||d_tuned|| − ||d_base||) / max(||d_base||, ||d_tuned||) + 1) (Minder et al. 2025; the
  dictionary_learning fork's `dec_norm_diff`, row of the fine-tuned model), classes by their bins
  (strict: base-only Δ < 0.1, shared |Δ − ½| < 0.1, tuned-only Δ > 0.9). Δ is NOT 1 − r: with
  ρ = ||d_tuned|| / ||d_base||, r = ρ / (1 + ρ) but Δ = 1 − 1/(2ρ) for ρ >= 1 (ρ/2 below), so Δ = 0.9
  is ρ = 5 where r = 0.9 is ρ = 9, and Δ's shared band is 0.83 < ρ < 1.25 where r's is 0.43 <= ρ <= 2.33.
  (diffing-toolkit's `dec_norm_diff` column is 1 − Δ: 0 there means fine-tune-only.)
"""

from __future__ import annotations

import torch

BASE, TUNED = 0, 1
LATENT_CLASSES = ("base_only", "tuned_only", "shared", "other", "designated_shared", "dead")
"""`designated_shared`: latents trained with one decoder vector tied across the models
(`train.shared_latents`): shared by construction, so kept out of the relative-norm classes and
histograms. `dead` stays last (analyze drops it from per-class firing statistics)."""


def decoder_norms(W_dec: torch.Tensor) -> torch.Tensor:
    """[n_latents, n_models, d_model] -> [n_latents, n_models]."""
    return W_dec.float().norm(dim=-1)


def relative_decoder_norm(W_dec: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """r_i = ||d_i,tuned|| / (||d_i,base|| + ||d_i,tuned||) per latent (NaN where both are zero)."""
    norms = decoder_norms(W_dec)
    total = norms[:, BASE] + norms[:, TUNED]
    return torch.where(total > eps, norms[:, TUNED] / total.clamp_min(eps), torch.full_like(total, float("nan")))


def decoder_cosine(W_dec: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity between each latent's base and tuned decoder vectors."""
    base, tuned = W_dec[:, BASE].float(), W_dec[:, TUNED].float()
    return (base * tuned).sum(-1) / (base.norm(dim=-1) * tuned.norm(dim=-1)).clamp_min(eps)


def classify_latents(relative_norm: torch.Tensor, *, alive: torch.Tensor | None = None,
                     designated: torch.Tensor | None = None, base_only_max: float = 0.1, shared_min: float = 0.3,
                     shared_max: float = 0.7, tuned_only_min: float = 0.9) -> list[str]:
    """One of LATENT_CLASSES per latent; `alive` (bool) marks latents that ever fired, `designated`
    (bool) the designated shared latents (`CrossCoder.designated_shared`)."""
    classes = []
    for i, r in enumerate(relative_norm.tolist()):
        if (alive is not None and not bool(alive[i])) or r != r:  # r != r: NaN (zero decoder)
            classes.append("dead")
        elif designated is not None and bool(designated[i]):
            classes.append("designated_shared")
        elif r <= base_only_max:
            classes.append("base_only")
        elif r >= tuned_only_min:
            classes.append("tuned_only")
        elif shared_min <= r <= shared_max:
            classes.append("shared")
        else:
            classes.append("other")
    return classes


DELTA_THRESHOLD = 0.1
"""Minder et al.'s bins: tuned-only Δ > 1 − 0.1, base-only Δ < 0.1, shared |Δ − 0.5| < 0.1 (diffing-toolkit)."""


def delta_norm(W_dec: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Minder et al.'s Δ per latent, fine-tuned model in the numerator (NaN where both norms are zero)."""
    norms = decoder_norms(W_dec)
    base, tuned = norms[:, BASE], norms[:, TUNED]
    top = torch.maximum(base, tuned)
    return torch.where(top > eps, 0.5 * ((tuned - base) / top.clamp_min(eps) + 1), torch.full_like(top, float("nan")))


def classify_latents_delta(delta: torch.Tensor, *, alive: torch.Tensor | None = None,
                           designated: torch.Tensor | None = None, threshold: float = DELTA_THRESHOLD) -> list[str]:
    """LATENT_CLASSES by Minder et al.'s Δ bins (strict inequalities); dead and designated shared
    latents as in `classify_latents`."""
    classes = []
    for i, value in enumerate(delta.tolist()):
        if (alive is not None and not bool(alive[i])) or value != value:
            classes.append("dead")
        elif designated is not None and bool(designated[i]):
            classes.append("designated_shared")
        elif value < threshold:
            classes.append("base_only")
        elif value > 1 - threshold:
            classes.append("tuned_only")
        elif abs(value - 0.5) < threshold:
            classes.append("shared")
        else:
            classes.append("other")
    return classes
