"""Streamed sums of the scan: a few numbers per layer, never the activations themselves.

`RepresentationMeter` accumulates, per site (a residual layer or a block's attention/MLP output),
the sums behind the mean relative change, the mean cosine and the minibatch CKA. `PatchMeter`
accumulates, per patched layer, direction and context, the KL after the patch and the KL between
the clean models on the same tokens, so its fractions come with bootstrap intervals over contexts.
Both save and load their state (a killed scan resumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from reasondiff.scan.similarity import MinibatchCKA, cosine, fraction_closed, relative_change

CI_LEVEL = 0.95
"""Level of the bootstrap intervals of the fractions closed."""


@dataclass(frozen=True)
class Site:
    """Where two activations are compared: `kind` resid (layer 0..N) or attn_out / mlp_out (block 0..N-1)."""

    kind: str
    layer: int
    hook: str


def sites_of(n_layers: int, *, components: bool) -> list[Site]:
    """Residual layers 0..N (N = final residual, blocks.{N-1}.hook_resid_post), then components."""
    out = [Site("resid", layer, resid_hook_name(layer, n_layers)) for layer in range(n_layers + 1)]
    if components:
        for kind in ("attn_out", "mlp_out"):
            out += [Site(kind, layer, f"blocks.{layer}.hook_{kind}") for layer in range(n_layers)]
    return out


def resid_hook_name(layer: int, n_layers: int) -> str:
    """TransformerLens name of residual-stream layer `layer` (0..n_layers) of an n_layers model."""
    if not 0 <= layer <= n_layers:
        raise ValueError(f"residual layer {layer} outside 0..{n_layers}")
    return f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"


class RepresentationMeter:
    """Per site: mean ||h_t - h_b|| / ||h_b||, mean cos(h_b, h_t), minibatch linear CKA, token count."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        n = len(sites)
        self.sum_relative_change = torch.zeros(n, dtype=torch.float64)
        self.sum_cosine = torch.zeros(n, dtype=torch.float64)
        self.n_tokens = torch.zeros(n, dtype=torch.long)
        self.cka = MinibatchCKA(n)

    def update(self, site: int, base: torch.Tensor, tuned: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add one batch at `site`: activations [B, T, d] with the positions `keep` [B, T] counted
        (default all); each context is one CKA minibatch. [n, d] is one context of n tokens."""
        if base.dim() == 2:
            base, tuned = base[None], tuned[None]
        if keep is None:
            keep = torch.ones(base.shape[:2], dtype=torch.bool)
        keep = keep.to(base.device)
        if not keep.any():
            return
        self.sum_relative_change[site] += relative_change(base[keep], tuned[keep]).sum().cpu()
        self.sum_cosine[site] += cosine(base[keep], tuned[keep]).sum().cpu()
        self.n_tokens[site] += int(keep.sum())
        self.cka.update_batched(site, base, tuned, keep)

    def rows(self) -> list[dict]:
        n = self.n_tokens.double()
        rel, cos = (self.sum_relative_change / n).tolist(), (self.sum_cosine / n).tolist()
        cka = self.cka.value().tolist()
        return [{"site": s.kind, "layer": s.layer, "hook": s.hook, "n_tokens": int(self.n_tokens[i]),
                 "relative_change": rel[i], "cosine": cos[i], "cka": cka[i]} for i, s in enumerate(self.sites)]

    def state_dict(self) -> dict:
        return {"sum_relative_change": self.sum_relative_change, "sum_cosine": self.sum_cosine,
                "n_tokens": self.n_tokens, "cka": self.cka.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sum_relative_change = state["sum_relative_change"].clone()
        self.sum_cosine = state["sum_cosine"].clone()
        self.n_tokens = state["n_tokens"].clone()
        self.cka.load_state_dict(state["cka"])


class PatchMeter:
    """Per direction, residual layer 0..N and patched context: the KL after the patch summed over the
    context's tokens; plus the clean KL(base || tuned) and the token count per context, the
    denominator of every fraction. Kept per context so the fractions get bootstrap intervals over
    contexts (`intervals`), like analyze's CE recovery."""

    def __init__(self, directions: list[str], n_layers: int, n_contexts: int = 1) -> None:
        self.directions = list(directions)
        self.kl_gap = torch.zeros(n_contexts, dtype=torch.float64)
        self.kl_patched = torch.zeros(len(directions), n_layers + 1, n_contexts, dtype=torch.float64)
        self.n_tokens = torch.zeros(n_contexts, dtype=torch.long)

    @staticmethod
    def _contexts(kl: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        """The context of each token (all in context 0 when not given)."""
        return torch.zeros(kl.numel(), dtype=torch.long) if contexts is None else contexts.reshape(-1).long().cpu()

    def update_gap(self, kl: torch.Tensor, contexts: torch.Tensor | None = None) -> None:
        """Add the clean KL of tokens [n], `contexts` [n] the (global) context index of each."""
        where = self._contexts(kl, contexts)
        self.kl_gap.index_add_(0, where, kl.reshape(-1).double().cpu())
        self.n_tokens.index_add_(0, where, torch.ones_like(where))

    def update_patched(self, direction: str, layer: int, kl: torch.Tensor, contexts: torch.Tensor | None = None) -> None:
        self.kl_patched[self.directions.index(direction), layer].index_add_(
            0, self._contexts(kl, contexts), kl.reshape(-1).double().cpu())

    @property
    def n_contexts(self) -> int:
        """Contexts with at least one counted token."""
        return int((self.n_tokens > 0).sum())

    def total_tokens(self) -> int:
        return int(self.n_tokens.sum())

    def mean_gap(self) -> float:
        n = self.total_tokens()
        return float(self.kl_gap.sum()) / n if n else math.nan

    def fractions(self, *, min_kl: float) -> dict[str, list[float]]:
        """direction -> [N+1] fraction of KL(base || tuned) closed by patching each layer (NaN when the
        mean gap is below `min_kl` nats per token, or nothing was patched)."""
        n = self.total_tokens()
        out = {}
        for i, direction in enumerate(self.directions):
            out[direction] = [fraction_closed(float(v) / n, self.mean_gap(), min_gap=min_kl) if n else math.nan
                              for v in self.kl_patched[i].sum(dim=-1).tolist()]
        return out

    def intervals(self, *, min_kl: float, resamples: int, seed: int,
                  level: float = CI_LEVEL) -> dict[str, tuple[list[float], list[float]]]:
        """direction -> ([N+1] low, [N+1] high): percentile bootstrap over the patched contexts
        (`bootstrap_fractions`); NaN with fewer than two contexts."""
        used = self.n_tokens > 0
        low, high = bootstrap_fractions(self.kl_gap[used].numpy(), self.kl_patched[:, :, used].numpy(),
                                        self.n_tokens[used].numpy(), min_kl=min_kl, resamples=resamples, seed=seed,
                                        level=level)
        return {d: (low[i].tolist(), high[i].tolist()) for i, d in enumerate(self.directions)}

    def state_dict(self) -> dict:
        return {"directions": self.directions, "kl_gap": self.kl_gap, "kl_patched": self.kl_patched,
                "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict) -> None:
        if list(state["directions"]) != self.directions:
            raise ValueError(f"saved directions {state['directions']} differ from {self.directions}")
        if state["kl_patched"].shape != self.kl_patched.shape:
            raise ValueError(f"saved patching sums {tuple(state['kl_patched'].shape)} are not per context "
                             f"{tuple(self.kl_patched.shape)}")
        self.kl_gap, self.kl_patched = state["kl_gap"].clone(), state["kl_patched"].clone()
        self.n_tokens = state["n_tokens"].clone()


def bootstrap_fractions(kl_gap: np.ndarray, kl_patched: np.ndarray, n_tokens: np.ndarray, *, min_kl: float,
                        resamples: int, seed: int, level: float = CI_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap of the fractions closed over contexts: resample the C contexts with
    replacement and recompute each fraction from the resampled sums (a ratio of sums, as the point
    estimate). kl_gap [C], kl_patched [D, L, C], n_tokens [C] -> (low, high), each [D, L]. A resample
    whose mean gap is below `min_kl` has no fraction and is left out; (NaN, NaN) with C < 2."""
    n_contexts = kl_gap.shape[0]
    shape = kl_patched.shape[:-1]
    if n_contexts < 2 or resamples < 1:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    draws = np.random.default_rng(seed).integers(0, n_contexts, size=(resamples, n_contexts))
    gap = kl_gap[draws].sum(axis=1)                                   # [R]
    tokens = n_tokens[draws].sum(axis=1)
    patched = kl_patched[..., draws].sum(axis=-1)                     # [D, L, R]
    defined = (tokens > 0) & np.isfinite(gap) & (gap > min_kl * np.maximum(tokens, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        fractions = np.where(defined, 1.0 - patched / np.where(gap > 0, gap, 1.0), np.nan)
    tail = 100.0 * (1.0 - level) / 2.0
    if not defined.any():
        return np.full(shape, np.nan), np.full(shape, np.nan)
    low, high = np.nanpercentile(fractions[..., defined], [tail, 100.0 - tail], axis=-1)
    return low, high
