"""Crosscoder objectives and schedules as pure functions over tensors (tested with hand-computed numbers).

Default conventions (the paper / Kissane & Nanda): the reconstruction loss is the SQUARED error
summed over models and dimensions, averaged over the batch; the L1 penalty weights each latent by
the sum of its per-model decoder norms. The dictionary_learning fork's recipe (Minder et al. 2025)
is here too, under its own names: the UNSQUARED per-model error norm averaged over tokens and
models, its AuxK, its lr warm-up and the geometric-median decoder bias.
"""

from __future__ import annotations

import torch

RECONSTRUCTION_LOSSES = ("squared", "unsquared")
AUX_K_STYLES = ("scaled", "fork")


def lr_factor(step: int, total_steps: int, decay_start_frac: float = 0.8, warmup_steps: int = 0) -> float:
    """Multiplier of the base lr: linear warm-up `step / warmup_steps` over the first `warmup_steps`
    (the fork's `get_lr_schedule`), then 1 until `decay_start_frac` of the steps, then linear to 0."""
    if step < warmup_steps:
        return step / warmup_steps
    decay_start = decay_start_frac * total_steps
    if step < decay_start:
        return 1.0
    return max(0.0, (total_steps - step) / max(total_steps - decay_start, 1e-12))


def l1_coeff_at(step: int, total_steps: int, l1_coeff: float, warmup_frac: float) -> float:
    """λ ramps linearly from 0 to `l1_coeff` over the first `warmup_frac` of steps."""
    warmup = warmup_frac * total_steps
    if warmup <= 0 or step >= warmup:
        return l1_coeff
    return l1_coeff * step / warmup


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor, kind: str = "squared") -> torch.Tensor:
    """x, recon: [B, n_models, d].

    squared (the paper, Kissane & Nanda): Σ_m ||x_m − x̂_m||², mean over the batch.
    unsquared (the dictionary_learning fork's trainers, `th.linalg.norm(e, dim=-1).mean()`):
    ||x_m − x̂_m||, mean over the batch AND the models.
    """
    error = recon.float() - x.float()
    if kind == "squared":
        return error.pow(2).sum(dim=(-2, -1)).mean()
    if kind == "unsquared":
        return torch.linalg.vector_norm(error, dim=-1).mean()
    raise ValueError(f"reconstruction loss {kind!r} is not one of {RECONSTRUCTION_LOSSES}")


def sparsity_penalty(f: torch.Tensor, dec_norm_sum: torch.Tensor) -> torch.Tensor:
    """Σ_i f_i Σ_m ||W_dec[i, m]||, mean over the batch.

    Written as (Σ_b f_bi)·n_i / B: one [F] reduction instead of a [B, F] product.
    """
    return (f.float().sum(dim=0) * dec_norm_sum.float()).sum() / f.shape[0]


def l1_objective(x: torch.Tensor, recon: torch.Tensor, f: torch.Tensor, dec_norm_sum: torch.Tensor,
                 l1_coeff: float, reconstruction: str = "squared") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, L2, L1) of the paper's objective: L2 + λ·L1 (`dec_norm_sum` may carry per-latent
    penalty factors, e.g. the reduced penalty of designated shared latents)."""
    l2 = reconstruction_loss(x, recon, reconstruction)
    l1 = sparsity_penalty(f, dec_norm_sum)
    return l2 + l1_coeff * l1, l2, l1


def explained_variance(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per model: 1 − Σ_b ||x_m − x̂_m||² / Σ_b ||x_m − mean_b x_m||². Returns [n_models]."""
    x, recon = x.float(), recon.float()
    residual = (x - recon).pow(2).sum(dim=(0, -1))
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=(0, -1))
    return 1.0 - residual / total.clamp_min(1e-12)


def fraction_variance_unexplained(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """FVU over both models together (the sweep summary's x-axis partner of L0)."""
    x, recon = x.float(), recon.float()
    return (x - recon).pow(2).sum() / (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)


class ExplainedVarianceMeter:
    """`explained_variance` and `fraction_variance_unexplained` streamed over batches of any size.

    Keeps Σ||x − x̂||², Σx and Σ||x||² per model in float64, so a pass over many batches (and a pass
    resumed from its saved state) gives the one-batch answer up to rounding."""

    def __init__(self) -> None:
        self.sq_err = self.x_sum = self.x_sq = None
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        """x, recon [N, n_models, d] over the tokens that count."""
        if x.shape[0] == 0:
            return
        x64, err = x.double(), (x.float() - recon.float()).pow(2).sum(dim=(0, -1)).double()
        parts = (err, x64.sum(0), x64.pow(2).sum(dim=(0, -1)))
        if self.sq_err is None:
            self.sq_err, self.x_sum, self.x_sq = (t.cpu() for t in parts)
        else:
            self.sq_err += parts[0].cpu()
            self.x_sum += parts[1].cpu()
            self.x_sq += parts[2].cpu()
        self.count += x.shape[0]

    def _total_variance(self) -> torch.Tensor:
        return (self.x_sq - self.x_sum.pow(2).sum(-1) / self.count).clamp_min(1e-12)  # Σ||x − mean||² per model

    def explained_variance(self) -> torch.Tensor:
        """[n_models]; empty before any update."""
        if self.sq_err is None:
            return torch.empty(0, dtype=torch.float64)
        return 1.0 - self.sq_err / self._total_variance()

    def fvu(self) -> float:
        return float("nan") if self.sq_err is None else float(self.sq_err.sum() / self._total_variance().sum())

    def mean_sq_error(self) -> float:
        """Σ_m ||x_m − x̂_m||² per token (the L2 term of the loss)."""
        return float("nan") if self.sq_err is None else float(self.sq_err.sum() / self.count)

    def state_dict(self) -> dict[str, torch.Tensor | int | None]:
        return {"sq_err": self.sq_err, "x_sum": self.x_sum, "x_sq": self.x_sq, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sq_err, self.x_sum, self.x_sq = (None if state[k] is None else state[k].clone()
                                              for k in ("sq_err", "x_sum", "x_sq"))
        self.count = int(state["count"])


def aux_k_selection(pre_activations: torch.Tensor, dead: torch.Tensor, k_aux: int, style: str = "scaled",
                    dec_norm_sum: torch.Tensor | None = None) -> torch.Tensor:
    """Which (token, latent) pairs feed AuxK: per token, the top-k_aux DEAD latents. Bool [B, F].

    scaled (sparsify, Gao et al. 2024): ranked by pre-activation. fork (dictionary_learning's
    BatchTopK trainer): ranked by ReLU(pre)·Σ_m||d_i,m||. Pairs with pre <= 0 are dropped: their
    activation ReLU(pre) is 0, so they add nothing to the loss or to any gradient.
    """
    n_dead = int(dead.sum())
    mask = torch.zeros_like(pre_activations, dtype=torch.bool)
    if n_dead == 0:
        return mask
    with torch.no_grad():
        ranking = pre_activations
        if style == "fork":
            ranking = torch.relu(pre_activations) * dec_norm_sum.to(pre_activations.dtype)
        top = ranking.masked_fill(~dead, float("-inf")).topk(min(k_aux, n_dead), dim=-1, sorted=False)
        mask.scatter_(-1, top.indices, True)
    return mask & (pre_activations > 0)


def aux_k_normalised(residual: torch.Tensor, recon_aux: torch.Tensor, n_dead: int, k_aux: int,
                     style: str = "scaled") -> torch.Tensor:
    """AuxK's loss given the dead latents' reconstruction `recon_aux` [B, M·d] of `residual` (detached):
    ||e − ê||² over the residual's variance, mean over the batch; `scaled` also multiplies by
    min(n_dead / k_aux, 1) (sparsify), `fork` does not (dictionary_learning). Zero when nothing is dead."""
    if n_dead == 0:
        return recon_aux.new_zeros(()).float()
    residual = residual.float()
    l2_aux = (residual - recon_aux.float()).pow(2).sum(dim=-1).mean()
    denom = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
    if style == "fork":
        return (l2_aux / denom).nan_to_num(0.0)
    return min(n_dead / k_aux, 1.0) * l2_aux / denom.clamp_min(1e-12)


def aux_k_loss(residual: torch.Tensor, pre_activations: torch.Tensor, dead: torch.Tensor,
               W_dec_flat: torch.Tensor, k_aux: int, style: str = "scaled",
               dec_norm_sum: torch.Tensor | None = None) -> torch.Tensor:
    """AuxK (Gao et al. 2024), as used for BatchTopK crosscoders: the top-k_aux DEAD latents of each
    token must reconstruct what the live ones missed; normalised by the residual's variance.
    residual [B, M·d] (detached), pre_activations [B, F], dead [F] bool, W_dec_flat [F, M·d]. Zero when
    nothing is dead. Dense: the trainer's sparse path computes the same from the selected pairs.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre_activations.new_zeros(()).float()
    mask = aux_k_selection(pre_activations, dead, k_aux, style, dec_norm_sum)
    acts = torch.relu(pre_activations) * mask
    recon_aux = acts @ W_dec_flat.to(acts.dtype)
    return aux_k_normalised(residual, recon_aux, n_dead, k_aux, style)


def update_threshold(threshold: torch.Tensor, scores: torch.Tensor, beta: float) -> torch.Tensor:
    """BatchTopK inference threshold: EMA of the smallest selected score (the first value sets it)."""
    positive = scores[scores > 0]
    if positive.numel() == 0:
        return threshold
    smallest = positive.min().to(threshold.dtype)
    return torch.where(threshold < 0, smallest, beta * threshold + (1 - beta) * smallest)


def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Per model, the point minimising the summed distance to `points` [N, n_models, d] (Weiszfeld).

    The dictionary_learning fork's BatchTopK trainer sets the decoder bias to this on its first
    (normalised) batch: start at the mean, weights 1/||p − guess|| normalised over N, stop when every
    model's update moves less than `tol`. Returns [n_models, d].
    """
    points = points.float()
    guess = points.mean(dim=0)
    for _ in range(max_iter):
        previous = guess
        weights = 1.0 / torch.linalg.vector_norm(points - guess, dim=-1)
        weights = weights / weights.sum(dim=0, keepdim=True)
        guess = (weights.unsqueeze(-1) * points).sum(dim=0)
        if bool((torch.linalg.vector_norm(guess - previous, dim=-1) < tol).all()):
            break
    return guess
