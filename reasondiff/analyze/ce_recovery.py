"""CE-loss recovery (Table 2) under two conventions, with KL divergences and bootstrap intervals.

Per model m, three runs of the model on the same contexts: clean; with the hook point's activations
zero-ablated; and with them replaced by model m's reconstruction from the JOINT code of both models'
clean activations (`denormalise(decode(encode(normalise([x_base, x_tuned]))))[m]`: the scaling
factors are undone before splicing — forgetting that is the classic silent bug, and the tests catch it).
CE recovered = (L_zero − L_spliced) / (L_zero − L_clean).

Two conventions, reported side by side (`convention` column of ce_recovery.csv):
- `paper`: Kissane & Nanda's replication code, which the paper's Table 2 (0.9219 / 0.9258) built on:
  splice positions 1: (`act[:, 1:] = recon`, position 0 kept clean), zero-ablate EVERY position
  (`act[:] = 0`), and average the loss over every next-token prediction of the context, the one made
  at position 0 included (TransformerLens `return_type="loss"`). Zeroing the attention sink inflates
  L_zero, so this recovered fraction runs high; it is the one to set beside the paper's.
- `sink_preserving`: only the positions the crosscoder stands in for are touched (not the sink
  position 0 when harvest dropped it, not the massive-activation tokens harvest dropped with
  `max_norm_ratio`; on Qwen the first "." or "," of a context can carry 10-60x the median norm), by
  both interventions, and only their predictions are scored: the three losses are over exactly the
  same tokens and differ only in what replaced the counted positions.

Besides CE, per prediction KL(clean ‖ spliced) and KL(clean ‖ zero-ablated) in nats (the field
reports KL recovery next to CE recovery: it measures the whole next-token distribution, not only the
true token), and ΔCE = L_spliced − L_clean in nats. Every number is a ratio of sums over predictions;
the sums are kept PER CONTEXT (`CERecoveryMeter`), so a killed pass resumes exactly and the 95%
intervals come from a percentile bootstrap over contexts. Logits are never stored: each run keeps
only its final hidden states [B, T, d], and the unembedding, log-softmax, CE and KL are computed
`UNEMBED_CHUNK` positions at a time (a [512, 152k] float32 block is 311 MB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

CONVENTIONS = ("paper", "sink_preserving")
SUMS = ("n_predictions", "ce_clean", "ce_zero_ablation", "ce_spliced", "kl_zero_ablation", "kl_spliced")
"""What is summed per (context, model, convention)."""
METRICS = ("ce_recovered", "ce_clean", "ce_zero_ablation", "ce_spliced", "delta_ce", "kl_spliced", "kl_zero_ablation")
CE_COLUMNS = ("text", "convention", "model",
              *(c for m in METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")), "n_tokens", "n_contexts")
UNEMBED_CHUNK = 256
"""Positions unembedded at once (memory: UNEMBED_CHUNK x vocab float32 a few times over)."""
CI_LEVEL = 0.95


def ce_recovered(ce_clean, ce_zero_ablation, ce_spliced):
    """(L_zero − L_spliced) / (L_zero − L_clean); NaN when ablating the hook changes nothing.
    Works elementwise on numpy arrays (the bootstrap) as on floats."""
    clean, zero, spliced = (np.asarray(v, dtype=np.float64) for v in (ce_clean, ce_zero_ablation, ce_spliced))
    gap = zero - clean
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.isfinite(gap) & (np.abs(gap) >= 1e-12), (zero - spliced) / np.where(gap == 0, 1, gap), np.nan)
    return float(out) if out.ndim == 0 else out


def metrics_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """METRICS from SUMS (last axis, in SUMS order; any leading axes): means per prediction in nats."""
    n = sums[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = {key: np.where(n > 0, sums[..., i] / np.where(n > 0, n, 1), np.nan) for i, key in enumerate(SUMS) if i}
    return {"ce_recovered": ce_recovered(mean["ce_clean"], mean["ce_zero_ablation"], mean["ce_spliced"]),
            "ce_clean": mean["ce_clean"], "ce_zero_ablation": mean["ce_zero_ablation"], "ce_spliced": mean["ce_spliced"],
            "delta_ce": mean["ce_spliced"] - mean["ce_clean"], "kl_spliced": mean["kl_spliced"],
            "kl_zero_ablation": mean["kl_zero_ablation"]}


def bootstrap_intervals(per_context: np.ndarray, *, n_resamples: int, seed: int,
                        level: float = CI_LEVEL) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over contexts: resample the contexts with replacement, recompute every
    metric from the resampled sums. per_context [C, len(SUMS)]. (nan, nan) with fewer than 2 contexts."""
    n_contexts = per_context.shape[0]
    if n_contexts < 2 or n_resamples < 1:
        return {key: (math.nan, math.nan) for key in METRICS}
    rng = np.random.default_rng(seed)
    totals = np.empty((n_resamples, per_context.shape[1]))
    for lo in range(0, n_resamples, 256):  # [256, C, K] at a time
        idx = rng.integers(0, n_contexts, size=(min(256, n_resamples - lo), n_contexts))
        totals[lo:lo + len(idx)] = per_context[idx].sum(axis=1)
    tail = 100 * (1 - level) / 2
    out = {}
    for key, values in metrics_from_sums(totals).items():
        finite = values[np.isfinite(values)]
        out[key] = tuple(float(v) for v in np.percentile(finite, [tail, 100 - tail])) if len(finite) else (math.nan, math.nan)
    return out


class CERecoveryMeter:
    """SUMS per (context, model, convention), filled batch by batch; resumable (state_dict)."""

    def __init__(self, n_contexts: int, model_names: Sequence[str] = ("base", "tuned")):
        self.model_names = tuple(model_names)
        self.sums = torch.zeros(n_contexts, len(self.model_names), len(CONVENTIONS), len(SUMS), dtype=torch.float64)

    def add(self, contexts: torch.Tensor, model_index: int, convention: str, values: dict[str, torch.Tensor]) -> None:
        """values[key]: [B] per-context sums for the contexts `contexts` (global indices)."""
        c = CONVENTIONS.index(convention)
        for key, value in values.items():
            self.sums[contexts.cpu(), model_index, c, SUMS.index(key)] += value.detach().double().cpu()

    def rows(self, *, text: str = "general", n_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
        rows = []
        for c, convention in enumerate(CONVENTIONS):
            for m, name in enumerate(self.model_names):
                per_context = self.sums[:, m, c].numpy()
                point = {k: float(v) for k, v in metrics_from_sums(per_context.sum(axis=0)).items()}
                ci = bootstrap_intervals(per_context, n_resamples=n_bootstrap, seed=seed + 7919 * m + 104729 * c)
                row = {"text": text, "convention": convention, "model": name}
                for key in METRICS:
                    row.update({key: point[key], f"{key}_ci_low": ci[key][0], f"{key}_ci_high": ci[key][1]})
                row.update(n_tokens=int(per_context[:, 0].sum()), n_contexts=int((per_context[:, 0] > 0).sum()))
                rows.append(row)
        return rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["sums"].shape != self.sums.shape:
            raise ValueError("CE checkpoint was taken for other contexts")
        self.sums.copy_(state["sums"])


# --- running the models ------------------------------------------------------------------------------

def counted_positions(x_raw: torch.Tensor, *, keep_first: bool, max_norm_ratio: float | None,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, T] of the positions the crosscoder stands in for, by harvest's own rule
    (hooks.select_positions): real tokens (`valid`), not the sink position 0 when `keep_first`, and
    no token whose norm in either model exceeds `max_norm_ratio` x the batch median. x_raw: [B, T, M, d]."""
    from reasondiff.hooks import select_positions

    return select_positions(x_raw, valid, drop_first_position=keep_first, max_norm_ratio=max_norm_ratio)[0]


def splice(acts: torch.Tensor, replacement: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """`replacement` in the activations' dtype at the positions `where` [B, T] (all when None); the
    other positions keep `acts`."""
    out = replacement.to(device=acts.device, dtype=acts.dtype)
    if where is None:
        return out.clone()
    return torch.where(where.to(acts.device).unsqueeze(-1), out, acts)


def reconstruct_raw(crosscoder, x_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents f, reconstruction in the normalised space, reconstruction in RAW units) of the pair
    x_raw [..., n_models, d]: normalise → encode → decode → denormalise (scaling factors undone)."""
    x_norm = crosscoder.normalise(x_raw.float())
    f = crosscoder.encode(x_norm)
    recon_norm = crosscoder.decode(f)
    return f, recon_norm, crosscoder.denormalise(recon_norm)


@torch.no_grad()
def final_hidden(model, tokens: torch.Tensor, hook, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """The model's last hidden states [B, T, d] (before the unembedding) with `fn` applied at the
    hook point (`fn` returns a replacement activation, or None to only observe)."""
    from reasondiff.hooks import residual_hook

    with residual_hook(model, hook, fn):
        return model.base_model(input_ids=tokens.to(model.device)).last_hidden_state


def log_probs(model, hidden: torch.Tensor) -> torch.Tensor:
    """log-softmax of the model's logits for hidden states [N, d] (float32; Gemma-2's soft cap applied)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def score_runs(model, tokens: torch.Tensor, clean: torch.Tensor, runs: dict[str, torch.Tensor],
               chunk: int = UNEMBED_CHUNK) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per prediction [B, T-1]: CE of the clean run, and CE and KL(clean ‖ run) of every other run.
    clean / runs[name]: final hidden states [B, T, d]; position t predicts token t+1."""
    B, T, d = clean.shape
    target = tokens[:, 1:].reshape(-1).to(clean.device)
    flat_clean = clean[:, :-1].reshape(-1, d)
    flat_runs = {name: h[:, :-1].reshape(-1, d) for name, h in runs.items()}
    ce_clean = torch.empty(B * (T - 1))
    ce = {name: torch.empty(B * (T - 1)) for name in runs}
    kl = {name: torch.empty(B * (T - 1)) for name in runs}
    for lo in range(0, B * (T - 1), chunk):
        hi = min(lo + chunk, B * (T - 1))
        tgt = target[lo:hi, None]
        reference = log_probs(model, flat_clean[lo:hi])
        ce_clean[lo:hi] = -reference.gather(-1, tgt).squeeze(-1).cpu()
        for name, h in flat_runs.items():
            other = log_probs(model, h[lo:hi])
            ce[name][lo:hi] = -other.gather(-1, tgt).squeeze(-1).cpu()
            # KL(clean ‖ run) = Σ_v p_clean (log p_clean − log p_run)
            kl[name][lo:hi] = F.kl_div(other, reference, log_target=True, reduction="none").sum(-1).cpu()
    view = (B, T - 1)
    return ce_clean.view(view), {k: v.view(view) for k, v in ce.items()}, {k: v.view(view) for k, v in kl.items()}


def intervention_masks(counted: torch.Tensor, valid: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per convention: (positions spliced, positions zero-ablated, predictions scored [B, T-1])."""
    everywhere = torch.ones_like(counted)
    after_first = everywhere.clone()
    after_first[:, 0] = False
    scored = valid[:, 1:]  # a prediction counts when its target is a real token
    return {"paper": (after_first, everywhere, scored),
            "sink_preserving": (counted, counted, counted[:, :-1] & scored)}


@torch.no_grad()
def ce_recovery_batch(models: Sequence, tokens: torch.Tensor, hook, crosscoder, meter: CERecoveryMeter, *,
                      context_index: torch.Tensor, keep_first: bool, max_norm_ratio: float | None = None,
                      valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Clean, zero-ablated and spliced runs of every model on one batch of contexts [B, T] (right-
    padded where `valid` [B, T] is False), under both conventions; per-context sums go to `meter`.

    Returns what the clean runs produced for the other analyses: raw activations x_raw
    [B, T, n_models, d] (float32, on the crosscoder's device), x_norm, latents f, the normalised
    reconstruction and `counted` [B, T], the positions the crosscoder stands in for."""
    valid = torch.ones(tokens.shape, dtype=torch.bool) if valid is None else valid.bool()
    captured: list[torch.Tensor] = []

    def observe(acts: torch.Tensor) -> None:
        captured.append(acts.detach())

    clean = [final_hidden(model, tokens, hook, observe) for model in models]
    device = crosscoder.W_dec.device
    x_raw = torch.stack([a.to(device=device, dtype=torch.float32) for a in captured], dim=2)
    counted = counted_positions(x_raw, keep_first=keep_first, max_norm_ratio=max_norm_ratio, valid=valid)
    f, recon_norm, recon_raw = reconstruct_raw(crosscoder, x_raw)
    masks = intervention_masks(counted.cpu(), valid.cpu())
    for m, model in enumerate(models):
        # Runs whose touched positions agree on the real tokens are the same run (right padding comes
        # after every real token, so it never changes a real prediction): run each distinct one once.
        runs: dict[str, torch.Tensor] = {}
        made: list[tuple[str, str, torch.Tensor]] = []
        keys: dict[tuple[str, str], str] = {}
        for convention, (spliced_at, zeroed_at, _) in masks.items():
            for kind, where in (("spliced", spliced_at), ("zero_ablation", zeroed_at)):
                name = next((n for n, k, w in made if k == kind and torch.equal(w & valid, where & valid)), None)
                if name is None:
                    name = f"{kind}:{convention}"
                    made.append((name, kind, where))
                    replacement = recon_raw[:, :, m] if kind == "spliced" else None
                    runs[name] = final_hidden(model, tokens, hook, _intervention(replacement, where))
                keys[(convention, kind)] = name
        ce_clean, ce, kl = score_runs(model, tokens, clean[m], runs)
        for convention, (_, _, scored) in masks.items():
            w = scored.double()
            meter.add(context_index, m, convention, {
                "n_predictions": w.sum(1), "ce_clean": (ce_clean * w).sum(1),
                "ce_zero_ablation": (ce[keys[(convention, "zero_ablation")]] * w).sum(1),
                "ce_spliced": (ce[keys[(convention, "spliced")]] * w).sum(1),
                "kl_zero_ablation": (kl[keys[(convention, "zero_ablation")]] * w).sum(1),
                "kl_spliced": (kl[keys[(convention, "spliced")]] * w).sum(1)})
    return {"x_raw": x_raw, "x_norm": crosscoder.normalise(x_raw), "f": f, "recon_norm": recon_norm,
            "counted": counted}


def _intervention(replacement: torch.Tensor | None, where: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if replacement is None:
        return lambda acts: splice(acts, torch.zeros_like(acts), where)
    return lambda acts: splice(acts, replacement, where)
