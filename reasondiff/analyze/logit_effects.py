"""Which next tokens a latent's decoder direction promotes and suppresses, through each model's unembedding.

The direct logit effect of latent i in model m is u_m · d_i,m, with d_i,m the latent's decoder
vector for model m taken back to the model's raw residual space (the normalised-space vector
divided by the model's scaling factor: one unit of activation adds d_i,m to the residual stream)
and u_m the model's unembedding with its final norm's weight folded in (what TransformerLens does
with `fold_ln=True`, as SAEDashboard / Neuronpedia read it). The mean over the vocabulary is
subtracted (TransformerLens's `center_unembed`: softmax ignores a constant shift), so a value
says how much the latent raises that token's logit *relative to the average token*. The final
norm's division by the residual's RMS, and every later layer, are left out: this is the direct
path only, a reading aid rather than the latent's full causal effect.

Token ids at or beyond the tokenizer's length (Qwen pads its embedding matrix to 151936 rows with
untrained entries) are never listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

LOGIT_COLUMNS = ("latent", "model", "direction", "rank", "token_id", "token", "logit_effect")
DIRECTIONS = ("promoted", "suppressed")


def final_norm_weight(model) -> torch.Tensor | None:
    """The elementwise weight of the model's final norm (Qwen2/Llama `model.norm`), if it has one."""
    inner = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    norms = [getattr(inner, name) for name in ("norm", "final_layernorm", "ln_f") if hasattr(inner, name)]
    weight = getattr(norms[0], "weight", None) if norms else None
    hidden = model.get_output_embeddings().weight.shape[1]
    return weight.detach() if weight is not None and weight.shape == (hidden,) else None


def folded_unembedding(model) -> torch.Tensor:
    """[vocab, d_model] unembedding with the final norm's elementwise weight folded in (float32; a
    copy of the whole matrix, so direct_logit_effects folds the weight into the directions instead)."""
    W_U = model.get_output_embeddings().weight.detach().float()
    weight = final_norm_weight(model)
    return W_U if weight is None else W_U * weight.float().to(W_U.device)[None, :]


@torch.no_grad()
def direct_logit_effects(directions: torch.Tensor, unembedding: torch.Tensor, *, k: int,
                         vocab_size: int | None = None, norm_weight: torch.Tensor | None = None,
                         chunk: int = 32768) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For directions [n, d] and unembedding [V, d]: {"promoted": (values [n, k], ids [n, k]),
    "suppressed": (values, ids)}, effects centred over the (first vocab_size) tokens, largest
    promoted first and most suppressed first. `norm_weight` [d] is folded into the directions
    ((d ⊙ w) · u = d · (w ⊙ u)), and the unembedding is read `chunk` rows at a time in float32, so
    no float copy of a [152k, d] matrix is made."""
    W = unembedding[:vocab_size] if vocab_size else unembedding
    directions = directions.float().to(W.device)
    if norm_weight is not None:
        directions = directions * norm_weight.float().to(W.device)[None, :]
    effects = torch.cat([directions @ W[i:i + chunk].float().T for i in range(0, W.shape[0], chunk)], dim=-1)
    effects = effects - effects.mean(dim=-1, keepdim=True)
    k = min(k, effects.shape[-1])
    top = effects.topk(k, dim=-1)
    bottom = (-effects).topk(k, dim=-1)
    return {"promoted": (top.values.cpu(), top.indices.cpu()), "suppressed": (-bottom.values.cpu(), bottom.indices.cpu())}


def logit_effect_rows(latents: Sequence[int], W_dec: torch.Tensor, scaling_factors: torch.Tensor, models: Sequence,
                      model_names: Sequence[str], decode: Callable[[Sequence[int]], list[str]], *, k: int,
                      vocab_size: int | None) -> list[dict[str, Any]]:
    """latent_logits.csv rows: per latent, per model, the k most promoted and k most suppressed
    tokens with their direct logit effect per unit of activation. W_dec [F, n_models, d] is the
    unfolded (normalised-space) decoder."""
    if not latents or k <= 0:
        return []
    index = torch.as_tensor(list(latents), dtype=torch.long)
    rows = []
    for m, (model, name) in enumerate(zip(models, model_names, strict=True)):
        directions = W_dec[index, m].float() / float(scaling_factors[m])  # back to the raw residual space
        effects = direct_logit_effects(directions, model.get_output_embeddings().weight.detach(), k=k,
                                       vocab_size=vocab_size, norm_weight=final_norm_weight(model))
        for direction in DIRECTIONS:
            values, ids = effects[direction]
            for row, latent in enumerate(latents):
                tokens = decode(ids[row].tolist())
                for rank, (token_id, token, value) in enumerate(zip(ids[row].tolist(), tokens, values[row].tolist(),
                                                                    strict=True)):
                    rows.append({"latent": int(latent), "model": name, "direction": direction, "rank": rank + 1,
                                 "token_id": int(token_id), "token": token, "logit_effect": float(value)})
    return rows


def group_logit_rows(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, dict[str, list[tuple[str, float]]]]]:
    """{latent: {model: {"promoted": [(token, effect)], "suppressed": [...]}}} from latent_logits.csv
    rows (strings or numbers), in rank order."""
    grouped: dict[int, dict[str, dict[str, list[tuple[int, str, float]]]]] = {}
    for row in rows:
        by_model = grouped.setdefault(int(row["latent"]), {})
        by_direction = by_model.setdefault(str(row["model"]), {d: [] for d in DIRECTIONS})
        by_direction[str(row["direction"])].append((int(row["rank"]), str(row["token"]), float(row["logit_effect"])))
    return {latent: {model: {d: [(t, v) for _, t, v in sorted(items)] for d, items in dirs.items()}
                     for model, dirs in by_model.items()} for latent, by_model in grouped.items()}
