"""Converters to and from the dictionary_learning crosscoder fork's state dict.

The fork (science-of-finetuning / jkminder `dictionary_learning`, git only; PyPI 0.1.0 has no
CrossCoder) stores `encoder.weight [n_models, d, F]`, `encoder.bias [F]`,
`decoder.weight [n_models, F, d]`, `decoder.bias [n_models, d]`, `code_normalization_id`
(CROSSCODER = 1: latents weighted by Σ_m ||d_i,m||, our convention), and for BatchTopK also `k`
and `threshold`. Its older state dicts have no place for our per-model scaling factors, so by
default the factors are FOLDED into the exported weights (the exported model then takes raw
activations); import unfolds them again when you pass the factors back.
"""

from __future__ import annotations

import torch

from reasondiff.crosscoder.model import (
    CrossCoder,
    CrossCoderConfig,
    fold_scaling_factors,
    unfold_scaling_factors,
)

CODE_NORMALIZATION_CROSSCODER = 1


def to_dictionary_learning(cc: CrossCoder, *, fold_scaling: bool = True) -> dict[str, torch.Tensor]:
    """State dict for the fork's `CrossCoder` / `BatchTopKCrossCoder.load_state_dict`.

    fold_scaling=True: weights act on raw activations (latents and raw reconstructions unchanged).
    fold_scaling=False: weights act on activations you multiply by `cc.scaling_factors` yourself.
    """
    W_enc, W_dec, b_dec = cc.W_enc.detach(), cc.W_dec.detach(), cc.b_dec.detach()
    threshold = cc.threshold.detach().clone().float()
    if fold_scaling:
        s = cc.scaling_factors.detach()
        if cc.cfg.variant == "batchtopk":
            # the threshold compares f_i·Σ_m||d_i,m||; folding divides d_i,m by s_m, which is one
            # rescaling of that score only when both models share the same factor
            if not torch.allclose(s, s[0].expand_as(s)):
                raise ValueError("a batchtopk crosscoder with different per-model scaling factors cannot be "
                                 "folded: export with fold_scaling=False and scale the activations yourself")
            if threshold >= 0:
                threshold = threshold / s[0]
        W_enc, W_dec, b_dec = fold_scaling_factors(W_enc, W_dec, b_dec, s)
    state = {
        "encoder.weight": W_enc.clone().contiguous(),
        "encoder.bias": cc.b_enc.detach().clone(),
        "decoder.weight": W_dec.permute(1, 0, 2).contiguous(),
        "decoder.bias": b_dec.clone().contiguous(),
        "code_normalization_id": torch.tensor(CODE_NORMALIZATION_CROSSCODER, dtype=torch.int),
    }
    if cc.cfg.variant == "batchtopk":
        state["k"] = torch.tensor(cc.cfg.k, dtype=torch.int)
        state["threshold"] = threshold
    return state


def from_dictionary_learning(state: dict[str, torch.Tensor], *, scaling_factors: torch.Tensor | None = None,
                             folded: bool = True, dec_init_norm: float = 0.08) -> CrossCoder:
    """Our CrossCoder from the fork's state dict (variant batchtopk when it has `k`).

    With `scaling_factors` and folded=True the weights are unfolded into the normalised space, so
    relative decoder norms come out right; without factors the crosscoder works on raw activations.
    """
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # saved under torch.compile
    if "encoder.weight" not in state or "decoder.weight" not in state:
        raise ValueError(f"not a dictionary_learning crosscoder state dict (keys: {sorted(state)[:8]})")
    code_norm = int(state.get("code_normalization_id", torch.tensor(CODE_NORMALIZATION_CROSSCODER)))
    if code_norm != CODE_NORMALIZATION_CROSSCODER:
        raise ValueError(f"code_normalization_id={code_norm}: only CROSSCODER (1) matches this crosscoder's "
                         "Σ_m ||d_i,m|| latent weighting")
    n_models, d_model, n_latents = state["encoder.weight"].shape
    if tuple(state["decoder.weight"].shape) != (n_models, n_latents, d_model):
        raise ValueError(f"decoder.weight {tuple(state['decoder.weight'].shape)} does not match "
                         f"encoder.weight {tuple(state['encoder.weight'].shape)}")
    variant = "batchtopk" if "k" in state else "l1"
    cfg = CrossCoderConfig(d_model=d_model, n_latents=n_latents, n_models=n_models, variant=variant,
                           k=int(state["k"]) if "k" in state else 100, dec_init_norm=dec_init_norm)
    cc = CrossCoder(cfg)
    W_enc = state["encoder.weight"].float()
    W_dec = state["decoder.weight"].float().permute(1, 0, 2)
    b_dec = state["decoder.bias"].float()
    threshold = state["threshold"].float().reshape(()) if "threshold" in state else torch.tensor(-1.0)
    s = torch.ones(n_models) if scaling_factors is None else torch.as_tensor(scaling_factors, dtype=torch.float32)
    if scaling_factors is not None and folded:
        W_enc, W_dec, b_dec = unfold_scaling_factors(W_enc, W_dec, b_dec, s)
        if variant == "batchtopk" and threshold >= 0:
            threshold = threshold * s[0]
    with torch.no_grad():
        cc.W_enc.copy_(W_enc)
        cc.W_dec.copy_(W_dec)
        cc.b_enc.copy_(state["encoder.bias"].float())
        cc.b_dec.copy_(b_dec)
        cc.scaling_factors.copy_(s)
        cc.threshold.copy_(threshold)
    return cc
