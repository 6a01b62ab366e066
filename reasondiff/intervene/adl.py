"""The Activation Difference Lens (Minder et al. 2025, "Narrow Finetuning Leaves Clearly Readable Traces in
Activation Differences"; diffing-toolkit's activation_difference_lens): the difference-of-means baseline
every crosscoder latent is read against.

Definition, as the reference code computes it (diffing-toolkit, method.py `compute_differences`): on
ordinary text, both models' residual activations at one layer for the first n positions of each
sequence; per position j the mean over sequences of h_tuned[j] − h_base[j], one vector δ_j per position
(their k = 5 first positions are the ones the paper reads). Each δ_j is read through the logit lens —
softmax of the unembedding of the final norm of δ_j (and of −δ_j, the suppressed tokens) — of the
fine-tuned model in the reference code; here through both models' final norm and unembedding, the
base model's first (what the base model would make of the shift; the tuned model's is the paper's).

Here: at the crosscoder's hook (so the baseline and the crosscoder read the same activations), on the same
held-out general text as the other measures (and, as a second vector, on the reasoning conversations, from
each assistant turn's first token on: the reference code's `load_and_tokenize_chat_dataset` places position 0
of chat data there, right after the chat template's generation prompt), in raw units. Besides the per-position δ_j, one pooled vector, the mean of tuned − base over the first k
positions the crosscoder covers (not the sink position it never saw, no massive-activation token): the
vector `steer` adds by default (`intervene.adl_steer_position` picks one position's δ_j instead, as the
paper steers). The reference code scales a steering vector to the fine-tuned model's mean activation
norm and searches a strength; here the α grid multiplies the vector's own norm, so α = 1 adds the mean
difference itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reasondiff.lm.resume_forward import final_norm, log_probs

ADL_TOKEN_COLUMNS = ("text", "window", "position", "model", "direction", "rank", "token_id", "token", "probability",
                     "norm", "n_averaged", "n_skipped")


class DifferenceMeans:
    """Streamed sums of tuned − base over the first k positions (passes.first_position_differences)."""

    def __init__(self, k: int, d_model: int):
        self.sum = torch.zeros(k, d_model, dtype=torch.float64)
        self.count = torch.zeros(k, dtype=torch.float64)
        self.pooled_sum = torch.zeros(d_model, dtype=torch.float64)
        self.pooled_count = torch.zeros((), dtype=torch.float64)
        self.skipped = torch.zeros((), dtype=torch.float64)
        """Contexts left out: their window did not fit (the assistant turn starts too late in the context)."""

    def update(self, part: dict[str, torch.Tensor]) -> None:
        k = part["sum"].shape[0]
        self.sum[:k] += part["sum"]
        self.count[:k] += part["count"]
        self.pooled_sum += part["pooled_sum"]
        self.pooled_count += part["pooled_count"]
        self.skipped += part.get("skipped", 0)

    def per_position(self) -> torch.Tensor:
        """[k, d] δ_j (zero for a position no sequence reached)."""
        return (self.sum / self.count.clamp_min(1).unsqueeze(-1)).float()

    def pooled(self) -> torch.Tensor:
        """[d] the mean difference over the covered positions among the first k."""
        return (self.pooled_sum / self.pooled_count.clamp_min(1)).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sum": self.sum.clone(), "count": self.count.clone(), "pooled_sum": self.pooled_sum.clone(),
                "pooled_count": self.pooled_count.clone(), "skipped": self.skipped.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            getattr(self, key).copy_(value)


@torch.no_grad()
def logit_lens(model, vector: torch.Tensor, k: int) -> dict[str, tuple[list[int], list[float]]]:
    """Top-k tokens (ids, probabilities) of softmax(unembed(final_norm(±vector))): `promoted` for the vector,
    `suppressed` for its negation (the reference code's inv_probs)."""
    device = next(model.parameters()).device
    norm = final_norm(model)
    out = {}
    for direction, sign in (("promoted", 1.0), ("suppressed", -1.0)):
        hidden = norm((sign * vector).to(device=device, dtype=next(model.parameters()).dtype).reshape(1, -1))
        probs = log_probs(model, hidden)[0].exp()
        top = probs.topk(min(k, probs.shape[0]))
        out[direction] = (top.indices.tolist(), top.values.tolist())
    return out


def adl_token_rows(text: str, means: DifferenceMeans, models: dict[str, Any], decode, k: int,
                   window: str = "start") -> list[dict[str, Any]]:
    """adl_tokens.csv rows of one text: per position j (and `mean`, the pooled vector), per model's lens,
    promoted and suppressed tokens with their probabilities; `window` = where position 0 is (`start` of the
    context, or the first token of the `assistant` turn); `n_averaged` = how many differences the vector
    averages (sequences for a position, sequence positions for the mean); `n_skipped` = contexts left out
    because the window did not fit in them."""
    vectors: list[tuple[str, torch.Tensor, int]] = [
        (str(j), means.per_position()[j], int(means.count[j])) for j in range(means.count.shape[0]) if means.count[j] > 0]
    vectors.append(("mean", means.pooled(), int(means.pooled_count)))
    rows = []
    for position, vector, n in vectors:
        for model_name, model in models.items():
            for direction, (ids, probs) in logit_lens(model, vector, k).items():
                rows += [{"text": text, "window": window, "position": position, "model": model_name, "direction": direction,
                          "rank": rank + 1, "token_id": token, "token": decode(token), "probability": p,
                          "norm": float(vector.norm()), "n_averaged": n, "n_skipped": int(means.skipped)}
                         for rank, (token, p) in enumerate(zip(ids, probs, strict=True))]
    return rows


def top_tokens(rows: Sequence[dict[str, Any]], *, text: str, model: str, position: str = "mean", n: int = 8) -> list[str]:
    """The first n promoted tokens of one lens (for the report)."""
    return [r["token"] for r in rows if r["text"] == text and r["model"] == model and r["position"] == position
            and r["direction"] == "promoted"][:n]
