"""Latents of crosscoders trained with different seeds, matched one to one by decoder cosine.

Two crosscoders trained on the same activations with different seeds learn many of the same
latents in a different order. A latent's *match* in another crosscoder is found on its concatenated
decoder [d_base; d_tuned] (normalised space), so a match has the same direction in BOTH models — and
hence about the same relative norm — and the matching is one to one (two latents of one seed never
share a partner):

1. every pair with cosine >= `threshold` is an edge of a bipartite graph (block products of the unit
   rows, O(F_a·F_b·2d) time and O(chunk·F_b) memory);
2. each connected component of that graph is matched by `scipy.optimize.linear_sum_assignment`
   (maximum total cosine over the component's edges). Components are where latents compete for a
   partner (near-duplicates); they are small, so this is the optimal one-to-one matching of the
   thresholded graph at a fraction of the cost of the full F x F assignment (O(F³) time, 8·F² bytes:
   2 GiB and hours for 16384 latents). The full assignment would also answer another question: it
   maximises the cosine summed over ALL latents, and may give a latent with a clear counterpart
   (cosine 0.95) a worse partner so that two below-threshold latents match a little better.

A latent's *stability* is the fraction of the other seeds in which it has a match (docs/null.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def unit_rows(W_dec: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[F, n_models, d] decoder -> [F, n_models·d] concatenated directions of norm 1 (zero rows stay 0)."""
    flat = W_dec.detach().float().reshape(W_dec.shape[0], -1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)


@dataclass
class Matching:
    partner: np.ndarray
    """[F_a] index of each latent's match in the other crosscoder, -1 when it has none."""
    cosine: np.ndarray
    """[F_a] cosine with the match (NaN when none)."""
    best_cosine: np.ndarray
    """[F_a] largest cosine with any latent of the other crosscoder (one-to-one or not)."""


def match_latents(W_a: torch.Tensor, W_b: torch.Tensor, *, threshold: float = 0.9, chunk: int = 2048) -> Matching:
    """The optimal one-to-one matching of crosscoder A's latents to B's among pairs with concatenated
    decoder cosine >= threshold (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    A, B = unit_rows(W_a), unit_rows(W_b)
    n_a, n_b = A.shape[0], B.shape[0]
    rows, cols, weights = [], [], []
    best = np.full(n_a, -np.inf)
    for start in range(0, n_a, chunk):
        cos = A[start:start + chunk] @ B.T
        best[start:start + chunk] = cos.max(dim=1).values.double().numpy() if n_b else -np.inf
        r, c = torch.nonzero(cos >= threshold, as_tuple=True)
        rows.append(r.numpy() + start)
        cols.append(c.numpy())
        weights.append(cos[r, c].double().numpy())
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    partner, cosine = np.full(n_a, -1), np.full(n_a, np.nan)
    if len(rows):
        graph = coo_matrix((np.ones(len(rows)), (rows, n_a + cols)), shape=(n_a + n_b, n_a + n_b))
        _, label = connected_components(graph, directed=False)
        component = label[rows]
        order = np.argsort(component, kind="stable")
        bounds = np.flatnonzero(np.diff(component[order])) + 1
        for edges in np.split(order, bounds):
            if len(edges) == 1:  # the usual case: one latent, one partner
                partner[rows[edges[0]]], cosine[rows[edges[0]]] = cols[edges[0]], weights[edges[0]]
                continue
            a_ids, a_at = np.unique(rows[edges], return_inverse=True)
            b_ids, b_at = np.unique(cols[edges], return_inverse=True)
            block = np.zeros((len(a_ids), len(b_ids)))  # no edge = weight 0: never chosen over an edge
            block[a_at, b_at] = weights[edges]
            chosen_a, chosen_b = linear_sum_assignment(block, maximize=True)
            for i, j in zip(chosen_a, chosen_b, strict=True):
                if block[i, j] >= threshold:
                    partner[a_ids[i]], cosine[a_ids[i]] = b_ids[j], block[i, j]
    return Matching(partner=partner, cosine=cosine, best_cosine=best)


def stability(matchings: list[Matching]) -> np.ndarray:
    """[F] fraction of the other seeds (one Matching each) in which each latent has a match (NaN with none)."""
    if not matchings:
        return np.full(0, np.nan)
    return np.mean([m.partner >= 0 for m in matchings], axis=0)


def spread_across_matches(values: np.ndarray, others: list[np.ndarray], matchings: list[Matching]) -> np.ndarray:
    """[F] max − min of a per-latent quantity (r, Δ) over the latent and its matches in the other
    seeds (0 for a latent without a match; NaN values are ignored)."""
    stacked = [np.asarray(values, dtype=float)]
    for other, m in zip(others, matchings, strict=True):
        matched = np.full(len(values), np.nan)
        ok = m.partner >= 0
        matched[ok] = np.asarray(other, dtype=float)[m.partner[ok]]
        stacked.append(matched)
    table = np.vstack(stacked)
    high = np.nan_to_num(table, nan=-np.inf).max(axis=0)
    low = np.nan_to_num(table, nan=np.inf).min(axis=0)
    return np.where(np.isfinite(high) & np.isfinite(low), high - low, 0.0)
