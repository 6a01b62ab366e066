"""Latent Scaling (Minder et al. 2025, "Overcoming sparsity artifacts in crosscoders"): is a
"tuned-only" latent really absent from the base model, or did the L1 penalty just push its decoder
norm to one side?

For latent j with decoder direction d_j (its OWN model's decoder vector: tuned for tuned-only,
base for base-only) and activations f_j,n, the least-squares scale β with which β f_j,n d_j best
explains a target y_n has the closed form

    β_j = d_jᵀ (Σ_n f_j,n y_n) / (||d_j||² Σ_n f_j,n²),

computed here from streamed sums, so any number of tokens fits in memory. Targets, per model m,
all in the crosscoder's normalised space (where d_j lives):
  * activation      y = x_m
  * error           y = x_m − x̂_m + f_j W_dec[j, m]   (reconstruction error with latent j added back:
                     how much of d_j the model needs beyond what the other latents explain —
                     "complete shrinkage" when large for the other model)
  * reconstruction  y = x̂_m                          (how much the crosscoder's reconstruction carries
                     d_j — "latent decoupling" when other latents rebuild it in the other model)
The ratios ν_target = β_target(other model) / β_target(own model) are near 0 for a truly
model-specific latent and near 1 for one both models use.
"""

from __future__ import annotations

import torch

from reasondiff.crosscoder.geometry import BASE, TUNED

TARGETS = ("activation", "error", "reconstruction")
MODEL_NAMES = ("base", "tuned")


def closed_form_beta(direction: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> float:
    """argmin_β Σ_n ||β f_n d − y_n||² for one latent: direction [d], f [N], y [N, d]."""
    direction, f, y = direction.double(), f.double(), y.double()
    denom = direction.dot(direction) * f.pow(2).sum()
    return float(direction.dot((f[:, None] * y).sum(0)) / denom) if denom > 0 else float("nan")


def beta_columns() -> list[str]:
    cols = [f"beta_{target}_{name}" for target in TARGETS for name in MODEL_NAMES]
    return cols + [f"nu_{target}" for target in TARGETS]


class LatentScaling:
    """Streaming closed-form β for a set of latents, every target, both models.

    latents [J] (indices), own_model [J] (BASE or TUNED: whose decoder vector is d_j),
    W_dec [n_latents, 2, d] the crosscoder's UNFOLDED decoder.
    """

    def __init__(self, latents: torch.Tensor, own_model: torch.Tensor, W_dec: torch.Tensor):
        self.latents = latents.long().cpu()
        self.own_model = own_model.long().cpu()
        W = W_dec.detach().float()
        idx = self.latents.to(W.device)
        self.directions = W[idx, self.own_model.to(W.device)]  # [J, d]
        # d_jᵀ W_dec[j, m]: what latent j itself adds along d_j in model m (the "added back" part).
        self.self_projection = (W[idx] * self.directions[:, None]).sum(-1).double().cpu()  # [J, M]
        self.sq_norm = self.directions.pow(2).sum(-1).double().cpu()  # [J]
        J = len(self.latents)
        self.sum_f2 = torch.zeros(J, dtype=torch.float64)
        self.n_active = torch.zeros(J, dtype=torch.long)
        # numerators Σ_n f_j,n d_jᵀ y_n for y = x_m (activation) and y = x̂_m (reconstruction)
        self.sum_fx = torch.zeros(2, J, dtype=torch.float64)
        self.sum_frecon = torch.zeros(2, J, dtype=torch.float64)

    @torch.no_grad()
    def update(self, f: torch.Tensor, x_norm: torch.Tensor, recon_norm: torch.Tensor) -> None:
        """f [N, n_latents], x_norm / recon_norm [N, 2, d] (normalised space, excluded tokens removed)."""
        if len(self.latents) == 0 or f.shape[0] == 0:
            return
        directions = self.directions.to(f.device)
        g = f[:, self.latents.to(f.device)].float()  # [N, J]
        self.sum_f2 += g.double().pow(2).sum(0).cpu()
        self.n_active += (g > 0).sum(0).cpu()
        for m in (BASE, TUNED):
            self.sum_fx[m] += (g * (x_norm[:, m].float() @ directions.T)).double().sum(0).cpu()
            self.sum_frecon[m] += (g * (recon_norm[:, m].float() @ directions.T)).double().sum(0).cpu()

    def betas(self) -> dict[str, torch.Tensor]:
        """beta_<target>_<model> [J] and nu_<target> = β(other model) / β(own model) [J]."""
        denom = self.sq_norm * self.sum_f2
        nan = torch.full_like(denom, float("nan"))
        out: dict[str, torch.Tensor] = {}
        for m, name in enumerate(MODEL_NAMES):
            numerators = {
                "activation": self.sum_fx[m],
                "error": self.sum_fx[m] - self.sum_frecon[m] + self.self_projection[:, m] * self.sum_f2,
                "reconstruction": self.sum_frecon[m],
            }
            for target, num in numerators.items():
                out[f"beta_{target}_{name}"] = torch.where(denom > 0, num / denom.clamp_min(1e-300), nan)
        own = self.own_model
        for target in TARGETS:
            both = torch.stack([out[f"beta_{target}_{name}"] for name in MODEL_NAMES], dim=1)  # [J, 2]
            own_beta = both.gather(1, own[:, None]).squeeze(1)
            other_beta = both.gather(1, (1 - own)[:, None]).squeeze(1)
            out[f"nu_{target}"] = torch.where(own_beta.abs() > 1e-12, other_beta / own_beta, nan)
        return out

    MERGE = {"latents": "same"}
    """How torchrun ranks' states combine (reasondiff.core.streamed_pass.merge_states): the sums add."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"latents": self.latents, "sum_f2": self.sum_f2, "n_active": self.n_active,
                "sum_fx": self.sum_fx, "sum_frecon": self.sum_frecon}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not torch.equal(state["latents"], self.latents):
            raise ValueError("latent-scaling checkpoint was taken for other latents")
        for key in ("sum_f2", "n_active", "sum_fx", "sum_frecon"):
            getattr(self, key).copy_(state[key])
