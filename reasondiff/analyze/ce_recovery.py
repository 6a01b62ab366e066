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

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from reasondiff.core.streamed_pass import ContextSums
from reasondiff.lm.hooks import residual_hook, select_positions
from reasondiff.lm.resume_forward import (
    CleanRun,
    clean_run,
    close_up_to_rounding,
    final_norm,
    log_probs,
    resume_problem,
    resumed_at_hook,
    uniform_final_residual,
)

log = logging.getLogger(__name__)

CONVENTIONS = ("paper", "sink_preserving")
SUMS = ("n_predictions", "ce_clean", "ce_zero_ablation", "ce_spliced", "kl_zero_ablation", "kl_spliced")
"""What is summed per (context, model, convention)."""
METRICS = ("ce_recovered", "ce_clean", "ce_zero_ablation", "ce_spliced", "delta_ce", "kl_spliced", "kl_zero_ablation")
CE_COLUMNS = ("text", "text_source", "convention", "model",
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


class CERecoveryMeter(ContextSums):
    """SUMS per (context, model, convention), filled batch by batch; resumable (state_dict)."""

    def __init__(self, n_contexts: int, model_names: Sequence[str] = ("base", "tuned")):
        self.model_names = tuple(model_names)
        super().__init__(SUMS, n_contexts, len(self.model_names), len(CONVENTIONS), what="CE recovery")

    def add(self, contexts: torch.Tensor, model_index: int, convention: str, values: dict[str, torch.Tensor]) -> None:
        """values[key]: [B] per-context sums for the contexts `contexts` (global indices)."""
        self.add_sums(contexts, (model_index, CONVENTIONS.index(convention)), values)

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


# --- running the models ------------------------------------------------------------------------------

def counted_positions(x_raw: torch.Tensor, *, keep_first: bool, max_norm_ratio: float | None,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, T] of the positions the crosscoder stands in for, by harvest's own rule
    (hooks.select_positions): real tokens (`valid`), not the sink position 0 when `keep_first`, and
    no token whose norm in either model exceeds `max_norm_ratio` x the batch median. x_raw: [B, T, M, d]."""
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
    hook point (`fn` returns a replacement activation, or None to only observe): a full forward, the
    reference the resumed runs of `ce_recovery_batch` are tested against."""
    with residual_hook(model, hook, fn):
        return model.base_model(input_ids=tokens.to(model.device)).last_hidden_state


class _Unembedding:
    """`log_probs` into buffers [rows, vocab] reused chunk after chunk: a [256, 152k] float32 block is
    155 MB, and allocating (page-faulting) a fresh one per logits / log-softmax / KL term cost a
    quarter of the scoring time on a CPU. The same kernels as `log_probs` (the head's matmul, the
    soft cap, log_softmax), so the same numbers; heads other than a float32 nn.Linear use it as is."""

    def __init__(self, model, rows: int, device: torch.device):
        self.model = model
        head = model.get_output_embeddings()
        self.fused = isinstance(head, torch.nn.Linear) and head.weight.dtype == torch.float32
        self.weight, self.bias = head.weight, head.bias
        self.cap = getattr(model.config, "final_logit_softcapping", None)
        vocab = head.weight.shape[0]
        self.scratch, self.reference, self.p_clean, self.other = (
            torch.empty(rows, vocab, device=device) for _ in range(4))

    def __call__(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log-probabilities [n, vocab] of hidden states [n, d], written into `out` (uses `scratch`)."""
        n = hidden.shape[0]
        if not self.fused:
            return out[:n].copy_(log_probs(self.model, hidden))
        logits = self.scratch[:n]
        if self.bias is None:
            torch.mm(hidden, self.weight.t(), out=logits)
        else:
            torch.addmm(self.bias, hidden, self.weight.t(), out=logits)
        if self.cap:
            logits.div_(self.cap).tanh_().mul_(self.cap)
        return torch.log_softmax(logits, -1, out=out[:n])


@torch.no_grad()
def score_runs(model, tokens: torch.Tensor, clean: torch.Tensor, runs: dict[str, torch.Tensor],
               chunk: int = UNEMBED_CHUNK, *, positions: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per prediction [B, T-1]: CE of the clean run, and CE and KL(clean ‖ run) of every other run.
    clean / runs[name]: final hidden states [B, T, d] (position t predicts token t+1), or for a run
    that gives every position the same hidden state, that one vector [d] (unembedded once). Only the
    predictions `positions` [B, T-1] (all when None) are unembedded; the others read 0. CE and KL of a
    run come from the same log-probabilities, and the clean run's are computed once per chunk."""
    B, T, d = clean.shape
    where = torch.ones(B, T - 1, dtype=torch.bool) if positions is None else positions.to("cpu", torch.bool)
    index = where.reshape(-1).nonzero().squeeze(-1)
    target = tokens[:, 1:].reshape(-1)[index].to(clean.device)
    rows = index.to(clean.device)
    flat_clean = clean[:, :-1].reshape(-1, d)[rows]
    flat_runs = {name: h[:, :-1].reshape(-1, d)[rows] for name, h in runs.items() if h.dim() == 3}
    uniform = {name: log_probs(model, h.reshape(1, d))[0] for name, h in runs.items() if h.dim() == 1}
    n = len(index)
    ce_clean = torch.empty(n)
    ce = {name: torch.empty(n) for name in runs}
    kl = {name: torch.empty(n) for name in runs}
    unembed = _Unembedding(model, min(chunk, n), clean.device) if n else None
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        tgt = target[lo:hi, None]
        reference = unembed(flat_clean[lo:hi], unembed.reference)
        p_clean = torch.exp(reference, out=unembed.p_clean[:hi - lo])
        ce_clean[lo:hi] = -reference.gather(-1, tgt).squeeze(-1).cpu()
        for name in runs:
            other = unembed(flat_runs[name][lo:hi], unembed.other) if name in flat_runs else uniform[name].expand_as(reference)
            ce[name][lo:hi] = -other.gather(-1, tgt).squeeze(-1).cpu()
            # KL(clean ‖ run) = Σ_v p_clean (log p_clean − log p_run), as F.kl_div(log_target=True)
            terms = torch.sub(reference, other, out=unembed.scratch[:hi - lo]).mul_(p_clean)
            kl[name][lo:hi] = terms.sum(-1).cpu()
    del unembed

    def scatter(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(B * (T - 1))
        out[index] = values
        return out.view(B, T - 1)

    return scatter(ce_clean), {k: scatter(v) for k, v in ce.items()}, {k: scatter(v) for k, v in kl.items()}


def intervention_masks(counted: torch.Tensor, valid: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per convention: (positions spliced, positions zero-ablated, predictions scored [B, T-1])."""
    everywhere = torch.ones_like(counted)
    after_first = everywhere.clone()
    after_first[:, 0] = False
    scored = valid[:, 1:]  # a prediction counts when its target is a real token
    return {"paper": (after_first, everywhere, scored),
            "sink_preserving": (counted, counted, counted[:, :-1] & scored)}


def distinct_runs(masks: dict[str, tuple[torch.Tensor, ...]], valid: torch.Tensor,
                  ) -> tuple[list[tuple[str, str, torch.Tensor]], dict[tuple[str, str], str]]:
    """The intervened runs to make: ([(name, kind, positions touched)], (convention, kind) -> name).
    Runs whose touched positions agree on the real tokens are the same run (right padding comes after
    every real token, so it never changes a real prediction): each distinct one is made once, e.g.
    the spliced run of both conventions when no massive token sits after the sink."""
    made: list[tuple[str, str, torch.Tensor]] = []
    keys: dict[tuple[str, str], str] = {}
    for convention, (spliced_at, zeroed_at, _) in masks.items():
        for kind, where in (("spliced", spliced_at), ("zero_ablation", zeroed_at)):
            name = next((n for n, k, w in made if k == kind and torch.equal(w & valid, where & valid)), None)
            if name is None:
                name = f"{kind}:{convention}"
                made.append((name, kind, where))
            keys[(convention, kind)] = name
    return made, keys


PROBE_TOKENS = 16
"""Tokens of the short run that checks, per batch and model, that resuming reproduces the full
forward and that a zero ablation everywhere gives every position the same output."""

_fallbacks_logged: set[tuple[str, str, str]] = set()


def _log_fallback(model, hook, reason: str) -> None:
    key = (type(model).__name__, hook.name, reason)
    if key not in _fallbacks_logged:
        _fallbacks_logged.add(key)
        log.warning("CE recovery: %s at %s cannot be resumed from the hook (%s); its intervened runs are full "
                    "forwards instead (same numbers, ~2x the time)", type(model).__name__, hook.name, reason)


@dataclass
class ResumeCheck:
    """What a short probe run said about resuming one model at the hook."""

    problem: str | None
    """Why resuming would not reproduce the model's forward (None: it does)."""
    uniform_zero: torch.Tensor | None = None
    """The final hidden state [d] of every position under a zero ablation of every position, when
    the model gives every position the same one (`resume_forward.uniform_final_residual`)."""


@torch.no_grad()
def check_resume(model, tokens: torch.Tensor, hook) -> ResumeCheck:
    """Probe `model` on the first PROBE_TOKENS tokens of `tokens` [B, T]: can its runs resume at `hook`?"""
    try:
        probe = clean_run(model, tokens[:1, :PROBE_TOKENS], from_layer=hook.layer)
    except (NotImplementedError, TypeError) as err:
        return ResumeCheck(str(err))
    problem = resume_problem(model, hook, probe)
    if problem is not None:
        return ResumeCheck(problem)
    zero = torch.zeros(probe.last_hidden.shape[-1], device=probe.last_hidden.device)
    uniform = uniform_final_residual(model, hook, probe, zero)
    return ResumeCheck(None, None if uniform is None else final_norm(model)(uniform))


@dataclass
class CleanPass:
    """One model's clean run on some contexts."""

    acts: torch.Tensor
    """[B, T, d] the activations at the hook."""
    hidden: torch.Tensor
    """[B, T, d] the final hidden states (after the final norm)."""
    run: CleanRun | None = None
    """The layer inputs to resume from; None when the model's runs are full forwards."""
    uniform_zero: torch.Tensor | None = None
    """See ResumeCheck.uniform_zero."""


@torch.no_grad()
def clean_pass(model, tokens: torch.Tensor, hook, check: ResumeCheck | None) -> CleanPass:
    """The clean run of `model` on `tokens` [B, T]. When `check` says the model can be resumed, ONE
    forward that keeps the residual stream at the hook and the arguments of the layers after it;
    otherwise (the reason logged; `check` None: the reference) a plain forward with the hook."""
    captured: dict[str, torch.Tensor] = {}

    def observe(acts: torch.Tensor) -> None:
        captured["acts"] = acts.detach()

    if check is not None and check.problem is None:
        with residual_hook(model, hook, observe):
            run = clean_run(model, tokens, from_layer=hook.layer)
        if close_up_to_rounding(final_norm(model)(run.resid[-1]), run.last_hidden):
            return CleanPass(captured["acts"], run.last_hidden, run, check.uniform_zero)
        _log_fallback(model, hook, "its hidden states are not its final norm of the last decoder layer's output")
        return CleanPass(captured["acts"], run.last_hidden)
    if check is not None:
        _log_fallback(model, hook, check.problem)
    hidden = final_hidden(model, tokens, hook, observe)
    return CleanPass(captured["acts"], hidden)


@torch.no_grad()
def intervened_runs(model, tokens: torch.Tensor, hook, clean: CleanPass,
                    edits: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], bool]]) -> dict[str, torch.Tensor]:
    """Final hidden states of `model` under each (name, edit at the hook, zero everywhere?) of `edits`:
    [B, T, d], or [d] for a zero ablation of every real position when one vector serves every position
    (`resume_forward.uniform_final_residual`). Resumed from the hook when `clean.run` holds the
    layer inputs (all of them stacked in one batch), else full forwards."""
    if clean.run is None:
        return {name: final_hidden(model, tokens, hook, edit) for name, edit, _ in edits}
    out = {name: clean.uniform_zero for name, _, everywhere in edits if everywhere and clean.uniform_zero is not None}
    rest = [(name, edit) for name, edit, _ in edits if name not in out]
    norm = final_norm(model)
    for (name, _), final in zip(rest, resumed_at_hook(model, clean.run, hook, [edit for _, edit in rest]), strict=True):
        out[name] = norm(final)
    return {name: out[name] for name, _, _ in edits}


def _row_lengths(valid: torch.Tensor) -> list[int]:
    """Per context, the positions up to its last real token (at least 2: one prediction)."""
    length = valid.shape[1]
    last = torch.where(valid, torch.arange(length), -1).max(1).values
    return [min(length, max(2, int(v) + 1)) for v in last]


@torch.no_grad()
def ce_recovery_batch(models: Sequence, tokens: torch.Tensor, hook, crosscoder, meter: CERecoveryMeter, *,
                      context_index: torch.Tensor, keep_first: bool, max_norm_ratio: float | None = None,
                      valid: torch.Tensor | None = None, resume: bool = True) -> dict[str, torch.Tensor]:
    """Clean, zero-ablated and spliced runs of every model on one batch of contexts [B, T] (right-
    padded where `valid` [B, T] is False), under both conventions; per-context sums go to `meter`.

    `resume=True` (the stage's way) makes the same numbers as `resume=False` (the reference: a full
    forward with hooks per run, every prediction unembedded, as TransformerLens would), up to float
    rounding, at a fraction of the cost:
    - each model runs ONE full forward (clean), keeping the residual stream at the hook and the
      arguments of the layers after it; every intervened run resumes from there
      (`resume_forward.resumed_at_hook`: the layers before the hook would compute the clean run
      again), all of a context's distinct runs stacked in one batch;
    - the zero ablation of every position (paper convention) gives every position of every context
      one and the same hidden state (checked per batch on a short probe): it is computed and
      unembedded once, not per position;
    - each context runs alone at its own length (padding is never run: reasoning conversations are
      ~20% padding) and with its own distinct runs (a massive token in one context does not cost
      the others a third run); only the predictions some convention scores are unembedded.
    The batch still sets which positions count (`counted_positions`: the massive-token rule reads
    the batch median, as harvest's does). A model that cannot be resumed (see
    `resume_forward.resume_problem`) is run in full forwards, the reason logged.

    Returns what the clean runs produced for the other analyses: raw activations x_raw
    [B, T, n_models, d] (float32, on the crosscoder's device), x_norm, latents f, the normalised
    reconstruction and `counted` [B, T], the positions the crosscoder stands in for."""
    full_length = tokens.shape[1]
    valid = torch.ones(tokens.shape, dtype=torch.bool) if valid is None else valid.bool().cpu()
    if resume:  # right padding after a context's last real token changes none of its predictions
        groups = [(slice(b, b + 1), length) for b, length in enumerate(_row_lengths(valid))]
    else:
        groups = [(slice(None), full_length)]
    width = max(length for _, length in groups)
    tokens, valid = tokens[:, :width], valid[:, :width]
    checks = [check_resume(model, tokens, hook) if resume else None for model in models]
    clean = [[clean_pass(model, tokens[rows, :length], hook, check) for rows, length in groups]
             for model, check in zip(models, checks, strict=True)]
    device = crosscoder.W_dec.device
    x_raw = torch.stack([torch.cat([_pad_positions(c.acts.to(device=device, dtype=torch.float32), width)
                                    for c in per_model]) for per_model in clean], dim=2)
    counted = counted_positions(x_raw, keep_first=keep_first, max_norm_ratio=max_norm_ratio, valid=valid)
    f, recon_norm, recon_raw = reconstruct_raw(crosscoder, x_raw)
    for m, model in enumerate(models):
        for g, (rows, length) in enumerate(groups):
            group_valid = valid[rows, :length]
            masks = intervention_masks(counted[rows, :length].cpu(), group_valid)
            made, keys = distinct_runs(masks, group_valid)
            edits = [(name, _intervention(recon_raw[rows, :length, m] if kind == "spliced" else None, where),
                      kind == "zero_ablation" and bool((where | ~group_valid).all()))
                     for name, kind, where in made]
            runs = intervened_runs(model, tokens[rows, :length], hook, clean[m][g], edits)
            scored_somewhere = (masks["paper"][2] | masks["sink_preserving"][2]) if resume else None
            ce_clean, ce, kl = score_runs(model, tokens[rows, :length], clean[m][g].hidden, runs,
                                          positions=scored_somewhere)
            clean[m][g] = None  # its activations are no longer needed: free them
            del runs
            for convention, (_, _, scored) in masks.items():
                w = scored.double()
                meter.add(context_index[rows], m, convention, {
                    "n_predictions": w.sum(1), "ce_clean": (ce_clean * w).sum(1),
                    "ce_zero_ablation": (ce[keys[(convention, "zero_ablation")]] * w).sum(1),
                    "ce_spliced": (ce[keys[(convention, "spliced")]] * w).sum(1),
                    "kl_zero_ablation": (kl[keys[(convention, "zero_ablation")]] * w).sum(1),
                    "kl_spliced": (kl[keys[(convention, "spliced")]] * w).sum(1)})
    out = {"x_raw": x_raw, "x_norm": crosscoder.normalise(x_raw), "f": f, "recon_norm": recon_norm, "counted": counted}
    return {name: _pad_positions(value, full_length) for name, value in out.items()}


def _pad_positions(t: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T', ...] -> [B, length, ...] with zeros (False) after T' (the padding not run)."""
    if t.shape[1] == length:
        return t
    out = t.new_zeros((t.shape[0], length, *t.shape[2:]))
    out[:, :t.shape[1]] = t
    return out


def _intervention(replacement: torch.Tensor | None, where: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if replacement is None:
        return lambda acts: splice(acts, torch.zeros_like(acts), where)
    return lambda acts: splice(acts, replacement, where)
