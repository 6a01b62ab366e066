"""The objective of one crosscoder training step, computed two ways that give the same numbers.

- dense (`dense_objective`): autograd over the full [B, F] latents, five GEMMs per step;
- sparse (`sparse_objective`): only the encoder forward is a dense GEMM; the decoder forward, the
  gradient wrt the active latents and both weight gradients run over the active (token, latent)
  pairs (`reasondiff.crosscoder.sparse`), and the gradients are written into `.grad` directly.

Both start from the same dense pre-activations and the same selection of active latents
(`select_active`), and the loss is written once, as a function of (x̂, active f values, decoder
norms); the sparse path differentiates that small function with autograd and applies the chain
rule through the sparse products by hand. So the decoder-norm penalty, its gradient, BatchTopK,
AuxK, the fork's unsquared loss and the designated shared latents' reduced penalty are exact in
both paths (tests/test_train_sparse.py compares parameters after several steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from reasondiff.crosscoder import sparse
from reasondiff.crosscoder.loss import (
    aux_k_loss,
    aux_k_normalised,
    aux_k_selection,
    l1_objective,
    reconstruction_loss,
)
from reasondiff.crosscoder.model import CrossCoder, batch_topk_mask, decoder_norm_sum, penalty_factors


@dataclass(frozen=True)
class Objective:
    """What a step minimises beyond the variant (l1 / batchtopk, read from the crosscoder)."""

    reconstruction: str = "squared"
    """squared (the paper) | unsquared (the dictionary_learning fork)."""
    aux_k: int = 1
    aux_k_coeff: float = 0.0
    aux_k_style: str = "scaled"
    """scaled (sparsify) | fork (dictionary_learning): see `loss.aux_k_selection`."""


@dataclass
class StepOutput:
    loss: torch.Tensor
    """Dense path: attached to the graph (call backward). Sparse path: detached, grads already set."""
    l2: torch.Tensor
    l1: torch.Tensor
    aux: torch.Tensor
    active: torch.Tensor | None
    """[B, F] bool: the latents actually used (after BatchTopK); None when a sparse step never
    built the mask (the l1 variant's pairs read straight off the pre-activations)."""
    recon: torch.Tensor
    f: torch.Tensor | None = None
    """Dense path only: the latent activations used, detached."""
    scores: torch.Tensor | None = None
    """batchtopk: the selected f_i·Σ_m||d_i,m|| (for the inference threshold; any shape, 0 = not selected)."""
    sparse: bool = False
    fired: torch.Tensor | None = None
    """[F] bool: latents active on some token of the batch (sparse path: from the pairs' offsets, so
    the trainer's dead-latent count needs no column reduction over the [B, F] mask)."""
    grad_sq_norms: dict[str, torch.Tensor] | None = None
    """Sparse path with the compiled kernels: ||.grad||² of the weight matrices by parameter name,
    summed as the kernels wrote them, so the grad-norm clip needs no extra pass over 51M gradients."""


@torch.no_grad()
def select_active(cc: CrossCoder, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(active mask [B, F], selected scores or None). l1: every positive pre-activation; batchtopk:
    the k·B largest f_i·Σ_m||d_i,m|| of the batch (Bussmann et al. 2024)."""
    if cc.cfg.variant != "batchtopk":
        return pre > 0, None
    scored = torch.relu(pre) * decoder_norm_sum(cc.W_dec).to(pre.dtype)
    mask = batch_topk_mask(scored, cc.cfg.k)
    return mask, scored * mask


def dense_objective(cc: CrossCoder, x: torch.Tensor, pre: torch.Tensor, mask: torch.Tensor, *, l1_coeff: float,
                    dead: torch.Tensor | None, objective: Objective) -> StepOutput:
    """Loss of one batch `x` [B, n_models, d] (normalised space) from its pre-activations, by autograd."""
    f = torch.relu(pre)
    norms = decoder_norm_sum(cc.W_dec)
    zero = x.new_zeros(()).float()
    if cc.cfg.variant == "batchtopk":
        f = f * mask
    recon = cc.decode(f)
    if cc.cfg.variant == "l1":
        factors = penalty_factors(cc.cfg, norms.device)
        weights = norms if factors is None else norms * factors
        loss, l2, l1 = l1_objective(x, recon, f, weights, l1_coeff, objective.reconstruction)
        aux = zero
    else:
        l2 = reconstruction_loss(x, recon, objective.reconstruction)
        l1 = (f.detach().float().sum(0) * norms.detach().float()).sum() / f.shape[0]
        aux = zero
        if dead is not None and objective.aux_k_coeff > 0 and bool(dead.any()):
            residual = (x - recon).detach().flatten(1)
            aux = aux_k_loss(residual, pre, dead, cc.W_dec.flatten(1), objective.aux_k, objective.aux_k_style,
                             norms.detach())
        loss = l2 + objective.aux_k_coeff * aux
    return StepOutput(loss=loss, l2=l2.detach(), l1=l1.detach(), aux=aux.detach(), active=mask, recon=recon.detach(),
                      f=f.detach())


def sparse_objective(cc: CrossCoder, x: torch.Tensor, pre: torch.Tensor | None, mask: torch.Tensor | None, *,
                     l1_coeff: float, dead: torch.Tensor | None, objective: Objective,
                     pairs: sparse.ActivePairs | None = None, kernel: ModuleType | None = None) -> StepOutput:
    """The same loss as `dense_objective`, with its exact gradients written into the parameters' `.grad`.

    Chain rule through x̂ = Σ_(b,i) f_bi W_dec[i] + b_dec and f_bi = pre_bi on the active pairs:
      ∂L/∂W_dec[i] = Σ_b f_bi ∂L/∂x̂_b (+ the decoder-norm penalty's own term),
      ∂L/∂f_bi     = <∂L/∂x̂_b, W_dec[i]> (+ the penalty's weight),
      ∂L/∂W_enc[:, i] = Σ_b ∂L/∂f_bi x_b,  ∂L/∂b_enc[i] = Σ_b ∂L/∂f_bi,  ∂L/∂b_dec = Σ_b ∂L/∂x̂_b.
    AuxK adds the same terms for its own pairs and reconstruction. `pairs`: the mask's active pairs
    when the caller already built them (the trainer does, to read the batch's density off them; then
    `mask` may be None). `kernel`: the compiled pairs kernels (`pairs_kernel.load()`) for pairs built
    here; None = torch ops (pairs the caller built carry their own choice). `pre` may be None when
    the pairs carry the active pre-activations (`ActivePairs.above` with the encoder bias as its
    offset: the l1 variant on the kernels, whose encoder GEMM then never adds the bias to [B, F]).

    The squared reconstruction term's gradient is written in closed form (∂/∂x̂ Σ||x̂ − x||²/B =
    2(x̂ − x)/B: the error, a dot product for the value, an in-place scale, where autograd takes
    five passes); every other term goes through autograd as a function of the small leaves.
    """
    cfg = cc.cfg
    M, d, F = cfg.n_models, cfg.d_model, cfg.n_latents
    B = x.shape[0]
    x = x.float()
    x_flat = x.reshape(B, M * d)
    pre = pre.detach().float() if pre is not None else None
    W_dec = cc.W_dec.detach().float()
    W_dec_flat = W_dec.reshape(F, M * d)
    pairs = sparse.ActivePairs.from_mask(mask, kernel) if pairs is None else pairs
    values = pairs.values if pairs.values is not None else pairs.latent_major(pre)
    recon, norms = sparse.decode(pairs, pre, W_dec_flat, bias=cc.b_dec.detach().float(), n_models=M, values=values)
    recon = recon.view(B, M, d)
    aux_pairs = None
    if cfg.variant == "batchtopk" and dead is not None and objective.aux_k_coeff > 0 and bool(dead.any()):
        if pre is None:
            raise ValueError("sparse_objective: AuxK selects from the dense pre-activations; pass `pre`")
        aux_mask = aux_k_selection(pre, dead, objective.aux_k, objective.aux_k_style, norms.sum(-1))
        aux_pairs = sparse.ActivePairs.from_mask(aux_mask, pairs.kernel)
        aux_values = aux_pairs.latent_major(pre)
        recon_aux = sparse.decode(aux_pairs, pre, W_dec_flat)[0]

    # the loss as a function of (x̂, active f, decoder norms, AuxK's x̂): small leaves for autograd
    closed_form = objective.reconstruction == "squared"
    error = recon - x if closed_form else None
    with torch.enable_grad():
        recon_leaf = recon.detach().requires_grad_(not closed_form)
        values_leaf = values.detach().requires_grad_(True)
        norms_leaf = norms.detach().requires_grad_(True)
        leaves = [recon_leaf, values_leaf, norms_leaf]
        norm_sum = norms_leaf.sum(-1)
        if closed_form:  # Σ_b ||x̂_b − x_b||² / B as one dot product; its gradient below
            flat_error = error.reshape(-1)
            l2 = torch.dot(flat_error, flat_error) / B
        else:
            l2 = reconstruction_loss(x, recon_leaf, objective.reconstruction)
        aux = x.new_zeros(())
        if cfg.variant == "l1":
            factors = penalty_factors(cfg, norms.device)
            weights = norm_sum if factors is None else norm_sum * factors
            l1 = (pairs.per_latent_sum(values_leaf) * weights).sum() / B
            loss = l2 + l1_coeff * l1
        else:
            l1 = (pairs.per_latent_sum(values_leaf.detach()) * norm_sum.detach()).sum() / B
            if aux_pairs is not None:
                recon_aux_leaf = recon_aux.detach().requires_grad_(True)
                leaves.append(recon_aux_leaf)
                residual = (-error if closed_form else x - recon).detach().flatten(1)
                aux = aux_k_normalised(residual, recon_aux_leaf, int(dead.sum()), objective.aux_k, objective.aux_k_style)
            loss = l2 + objective.aux_k_coeff * aux
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        # batchtopk with no AuxK term and the closed-form l2: nothing left for autograd
        grads = torch.autograd.grad(loss, wanted, allow_unused=True) if loss.requires_grad else (None,) * len(wanted)
        if closed_form:
            grads = (error.mul_(2.0 / B), *grads)  # the error is not needed after this
    g_recon, g_values, g_norms = grads[0].reshape(B, M * d), grads[1], grads[2]

    scale = None
    if g_norms is not None:  # ∂||w||/∂w = w / ||w|| (0 for a zero row, as autograd's norm backward)
        scale = torch.where(norms > 0, g_norms / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    g_W_dec, dots, sq_dec = sparse.decoder_weight_gradient(pairs, values, g_recon, W_dec_flat, row_scale=scale)
    g_f = dots if g_values is None else dots + g_values
    g_W_enc_t, g_b_enc, sq_enc = sparse.encoder_weight_gradient(pairs, g_f, x_flat)
    if aux_pairs is not None:
        g_recon_aux = grads[3].reshape(B, M * d)
        g_W_dec, dots_aux, sq_dec = sparse.decoder_weight_gradient(aux_pairs, aux_values, g_recon_aux, W_dec_flat,
                                                                   accumulate=g_W_dec)
        g_W_enc_t, g_b_enc, sq_enc = sparse.encoder_weight_gradient(aux_pairs, dots_aux, x_flat,
                                                                    accumulate=(g_W_enc_t, g_b_enc))
    _set_grad(cc.W_dec, g_W_dec.view(F, M, d))
    _set_grad(cc.W_enc_by_latent, g_W_enc_t.view(F, M, d))
    _set_grad(cc.b_enc, g_b_enc)
    _set_grad(cc.b_dec, g_recon.sum(0).view(M, d))
    scores = None
    if cfg.variant == "batchtopk":
        scores = values * norms.sum(-1)[pairs.latent_major_latent]
    grad_sq_norms = None
    if sq_dec is not None and sq_enc is not None:
        grad_sq_norms = {"W_dec": sq_dec, "W_enc_by_latent": sq_enc}
    return StepOutput(loss=loss.detach(), l2=l2.detach(), l1=l1.detach(), aux=aux.detach(), active=mask,
                      recon=recon, scores=scores, sparse=True,
                      fired=pairs.latent_counts() > 0, grad_sq_norms=grad_sq_norms)


def _set_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    """`.grad` in the parameter's own memory layout: the fused Adam kernel walks param, grad and
    its moments as one flat array, so a grad with other strides would be silently misaligned."""
    grad = grad.to(param.dtype)
    if grad.stride() != param.stride():
        grad = torch.empty_like(param).copy_(grad)
    param.grad = grad


def crosscoder_loss(cc: CrossCoder, x: torch.Tensor, *, l1_coeff: float, dead: torch.Tensor | None,
                    aux_k: int, aux_k_coeff: float, reconstruction: str = "squared",
                    aux_k_style: str = "scaled") -> StepOutput:
    """Dense forward + objective of one batch `x` [B, n_models, d] (normalised space)."""
    pre = cc.pre_activations(x)
    mask, scores = select_active(cc, pre)
    out = dense_objective(cc, x, pre, mask, l1_coeff=l1_coeff, dead=dead,
                          objective=Objective(reconstruction, aux_k, aux_k_coeff, aux_k_style))
    out.scores = scores
    return out
