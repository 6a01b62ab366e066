"""What the latents fire on: activation statistics, top-activating contexts, and `latents.html`.

Everything streams: `LatentStats` counts how often and how strongly each latent fires,
`TopContexts` keeps, for a fixed set of latents, the k contexts with the highest peak activation
together with that latent's activation on every token of each, so the page can highlight tokens
without running the models a second time. `render_latents_html` writes one self-contained page
(inline CSS, every piece of text escaped) to read the base-only, tuned-only and shared latents
side by side on general text and on reasoning traces.
"""

from __future__ import annotations

import html
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


# --- latents.html ------------------------------------------------------------------------------

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
    """Shown in the card's header (relative norm, cosine, frequencies, ν ratios...)."""
    examples: dict[str, list[Example]] = field(default_factory=dict)
    """Text kind ("general", "reasoning") -> examples, best first."""


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


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;margin:1em 0}
.card h3{margin:.1em 0 .4em;font-size:1em}.facts{font-size:.85em;color:#555}
.cols{display:flex;gap:1.2em}.col{flex:1;min-width:0}.col h4{margin:.4em 0;font-size:.9em}
.ex{font-family:ui-monospace,monospace;font-size:.8em;white-space:pre-wrap;word-break:break-all;
line-height:1.6;border-left:3px solid #eee;padding-left:.5em;margin:.3em 0}
.t{border-radius:2px}.peak{outline:1px solid #c00}.none{color:#999;font-size:.85em}
.base_only h3{color:#1f5fa8}.tuned_only h3{color:#b8460b}.shared h3{color:#2b7a2b}
"""


def _token_html(text: str, activation: float, max_activation: float, is_peak: bool) -> str:
    alpha = 0.0 if max_activation <= 0 else max(0.0, min(1.0, activation / max_activation))
    shown = text.replace("\n", "↵\n")
    cls = "t peak" if is_peak else "t"
    return (f'<span class="{cls}" style="background:rgba(255,140,0,{alpha:.2f})" '
            f'title="{activation:.3g}">{html.escape(shown, quote=True)}</span>')


def _example_html(example: Example, max_activation: float) -> str:
    spans = "".join(_token_html(t, a, max_activation, i == example.peak)
                    for i, (t, a) in enumerate(zip(example.tokens, example.activations, strict=True)))
    return f'<div class="ex" title="context {example.context}">{spans}</div>'


def _fact(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3g}"
    return str(value)


def render_latents_html(sections: dict[str, list[LatentCard]], *, title: str, intro: str = "",
                        text_kinds: Sequence[str] = ("general", "reasoning")) -> str:
    """One self-contained page: a section per latent class, a card per latent, one column per text
    kind, tokens shaded by the latent's activation (relative to its max over the shown examples)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    for section, cards in sections.items():
        parts.append(f"<h2>{html.escape(section)} ({len(cards)})</h2>")
        if not cards:
            parts.append('<p class="none">no live latent of this kind</p>')
        for card in cards:
            facts = " · ".join(f"{html.escape(k)} = {html.escape(_fact(v))}" for k, v in card.facts.items())
            peak = max((max(ex.activations, default=0.0) for exs in card.examples.values() for ex in exs), default=0.0)
            parts.append(f'<div class="card {html.escape(card.latent_class)}"><h3>latent {card.latent} '
                         f"({html.escape(card.latent_class)})</h3><div class=\"facts\">{facts}</div><div class=\"cols\">")
            for kind in text_kinds:
                examples = card.examples.get(kind, [])
                parts.append(f'<div class="col"><h4>{html.escape(kind)} text</h4>')
                parts.extend(_example_html(ex, peak) for ex in examples)
                if not examples:
                    parts.append('<p class="none">never fires here</p>')
                parts.append("</div>")
            parts.append("</div></div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
