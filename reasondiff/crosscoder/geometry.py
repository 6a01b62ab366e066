"""Decoder geometry of a two-model crosscoder: relative norms, latent classes, cosines.

Always computed on the *unfolded* decoder (the normalised space the crosscoder was trained in):
folding different scaling factors into W_dec would move every relative norm.
Convention (Kissane/Nanda, the paper): r = ||d_tuned|| / (||d_base|| + ||d_tuned||), so
0 = base-only, 1 = tuned-only. diffing-toolkit's Δ runs the other way; we never use it.
"""

from __future__ import annotations

import torch

BASE, TUNED = 0, 1
LATENT_CLASSES = ("base_only", "tuned_only", "shared", "other", "dead")


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
                     base_only_max: float = 0.1, shared_min: float = 0.3, shared_max: float = 0.7,
                     tuned_only_min: float = 0.9) -> list[str]:
    """One of LATENT_CLASSES per latent; `alive` (bool) marks latents that ever fired."""
    classes = []
    for i, r in enumerate(relative_norm.tolist()):
        if (alive is not None and not bool(alive[i])) or r != r:  # r != r: NaN (zero decoder)
            classes.append("dead")
        elif r <= base_only_max:
            classes.append("base_only")
        elif r >= tuned_only_min:
            classes.append("tuned_only")
        elif shared_min <= r <= shared_max:
            classes.append("shared")
        else:
            classes.append("other")
    return classes
