"""Pure maths of the scan: how far apart two models' activations and next-token distributions are.

- `relative_change`, `cosine`: per token, ||h_tuned - h_base|| / ||h_base|| and cos(h_base, h_tuned).
- `hsic_unbiased` / `MinibatchCKA`: linear CKA (Kornblith et al. 2019, "Similarity of Neural Network
  Representations Revisited") estimated over minibatches as in Nguyen, Raghu & Kornblith 2021
  ("Do Wide and Deep Networks Learn the Same Things?", Sec. 3.1): the unbiased HSIC estimator of
  Song et al. 2012 is averaged over batches for the numerator and both self-terms, so a scan
  streams three numbers per layer instead of keeping every activation. With one batch it is the
  debiased linear CKA of Kornblith et al.'s reference code. Invariant to a rotation, an isotropic
  scaling or a translation of either representation (the same one in every batch); CKA(X, X) = 1.
- `kl_divergence`: KL(p || q) per position from log-probabilities.
- `fraction_closed`: how much of the base/tuned KL gap an activation patch removes.
"""

from __future__ import annotations

import math

import torch


def relative_change(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """[n] ||tuned - base|| / ||base|| per row (float64); 0 where the rows are equal (even zero rows)."""
    base, tuned = base.double(), tuned.double()
    diff = (tuned - base).norm(dim=-1)
    return torch.where(diff == 0, torch.zeros_like(diff), diff / base.norm(dim=-1))


def cosine(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """[n] cosine similarity per row (float64); 1 where the rows are equal (even zero rows: an embedding's
    padding row is zero), 0 between a zero row and a non-zero one."""
    base, tuned = base.double(), tuned.double()
    cos = torch.nn.functional.cosine_similarity(base, tuned, dim=-1, eps=1e-300)
    return torch.where((base == tuned).all(dim=-1), torch.ones_like(cos), cos)


def hsic_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator with linear kernels (Song et al. 2012, JMLR 13, Eq. 5) of [n, d] and [n, d'].

    HSIC_1 = [tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), with K = XX',
    L = YY' and ~ = diagonal set to zero. Computed in feature space (d x d', never n x n): after
    centring the columns (the estimator is translation invariant, and centring keeps the numbers
    small) K1 = 0, so K~1 = -diag(K) and every term reduces to ||X'Y||_F^2, the row norms and
    their sums: HSIC_1 = [||X'Y||^2 - n/(n-2) r_x.r_y + s_x s_y / ((n-1)(n-2))] / (n(n-3)).
    """
    return hsic_unbiased_terms(x, y)[0]


def hsic_unbiased_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[3]: HSIC_1(X, Y), HSIC_1(X, X), HSIC_1(Y, Y) of [n, d] and [n, d'] (see `hsic_unbiased`)."""
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}")
    return hsic_unbiased_batched(x[None], y[None], torch.ones(1, n, dtype=torch.bool, device=x.device))[0][0]


def hsic_unbiased_batched(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per minibatch b of [B, T, d] / [B, T, d'] with the rows `mask` [B, T] kept: ([B, 3] HSIC_1(X, Y),
    HSIC_1(X, X), HSIC_1(Y, Y); [B] rows kept). A minibatch with fewer than 4 rows gets NaN.

    Rows that do not count are zeroed after centring on the kept rows' mean, so they add nothing to
    any product; n is the number of kept rows. The Frobenius products come from the T x T Gram
    matrices (||X'Y||^2 = <XX', YY'>) when T is below the width, else from d x d feature products:
    a few batched matrix products per call, whatever the masks."""
    x, y = x.double(), y.double()
    keep = mask.to(device=x.device, dtype=torch.float64)[..., None]
    n = keep.sum(dim=(1, 2))
    safe_n = n.clamp_min(1.0)[:, None, None]
    x = (x - (x * keep).sum(dim=1, keepdim=True) / safe_n) * keep
    y = (y - (y * keep).sum(dim=1, keepdim=True) / safe_n) * keep
    rows_x, rows_y = x.square().sum(dim=-1), y.square().sum(dim=-1)  # [B, T]
    if x.shape[1] < max(x.shape[2], y.shape[2]):
        gram_x, gram_y = x @ x.transpose(1, 2), y @ y.transpose(1, 2)
        products = torch.stack(((gram_x * gram_y).sum(dim=(1, 2)), gram_x.square().sum(dim=(1, 2)),
                                gram_y.square().sum(dim=(1, 2))), dim=1)
    else:
        xt = x.transpose(1, 2)
        products = torch.stack(((xt @ y).square().sum(dim=(1, 2)), (xt @ x).square().sum(dim=(1, 2)),
                                (y.transpose(1, 2) @ y).square().sum(dim=(1, 2))), dim=1)
    sum_x, sum_y = rows_x.sum(dim=1), rows_y.sum(dim=1)
    dots = torch.stack(((rows_x * rows_y).sum(dim=1), rows_x.square().sum(dim=1), rows_y.square().sum(dim=1)), dim=1)
    sums = torch.stack((sum_x * sum_y, sum_x * sum_x, sum_y * sum_y), dim=1)
    nn = n[:, None]
    hsic = (products - nn / (nn - 2) * dots + sums / ((nn - 1) * (nn - 2))) / (nn * (nn - 3))
    return hsic.masked_fill(nn < 4, math.nan), n.long()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased linear CKA of one batch: HSIC_1(X, Y) / sqrt(HSIC_1(X, X) HSIC_1(Y, Y))."""
    meter = MinibatchCKA(1)
    meter.update(0, x, y)
    return float(meter.value()[0])


class MinibatchCKA:
    """Linear CKA of `n_sites` representation pairs, streamed over batches (Nguyen et al. 2021):
    CKA = mean_b HSIC_1(X_b, Y_b) / sqrt(mean_b HSIC_1(X_b, X_b) * mean_b HSIC_1(Y_b, Y_b)).
    A batch with fewer than 4 rows is skipped (the estimator is undefined there)."""

    def __init__(self, n_sites: int) -> None:
        self.xy = torch.zeros(n_sites, dtype=torch.float64)
        self.xx = torch.zeros(n_sites, dtype=torch.float64)
        self.yy = torch.zeros(n_sites, dtype=torch.float64)
        self.batches = torch.zeros(n_sites, dtype=torch.long)

    def update(self, site: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """One minibatch [n, d] / [n, d'] at `site`."""
        self.update_batched(site, x[None], y[None], torch.ones(1, x.shape[0], dtype=torch.bool))

    def update_batched(self, site: int, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        """B minibatches at once: [B, T, d] / [B, T, d'], rows `mask` [B, T] kept in each."""
        hsic, _ = hsic_unbiased_batched(x, y, mask)
        hsic = hsic.cpu()
        counted = ~hsic.isnan().any(dim=1)
        total = hsic[counted].sum(dim=0)
        self.xy[site] += total[0]
        self.xx[site] += total[1]
        self.yy[site] += total[2]
        self.batches[site] += int(counted.sum())

    def value(self) -> torch.Tensor:
        """[n_sites] CKA (NaN where no batch counted or a self-term is not positive)."""
        denom = (self.xx * self.yy).sqrt()
        out = self.xy / denom
        bad = (self.batches == 0) | ~(self.xx > 0) | ~(self.yy > 0)
        return out.masked_fill(bad, math.nan)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"xy": self.xy, "xx": self.xx, "yy": self.yy, "batches": self.batches}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.xy, self.xx, self.yy, self.batches = (state[k].clone() for k in ("xy", "xx", "yy", "batches"))


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """[n] KL(p || q) = sum_v p_v (log p_v - log q_v) in nats, from log-probabilities [n, V] (float32+)."""
    logp, logq = logp.float(), logq.float()
    p = logp.exp()
    if bool(torch.isfinite(logp).all()):  # the usual case: one fused multiply-and-sum (2x faster)
        return torch.linalg.vecdot(p, logp - logq).clamp_min(0.0)
    # a p_v = 0 term is 0 even where log p_v = -inf (0 * -inf would be NaN)
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0)


def fraction_closed(kl_patched: float, kl_gap: float, *, min_gap: float = 0.0) -> float:
    """1 - sum KL(after patch) / sum KL(base || tuned) over the same tokens: 0 = the patch changes
    nothing, 1 = it removes the whole difference. NaN when the gap is below `min_gap` (identical
    models: nothing to close). Ratio of sums, not a mean of per-token ratios, so tokens where the
    models barely differ cannot dominate."""
    if not kl_gap > min_gap or not math.isfinite(kl_gap):
        return math.nan
    return 1.0 - kl_patched / kl_gap
