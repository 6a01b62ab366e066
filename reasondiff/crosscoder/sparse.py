"""Sparse-times-dense products over the active (token, latent) pairs of a crosscoder batch.

With L0 active latents of F per token, only the encoder forward of a training step needs a dense
GEMM: the decoder forward, the gradient wrt the activations, and both weight gradients involve only
the B·L0 active pairs (sparsify's TopK trainer does the same for the decoder). Each product has two
implementations that give the same numbers up to float rounding, chosen per `ActivePairs.kernel`:

- the C++/OpenMP kernels of `pairs_kernel.cpp` (CPU; `pairs_kernel.py` builds them): latent-major
  over column blocks of the rows, each W row read once per product, with the row norms, the
  per-pair dots and the decoder-norm penalty's term fused into the same passes;
- torch ops (any device, and the fallback where no compiler is available): one `embedding_bag`
  call per product, the fastest of the torch CPU candidates measured at the paper's shapes
  (gather + index_add_, torch.sparse CSR, sampled_addmm: see docs/train.md).

The products:
- `decode`: x̂_b = b_dec + Σ_i f_bi W_dec[i] (and the decoder rows' per-model norms);
- `latent_sums`: G_i = Σ_b w_bi T_b, bags = latents (latent-major pairs);
- `decoder_weight_gradient`: ∂L/∂W_dec[i] = Σ_b f_bi ∂L/∂x̂_b + s_i,m W_dec[i, m] (the norm
  penalty) and the dots <∂L/∂x̂_b, W_dec[i]> on every pair (the gradient wrt the active f_bi,
  never the dense [B, F] product);
- `encoder_weight_gradient`: ∂L/∂W_enc[:, i] = Σ_b ∂L/∂f_bi x_b and ∂L/∂b_enc[i] = Σ_b ∂L/∂f_bi.

Latent-major order reads each W row once per step and keeps the [B, M·d] operand in cache,
which is what makes the weight gradients cheap on a CPU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType

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
    kernel: ModuleType | None = field(default=None, compare=False)
    """The compiled kernels (`pairs_kernel.load()`) the products run with; None = torch ops."""
    values: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """`above`: [nnz] the scores (+ offset) at the pairs, latent-major, as they were when the pairs
    were found (the kernel reads them during its scan: no gather). None for `from_mask`."""

    @classmethod
    def from_mask(cls, mask: torch.Tensor, kernel: ModuleType | None = None) -> ActivePairs:
        """mask [B, F] bool. Kernel: one pass over the mask's rows and a counting sort. Torch: one
        `nonzero` pass gives the token-major order; the latent-major order is a stable sort of its
        latents when the pairs are few (≤ SORT_MAX_DENSITY of the mask), else a second `nonzero`
        over the transposed mask (sorting 3M pairs costs more than the transpose)."""
        if kernel is not None and mask.device.type == "cpu":
            return cls._from_kernel(mask.shape, kernel.pairs_from_mask(mask.contiguous()), kernel)
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
            latent_major_latent=latent_t, latent_major_flat=token_t * n_latents + latent_t, kernel=kernel,
        )

    @classmethod
    def above(cls, scores: torch.Tensor, threshold: float = 0.0, kernel: ModuleType | None = None, *,
              offset: torch.Tensor | None = None) -> ActivePairs:
        """The pairs where scores [B, F] + offset [F] > threshold (the l1 variant's ReLU support, the
        offset its encoder bias), with their values in `values`. The kernel reads the fp32 scores
        directly, adds the offset as it scans and reads the values at the pairs as it sorts them:
        neither the [B, F] bool mask nor the biased [B, F] pre-activations are ever written (each a
        pass over 58 MB at the paper's shapes)."""
        if kernel is not None and scores.device.type == "cpu" and scores.dtype == torch.float32:
            offset = offset.detach().float().contiguous() if offset is not None else scores.new_empty(0)
            return cls._from_kernel(scores.shape, kernel.pairs_above(scores.contiguous(), float(threshold), offset),
                                    kernel, with_values=True)
        biased = scores if offset is None else scores + offset
        pairs = cls.from_mask(biased > threshold, kernel)
        pairs.values = pairs.latent_major(biased)
        return pairs

    @classmethod
    def _from_kernel(cls, shape: torch.Size, parts: list[torch.Tensor], kernel: ModuleType, *,
                     with_values: bool = False) -> ActivePairs:
        B, n_latents = shape
        token_offsets, token_latent, token_flat, latent_offsets, latent_token, latent_latent, latent_flat, values = parts
        return cls(n_tokens=B, n_latents=n_latents, token_offsets=token_offsets, token_major_latent=token_latent,
                   token_major_flat=token_flat, latent_offsets=latent_offsets, latent_major_token=latent_token,
                   latent_major_latent=latent_latent, latent_major_flat=latent_flat, kernel=kernel,
                   values=values if with_values else None)

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


def _on_kernel(pairs: ActivePairs, *tensors: torch.Tensor) -> bool:
    return pairs.kernel is not None and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def decode(pairs: ActivePairs, f: torch.Tensor | None, W: torch.Tensor, *, bias: torch.Tensor | None = None,
           n_models: int | None = None, values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x̂ [B, M·d], norms): x̂_b = bias + Σ_i f_bi W[i] for f [B, F] read at the pairs and
    W [F, M·d]; with `n_models`, also ||W[i, m]|| [F, M] for every row (the kernel gets them from
    the same read of W; the torch path is token-major `embedding_bag` + `norm`). `values`: f at the
    pairs, latent-major, when the caller has them (the kernel then needs no f; the torch path does)."""
    F_, K = W.shape
    if _on_kernel(pairs, W, *(t for t in (f, values) if t is not None)):
        values = values if values is not None else pairs.latent_major(f)
        bias_flat = bias.reshape(K).to(W.dtype).contiguous() if bias is not None else W.new_empty(0)
        recon, norms = pairs.kernel.decode(pairs.latent_offsets, pairs.latent_major_token, values.contiguous(),
                                           W.contiguous(), bias_flat, pairs.n_tokens, n_models or 1,
                                           n_models is not None)
        return recon, (norms if n_models is not None else None)
    if f is None:
        raise ValueError("sparse.decode: the torch path reads f token-major; pass the dense f")
    recon = F.embedding_bag(pairs.token_major_latent, W, pairs.token_offsets, mode="sum",
                            per_sample_weights=pairs.token_major(f).to(W.dtype))
    if bias is not None:
        recon = recon + bias.reshape(1, K).to(recon.dtype)
    norms = W.view(F_, n_models, K // n_models).norm(dim=-1) if n_models is not None else None
    return recon, norms


def latent_sums(pairs: ActivePairs, weights_latent_major: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """G[i] = Σ_b w_bi T[b] over each latent's pairs: [F, M·d] for T [B, M·d]."""
    if _on_kernel(pairs, weights_latent_major, T):
        out = T.new_empty(pairs.n_latents, T.shape[1])
        return _kernel_sums(pairs, weights_latent_major, T, None, None, out, 1, False)[0]
    return F.embedding_bag(pairs.latent_major_token, T, pairs.latent_offsets, mode="sum",
                           per_sample_weights=weights_latent_major.to(T.dtype))


def decoder_weight_gradient(pairs: ActivePairs, f_latent_major: torch.Tensor, g_recon: torch.Tensor,
                            W: torch.Tensor, *, row_scale: torch.Tensor | None = None,
                            accumulate: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(∂L/∂W [F, M·d], dots [nnz], ||∂L/∂W||² or None) from ∂L/∂x̂ `g_recon` [B, M·d], W [F, M·d]
    and the active f: ∂L/∂W[i] = Σ_b f_bi g_b (+ row_scale[i, m] · W[i, m]: the decoder-norm
    penalty's term, a [F, M] scale); dots[p] = <g_b, W[i]> for every latent-major pair p = (b, i).
    `accumulate`: add ∂L/∂W into this [F, M·d] tensor (in place) and return it. The squared norm
    (of the returned gradient, for the grad-norm clip) comes with the kernel, which sums it as it
    writes the rows; the torch path leaves it to the caller (None)."""
    F_, K = W.shape
    M = row_scale.shape[1] if row_scale is not None else 1
    if _on_kernel(pairs, f_latent_major, g_recon, W):
        out = accumulate if accumulate is not None else W.new_empty(F_, K)
        scale = row_scale.contiguous() if row_scale is not None else W.new_empty(0)
        g_W, dots, _, row_sq = _kernel_sums(pairs, f_latent_major, g_recon, W, scale, out, M, accumulate is not None)
        return g_W, dots, row_sq.sum()
    g_W = latent_sums(pairs, f_latent_major, g_recon)
    dots = sampled_dots(pairs, g_recon, W)
    if row_scale is not None:
        g_W.view(F_, M, K // M).addcmul_(row_scale.unsqueeze(-1), W.view(F_, M, K // M))
    if accumulate is not None:
        g_W = accumulate.add_(g_W)
    return g_W, dots, None


def encoder_weight_gradient(pairs: ActivePairs, g_f_latent_major: torch.Tensor, x: torch.Tensor, *,
                            accumulate: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(∂L/∂W_enc latent-major [F, M·d], ∂L/∂b_enc [F], ||∂L/∂W_enc||² or None) from ∂L/∂f on the
    pairs and the inputs x [B, M·d]. `accumulate`: add both into these tensors (in place) and
    return them. The squared norm as in `decoder_weight_gradient`."""
    if _on_kernel(pairs, g_f_latent_major, x):
        if accumulate is None:
            g_W, _, g_b, row_sq = _kernel_sums(pairs, g_f_latent_major, x, None, None,
                                               x.new_empty(pairs.n_latents, x.shape[1]), 1, False)
            return g_W, g_b, row_sq.sum()
        g_W, _, g_b, row_sq = _kernel_sums(pairs, g_f_latent_major, x, None, None, accumulate[0], 1, True)
        return g_W, accumulate[1].add_(g_b), row_sq.sum()
    g_W, g_b = latent_sums(pairs, g_f_latent_major, x), pairs.per_latent_sum(g_f_latent_major)
    if accumulate is not None:
        return accumulate[0].add_(g_W), accumulate[1].add_(g_b), None
    return g_W, g_b, None


def _kernel_sums(pairs: ActivePairs, weights: torch.Tensor, T: torch.Tensor, W: torch.Tensor | None,
                 row_scale: torch.Tensor | None, out: torch.Tensor, n_models: int, accumulate: bool):
    empty = T.new_empty(0)
    return pairs.kernel.latent_sums(pairs.latent_offsets, pairs.latent_major_token, weights.contiguous(),
                                    T.contiguous(), W.contiguous() if W is not None else empty,
                                    row_scale if row_scale is not None else empty, out, pairs.n_latents,
                                    n_models, accumulate)


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
