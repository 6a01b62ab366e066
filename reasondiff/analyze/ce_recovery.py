"""CE-loss recovery: how much of each model's next-token loss survives splicing in the crosscoder's
reconstruction (Table 2).

CE recovered = (L_zero − L_spliced) / (L_zero − L_clean), per model, on held-out text, where
L_zero zero-ablates the hook point and L_spliced replaces it by that model's reconstruction from the
JOINT code of both models' activations (the crosscoder encodes the pair, so the base model's
reconstruction depends on the tuned model's activations too). The reconstruction lives in the
crosscoder's normalised space: it is divided by the scaling factors before being spliced in —
forgetting that is the classic silent bug, and the tests catch it.

Qwen's first position is an attention sink with a norm far above the rest and is usually left out
of harvesting, and so are later massive-activation tokens (`harvest.max_norm_ratio`; on Qwen the
first "." or "," of a context can carry 10-60x the median norm). The crosscoder never trained on
those positions, so here they are left untouched by both interventions (as in the Kissane/Nanda
replication, `act[:, 1:] = recon`) and their predictions are left out of every loss: the three
losses are over exactly the same tokens and differ only in what replaced the counted positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CE_COLUMNS = ("model", "ce_clean", "ce_zero_ablation", "ce_spliced", "ce_recovered", "n_tokens")
CONDITIONS = ("clean", "zero_ablation", "spliced")


def ce_recovered(ce_clean: float, ce_zero_ablation: float, ce_spliced: float) -> float:
    """(L_zero − L_spliced) / (L_zero − L_clean); NaN when ablating the hook changes nothing."""
    gap = ce_zero_ablation - ce_clean
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        return float("nan")
    return (ce_zero_ablation - ce_spliced) / gap


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-prediction CE [B, T-1] of logits [B, T, V]: position t predicts token t+1."""
    target = tokens[:, 1:].to(logits.device)
    # one row at a time: a float32 copy of [B, T, 152k] logits is GBs
    return torch.stack([F.cross_entropy(logits[row, :-1].float(), target[row], reduction="none")
                        for row in range(logits.shape[0])])


def counted_positions(x_raw: torch.Tensor, *, keep_first: bool, max_norm_ratio: float | None) -> torch.Tensor:
    """Bool [B, T] of the positions the crosscoder stands in for, by harvest's own rule
    (activations.select_positions): not the sink position 0 when `keep_first`, and no token whose
    norm in either model exceeds `max_norm_ratio` x the batch median. x_raw: [B, T, n_models, d]."""
    from reasondiff.hooks import select_positions

    return select_positions(x_raw, None, drop_first_position=keep_first, max_norm_ratio=max_norm_ratio)[0]


def splice(acts: torch.Tensor, replacement: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """`replacement` in the activations' dtype at the counted positions [B, T] (all when None); the
    other positions keep `acts`."""
    out = replacement.to(device=acts.device, dtype=acts.dtype)
    if counted is None:
        return out.clone()
    return torch.where(counted.to(acts.device).unsqueeze(-1), out, acts)


def reconstruct_raw(crosscoder, x_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents f, reconstruction in the normalised space, reconstruction in RAW units) of the pair
    x_raw [..., n_models, d]: normalise → encode → decode → denormalise (scaling factors undone)."""
    x_norm = crosscoder.normalise(x_raw.float())
    f = crosscoder.encode(x_norm)
    recon_norm = crosscoder.decode(f)
    return f, recon_norm, crosscoder.denormalise(recon_norm)


@torch.no_grad()
def forward_ce(model, tokens: torch.Tensor, hook, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """Per-prediction CE [B, T-1] of `model` on `tokens` with `fn` applied at the hook point
    (`fn` returns a replacement activation, or None to only observe)."""
    from reasondiff.hooks import residual_hook

    with residual_hook(model, hook, fn):
        if getattr(model.config, "final_logit_softcapping", None):
            return next_token_ce(model(input_ids=tokens.to(model.device)).logits, tokens)
        # The [B, T, vocab] logits of a 152k vocabulary are GBs: unembed one context at a time.
        hidden = model.base_model(input_ids=tokens.to(model.device)).last_hidden_state
    unembed = model.get_output_embeddings()
    return torch.cat([next_token_ce(unembed(hidden[row:row + 1]), tokens[row:row + 1]) for row in range(hidden.shape[0])])


@dataclass
class CERecoveryMeter:
    """Streaming CE sums per (model, condition); batches of any size combine exactly."""

    model_names: Sequence[str] = ("base", "tuned")

    def __post_init__(self) -> None:
        self.sums = torch.zeros(len(self.model_names), len(CONDITIONS), dtype=torch.float64)
        self.n_tokens = torch.zeros(len(self.model_names), dtype=torch.long)

    def add(self, model_index: int, condition: str, losses: torch.Tensor, counted: torch.Tensor) -> None:
        """losses [B, T-1] per prediction; counted [B, T] positions whose prediction counts."""
        keep = counted[:, :-1].to(losses.device)
        self.sums[model_index, CONDITIONS.index(condition)] += float(losses[keep].double().sum())
        if condition == "clean":
            self.n_tokens[model_index] += int(keep.sum())

    def rows(self) -> list[dict]:
        rows = []
        for m, name in enumerate(self.model_names):
            n = int(self.n_tokens[m])
            clean, zero, spliced = (float(self.sums[m, c]) / max(n, 1) for c in range(len(CONDITIONS)))
            rows.append({"model": name, "ce_clean": clean, "ce_zero_ablation": zero, "ce_spliced": spliced,
                         "ce_recovered": ce_recovered(clean, zero, spliced), "n_tokens": n})
        return rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums.clone(), "n_tokens": self.n_tokens.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sums.copy_(state["sums"])
        self.n_tokens.copy_(state["n_tokens"])


@torch.no_grad()
def ce_recovery_batch(models: Sequence, tokens: torch.Tensor, hook, crosscoder, meter: CERecoveryMeter,
                      *, keep_first: bool, max_norm_ratio: float | None = None) -> dict[str, torch.Tensor]:
    """Clean, zero-ablated and spliced CE of every model on one batch of contexts [B, T].

    Returns what the clean runs produced for the other analyses: raw activations x_raw
    [B, T, n_models, d] (float32, on the crosscoder's device), x_norm, latents f, the normalised
    reconstruction and `counted` [B, T], the positions that count (see `counted_positions`).
    """
    captured: list[torch.Tensor] = []

    def observe(acts: torch.Tensor) -> None:
        captured.append(acts.detach())

    clean = [forward_ce(model, tokens, hook, observe) for model in models]
    device = crosscoder.W_dec.device
    x_raw = torch.stack([a.to(device=device, dtype=torch.float32) for a in captured], dim=2)
    counted = counted_positions(x_raw, keep_first=keep_first, max_norm_ratio=max_norm_ratio)
    f, recon_norm, recon_raw = reconstruct_raw(crosscoder, x_raw)
    for m, model in enumerate(models):
        meter.add(m, "clean", clean[m], counted)
        meter.add(m, "zero_ablation", forward_ce(
            model, tokens, hook, lambda a: splice(a, torch.zeros_like(a), counted)), counted)
        meter.add(m, "spliced", forward_ce(
            model, tokens, hook, lambda a, m=m: splice(a, recon_raw[:, :, m], counted)), counted)
    return {"x_raw": x_raw, "x_norm": crosscoder.normalise(x_raw), "f": f, "recon_norm": recon_norm,
            "counted": counted}


def ce_table_markdown(rows: Sequence[dict]) -> str:
    from reasondiff.analyze.report import markdown_table

    return markdown_table(rows, CE_COLUMNS, floatfmt={"ce_recovered": ".1%", "n_tokens": "d"})
