"""Sparse-times-dense products over the active (token, latent) pairs of a crosscoder batch.

With L0 active latents of F per token, only the encoder forward of a training step needs a dense
GEMM: the decoder forward, the gradient wrt the activations, and both weight gradients involve only
the B·L0 active pairs (sparsify's TopK trainer does the same for the decoder). Every product here
is one `embedding_bag` call, the fastest of the CPU candidates measured at the paper's shapes
(gather + index_add_, torch.sparse CSR, sampled_addmm: see docs/train.md), and the public API on any
device:

- `decode`: x̂_b = Σ_i f_bi W_dec[i], bags = tokens (token-major pairs);
- `latent_sums`: G_i = Σ_b w_bi T_b, bags = latents (latent-major pairs): the decoder-weight
  gradient (T = ∂L/∂x̂, w = f) and the transposed encoder-weight gradient (T = x, w = ∂L/∂pre);
- `latent_sums_and_dots`: the same plus the sampled dot products <T_b, W_i> on every pair (the
  gradient wrt the active f_bi), which autograd of `embedding_bag` gives from its per-sample-weight
  backward without ever forming the dense [B, F] product.

Latent-major order reads each W_dec row once per step and keeps the [B, M·d] operand in cache,
which is what makes the weight gradients cheap on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ActivePairs:
    """The (token, latent) pairs where a mask is True, in token-major and latent-major order."""

    n_tokens: int
    n_latents: int
    token_offsets: torch.Tensor
    """[B]: start of token b's pairs in the token-major order."""
    token_major_latent: torch.Tensor
    """[nnz]: latent of each token-major pair."""
    token_major_flat: torch.Tensor
    """[nnz]: b·F + i of each token-major pair (to gather values from a [B, F] tensor)."""
    latent_offsets: torch.Tensor
    """[F]: start of latent i's pairs in the latent-major order."""
    latent_major_token: torch.Tensor
    """[nnz]: token of each latent-major pair."""
    latent_major_latent: torch.Tensor
    """[nnz]: latent of each latent-major pair."""
    latent_major_flat: torch.Tensor
    """[nnz]: b·F + i of each latent-major pair."""

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> ActivePairs:
        """mask [B, F] bool. Two `nonzero` passes (over the mask and its transpose) give both orders
        already sorted, cheaper than sorting one of them."""
        B, n_latents = mask.shape
        flat = mask.reshape(-1).nonzero().squeeze(1)
        flat_t = mask.t().contiguous().reshape(-1).nonzero().squeeze(1)
        latent_t, token_t = flat_t // B, flat_t % B
        return cls(
            n_tokens=B, n_latents=n_latents,
            token_offsets=_offsets(mask.sum(dim=1)), token_major_latent=flat % n_latents, token_major_flat=flat,
            latent_offsets=_offsets(mask.sum(dim=0)), latent_major_token=token_t, latent_major_latent=latent_t,
            latent_major_flat=token_t * n_latents + latent_t,
        )

    @property
    def nnz(self) -> int:
        return int(self.token_major_flat.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(self.n_tokens * self.n_latents, 1)

    def token_major(self, dense: torch.Tensor) -> torch.Tensor:
        """Values of a [B, F] tensor at the pairs, token-major."""
        return dense.reshape(-1)[self.token_major_flat]

    def latent_major(self, dense: torch.Tensor) -> torch.Tensor:
        """Values of a [B, F] tensor at the pairs, latent-major."""
        return dense.reshape(-1)[self.latent_major_flat]

    def per_latent_sum(self, values_latent_major: torch.Tensor) -> torch.Tensor:
        """Σ_b over each latent's pairs -> [F] (differentiable)."""
        out = values_latent_major.new_zeros(self.n_latents)
        return out.index_add(0, self.latent_major_latent, values_latent_major)


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def decode(pairs: ActivePairs, values_token_major: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Σ_i f_bi W[i] per token: [B, M·d] for W [F, M·d] (no bias)."""
    return F.embedding_bag(pairs.token_major_latent, W, pairs.token_offsets, mode="sum",
                           per_sample_weights=values_token_major.to(W.dtype))


def latent_sums(pairs: ActivePairs, weights_latent_major: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """G[i] = Σ_b w_bi T[b] over each latent's pairs: [F, M·d] for T [B, M·d]."""
    return F.embedding_bag(pairs.latent_major_token, T, pairs.latent_offsets, mode="sum",
                           per_sample_weights=weights_latent_major.to(T.dtype))


def latent_sums_and_dots(pairs: ActivePairs, weights_latent_major: torch.Tensor, T: torch.Tensor,
                         W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`latent_sums(pairs, w, T)`, <T[b], W[i]> for every latent-major pair (b, i)).

    The dot products are the per-sample-weight gradient of the same `embedding_bag` with W as the
    incoming gradient: one fused pass over the pairs, no [B, F] matrix.
    """
    with torch.enable_grad():
        w = weights_latent_major.detach().to(T.dtype).requires_grad_(True)
        sums = F.embedding_bag(pairs.latent_major_token, T.detach(), pairs.latent_offsets, mode="sum",
                               per_sample_weights=w)
        (dots,) = torch.autograd.grad(sums, w, grad_outputs=W.detach().to(T.dtype))
    return sums.detach(), dots
