"""What the latents fire on: activation statistics, top-activating contexts, and `latents.html`.

Everything streams: `LatentStats` counts how often and how strongly each latent fires,
`TopContexts` keeps, for a fixed set of latents, the k contexts with the highest peak activation
together with that latent's activation on every token of each, so the page can highlight tokens
without running the models a second time; `ActivationHistogram` bins the same latents'
activations. `LatentCard` gathers what latent_page.py renders into latents.html.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


class LatentStats:
    """Activation frequency, mean activation when active and max activation of every latent."""

    def __init__(self, n_latents: int):
        self.n_active = torch.zeros(n_latents, dtype=torch.long)
        self.sum_activation = torch.zeros(n_latents, dtype=torch.float64)
        self.max_activation = torch.zeros(n_latents, dtype=torch.float32)
        self.n_tokens = torch.zeros((), dtype=torch.long)

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> None:
        """f [N, n_latents] over the tokens that count (excluded positions already removed)."""
        if f.shape[0] == 0:
            return
        self.n_active += (f > 0).sum(0).cpu()
        self.sum_activation += f.sum(0, dtype=torch.float64).cpu()  # no float64 copy of [N, F]
        self.max_activation = torch.maximum(self.max_activation, f.float().max(0).values.cpu())
        self.n_tokens += f.shape[0]

    def frequency(self) -> torch.Tensor:
        return self.n_active.double() / max(int(self.n_tokens), 1)

    def mean_activation(self) -> torch.Tensor:
        """Mean activation over the tokens where the latent fires (NaN if it never does)."""
        return torch.where(self.n_active > 0, self.sum_activation / self.n_active.clamp_min(1).double(),
                           torch.full_like(self.sum_activation, float("nan")))

    MERGE = {"max_activation": "max"}
    """How torchrun ranks' states combine (reasondiff.core.streamed_pass.merge_states): all else adds."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"n_active": self.n_active, "sum_activation": self.sum_activation,
                "max_activation": self.max_activation, "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())


class TopContexts:
    """Per latent in `latents`, the k contexts with the highest peak activation (and the latent's
    activation on every token of them)."""

    def __init__(self, latents: Sequence[int], k: int, context_length: int):
        self.latents = torch.as_tensor(list(latents), dtype=torch.long)
        C = len(self.latents)
        self.k = k
        self.values = torch.zeros(k, C)  # peak activation; 0 = empty slot (ReLU latents are >= 0)
        self.context = torch.full((k, C), -1, dtype=torch.long)
        self.rows = torch.zeros(k, C, context_length)

    @torch.no_grad()
    def update(self, f: torch.Tensor, context_index: torch.Tensor) -> None:
        """f [B, T, n_latents] with excluded positions zeroed; context_index [B] (global ids)."""
        if len(self.latents) == 0:
            return
        rows = f[:, :, self.latents.to(f.device)].float().permute(0, 2, 1).cpu()  # [B, C, T]
        peaks = rows.max(dim=-1).values  # [B, C]
        ctx = context_index.cpu()[:, None].expand_as(peaks)
        values = torch.cat([self.values, peaks])
        top = values.topk(self.k, dim=0).indices  # [k, C]
        all_ctx = torch.cat([self.context, ctx])
        all_rows = torch.cat([self.rows, rows])
        self.values = values.gather(0, top)
        self.context = all_ctx.gather(0, top)
        self.rows = all_rows.gather(0, top[:, :, None].expand(-1, -1, all_rows.shape[-1]))

    def examples(self, latent: int) -> list[tuple[int, torch.Tensor]]:
        """[(context index, per-token activations)] best first, only contexts where it fired."""
        (where,) = (self.latents == latent).nonzero(as_tuple=True)
        if len(where) == 0:
            return []
        c = int(where[0])
        return [(int(self.context[i, c]), self.rows[i, c]) for i in range(self.k) if self.values[i, c] > 0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"latents": self.latents, "values": self.values, "context": self.context, "rows": self.rows}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not torch.equal(state["latents"], self.latents):
            raise ValueError("top-context checkpoint was taken for other latents")
        self.values, self.context, self.rows = state["values"], state["context"], state["rows"]

    def merge_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        """The top k over the torchrun ranks' top k's (each rank saw other contexts)."""
        self.load_state_dict(states[0])
        for state in states[1:]:
            values = torch.cat([self.values, state["values"]])
            top = values.topk(self.k, dim=0).indices
            all_rows = torch.cat([self.rows, state["rows"]])
            self.values = values.gather(0, top)
            self.context = torch.cat([self.context, state["context"]]).gather(0, top)
            self.rows = all_rows.gather(0, top[:, :, None].expand(-1, -1, all_rows.shape[-1]))


class ActivationHistogram:
    """Per latent in `latents`, how often its non-zero activations fall in each of a fixed set of
    log-spaced bins (streamed; the scale of a latent's activations is not known in advance, and
    log bins cover every scale at once). Activations beyond the outer edges land in the outer bins."""

    EDGES = torch.logspace(-4, 4, 65, dtype=torch.float64)
    """65 edges from 1e-4 to 1e4: 8 bins per decade."""

    def __init__(self, latents: Sequence[int]):
        self.latents = torch.as_tensor(list(latents), dtype=torch.long)
        self.counts = torch.zeros(len(self.latents), len(self.EDGES) - 1, dtype=torch.long)

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> None:
        """f [N, n_latents] over the tokens that count."""
        if len(self.latents) == 0 or f.shape[0] == 0:
            return
        values = f[:, self.latents.to(f.device)].double().cpu()  # [N, C]
        active = values > 0
        bins = (torch.bucketize(values, self.EDGES) - 1).clamp(0, self.counts.shape[1] - 1)
        columns = torch.arange(len(self.latents)).expand_as(bins)
        flat = (columns * self.counts.shape[1] + bins)[active]
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).view_as(self.counts)

    def histogram(self, latent: int) -> list[int]:
        """Counts per bin of `latent` (empty when it is not tracked)."""
        (where,) = (self.latents == latent).nonzero(as_tuple=True)
        return self.counts[int(where[0])].tolist() if len(where) else []

    MERGE = {"latents": "same"}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"latents": self.latents, "counts": self.counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not torch.equal(state["latents"], self.latents):
            raise ValueError("activation-histogram checkpoint was taken for other latents")
        self.counts = state["counts"].clone()


# --- latent cards ------------------------------------------------------------------------------

@dataclass
class Example:
    """A window of one context around its peak token, ready to render."""

    tokens: list[str]
    activations: list[float]
    peak: int
    """Index of the peak token inside `tokens`."""
    context: int


@dataclass
class LatentCard:
    latent: int
    latent_class: str
    facts: dict[str, float | int | str]
    """Shown in the card's header (relative norm, Δ, cosine, decoder norms, frequencies, β/ν...)."""
    examples: dict[str, list[Example]] = field(default_factory=dict)
    """Text kind ("general", "reasoning") -> examples, best first."""
    histograms: dict[str, list[int]] = field(default_factory=dict)
    """Text kind -> counts of non-zero activations per ActivationHistogram.EDGES bin."""
    logits: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    """Model -> {"promoted": [(token, direct logit effect)], "suppressed": [...]} (logit_effects.py)."""


def token_strings(tokenizer) -> Callable[[Sequence[int]], list[str]]:
    """Decode token ids one by one (cached), so a byte-level BPE shows readable pieces."""
    cache: dict[int, str] = {}

    def decode(ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in cache:
                cache[i] = tokenizer.decode([i])
            out.append(cache[i])
        return out

    return decode


def window_example(token_ids: Sequence[int], activations: torch.Tensor, *, window: int, context: int,
                   decode: Callable[[Sequence[int]], list[str]]) -> Example:
    peak = int(torch.as_tensor(activations).argmax())
    lo, hi = max(0, peak - window), min(len(token_ids), peak + window + 1)
    return Example(tokens=decode(token_ids[lo:hi]), activations=[float(a) for a in activations[lo:hi]],
                   peak=peak - lo, context=context)
