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
- `sampled_dots`: <T_b, W_i> on every pair (the gradient wrt the active f_bi with T = ∂L/∂x̂),
  `embedding_bag`'s per-sample-weight backward: never the dense [B, F] product.

Latent-major order reads each W_dec row once per step and keeps the [B, M·d] operand in cache,
which is what makes the weight gradients cheap on a CPU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SORT_MAX_DENSITY = 0.04
"""Up to this L0/F the latent-major order is sorted from the token-major one: at 2×896 → 14336
latents, batch 1024, on one core of the shared (loaded) machine, a stable sort of the pairs costs
11 / 42 / 450 ms at L0/F 0.5% / 2% / 10%, the transposed mask's copy + `nonzero` 137 / 155 / 235 ms."""


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
        """mask [B, F] bool. One `nonzero` pass gives the token-major order; the latent-major order is
        a stable sort of its latents when the pairs are few (≤ SORT_MAX_DENSITY of the mask), else a
        second `nonzero` over the transposed mask (sorting 3M pairs costs more than the transpose)."""
        B, n_latents = mask.shape
        flat = mask.reshape(-1).nonzero().squeeze(1)
        token_latent = flat % n_latents
        if flat.numel() <= SORT_MAX_DENSITY * mask.numel():
            # stable: within a latent the pairs keep their (ascending) token order
            latent_t, order = torch.sort(token_latent, stable=True)
            token_t = flat[order] // n_latents
        else:
            flat_t = mask.t().contiguous().reshape(-1).nonzero().squeeze(1)
            latent_t, token_t = flat_t // B, flat_t % B
        # offsets by binary search in the sorted indices: a bool mask.sum(dim) would first
        # cast the whole [B, F] mask to int64 (10x the time of everything else here)
        starts = torch.arange(max(B, n_latents), device=mask.device)
        return cls(
            n_tokens=B, n_latents=n_latents,
            token_offsets=torch.searchsorted(flat, starts[:B] * n_latents), token_major_latent=token_latent,
            token_major_flat=flat,
            latent_offsets=torch.searchsorted(latent_t, starts[:n_latents]), latent_major_token=token_t,
            latent_major_latent=latent_t, latent_major_flat=token_t * n_latents + latent_t,
        )

    def latent_counts(self) -> torch.Tensor:
        """[F]: active pairs per latent (> 0: the latent fired in this batch), from the offsets alone,
        never a pass over the [B, F] mask."""
        ends = torch.cat([self.latent_offsets[1:], self.latent_offsets.new_tensor([self.nnz])])
        return ends - self.latent_offsets

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


def decode(pairs: ActivePairs, values_token_major: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Σ_i f_bi W[i] per token: [B, M·d] for W [F, M·d] (no bias)."""
    return F.embedding_bag(pairs.token_major_latent, W, pairs.token_offsets, mode="sum",
                           per_sample_weights=values_token_major.to(W.dtype))


def latent_sums(pairs: ActivePairs, weights_latent_major: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """G[i] = Σ_b w_bi T[b] over each latent's pairs: [F, M·d] for T [B, M·d]."""
    return F.embedding_bag(pairs.latent_major_token, T, pairs.latent_offsets, mode="sum",
                           per_sample_weights=weights_latent_major.to(T.dtype))


def sampled_dots(pairs: ActivePairs, T: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """<T[b], W[i]> for every latent-major pair (b, i): [nnz], without the dense [B, F] product.

    This is the per-sample-weight gradient of `latent_sums` with W as the incoming gradient. torch's
    CPU kernel for it is one serial loop of dot products, so the pairs are split across the intra-op
    threads (each call releases the GIL); where that private op is missing, autograd of the public
    `embedding_bag` computes the same.
    """
    T, W = T.detach(), W.detach().to(T.dtype)
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is not None:
        try:
            return _split_over_threads(op, pairs, T, W)
        except RuntimeError:  # a torch whose private signature differs: fall through to the public route
            pass
    with torch.enable_grad():
        w = torch.ones(pairs.nnz, dtype=T.dtype, device=T.device, requires_grad=True)
        sums = F.embedding_bag(pairs.latent_major_token, T, pairs.latent_offsets, mode="sum", per_sample_weights=w)
        (dots,) = torch.autograd.grad(sums, w, grad_outputs=W)
    return dots


_POOL: ThreadPoolExecutor | None = None


def _split_over_threads(op, pairs: ActivePairs, T: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    global _POOL
    tokens, latents, offsets = pairs.latent_major_token, pairs.latent_major_latent, pairs.latent_offsets
    n = torch.get_num_threads() if T.device.type == "cpu" else 1
    if n <= 1 or pairs.nnz < 4096:
        return op(W, T, tokens, offsets, latents, 0, -1)
    if _POOL is None or _POOL._max_workers < n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sampled_dots")
    cuts = [pairs.nnz * j // n for j in range(n + 1)]
    parts = [_POOL.submit(op, W, T, tokens[a:b], offsets, latents[a:b], 0, -1) for a, b in zip(cuts, cuts[1:], strict=False)]
    return torch.cat([part.result() for part in parts])
