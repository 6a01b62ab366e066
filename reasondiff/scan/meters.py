"""Streamed sums of the scan: a few numbers per layer, never the activations themselves.

`RepresentationMeter` accumulates, per site (a residual layer or a block's attention/MLP output),
the sums behind the mean relative change, the mean cosine and the minibatch CKA. `PatchMeter`
accumulates, per patched layer and direction, the KL after the patch and the KL between the clean
models on the same tokens. Both save and load their state (a killed scan resumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reasondiff.scan.similarity import MinibatchCKA, cosine, fraction_closed, relative_change


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
    """Per direction and residual layer 0..N: summed KL after the patch; plus the clean KL(base || tuned)
    summed over the same tokens, the denominator of every fraction."""

    def __init__(self, directions: list[str], n_layers: int) -> None:
        self.directions = list(directions)
        self.kl_gap = torch.zeros((), dtype=torch.float64)
        self.kl_patched = torch.zeros(len(directions), n_layers + 1, dtype=torch.float64)
        self.n_tokens = torch.zeros((), dtype=torch.long)

    def update_gap(self, kl: torch.Tensor) -> None:
        self.kl_gap += kl.double().sum().cpu()
        self.n_tokens += kl.numel()

    def update_patched(self, direction: str, layer: int, kl: torch.Tensor) -> None:
        self.kl_patched[self.directions.index(direction), layer] += kl.double().sum().cpu()

    def mean_gap(self) -> float:
        return float(self.kl_gap) / int(self.n_tokens) if int(self.n_tokens) else math.nan

    def fractions(self, *, min_kl: float) -> dict[str, list[float]]:
        """direction -> [N+1] fraction of KL(base || tuned) closed by patching each layer (NaN when the
        mean gap is below `min_kl` nats per token, or nothing was patched)."""
        n = int(self.n_tokens)
        out = {}
        for i, direction in enumerate(self.directions):
            out[direction] = [fraction_closed(float(v) / n, self.mean_gap(), min_gap=min_kl) if n else math.nan
                              for v in self.kl_patched[i].tolist()]
        return out

    def state_dict(self) -> dict:
        return {"directions": self.directions, "kl_gap": self.kl_gap, "kl_patched": self.kl_patched,
                "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict) -> None:
        if list(state["directions"]) != self.directions:
            raise ValueError(f"saved directions {state['directions']} differ from {self.directions}")
        self.kl_gap, self.kl_patched = state["kl_gap"].clone(), state["kl_patched"].clone()
        self.n_tokens = state["n_tokens"].clone()
