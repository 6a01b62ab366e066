"""Running every intervention on a batch of contexts: one clean forward per model, then only the layers
after the hook for each intervention (reasondiff/lm/resume_forward.py), scored against both clean models.

Per batch of contexts [B, T] (right-padded, run without an attention mask: a real token never sees the
padding after it):
1. each model's clean forward keeps its residual stream at the hook and the arguments of the layers after
   it (`clean_run`); the paired activations x = (x_base, x_tuned) give the latents f (joint code) and the
   positions the crosscoder stands in for (`hooks.select_positions`, harvest's rule);
2. the interventions of each model run resumed from the hook, a group at a time stacked along the batch
   (`resumed_at_hook`); a model whose forward cannot be replayed from the hook (`resume_problem`) runs
   full forwards with the edit hooked in instead (the same numbers, slower);
3. each group's next-token distributions are compared with the clean ones a chunk of predictions at a
   time, and per-context sums go to the `InterventionMeter` (measures.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reasondiff.intervene.edits import MODEL_INDEX, Direction, Intervention, edit_for, latents_of
from reasondiff.intervene.measures import InterventionMeter, kl_terms
from reasondiff.lm.hooks import capture, residual_hook, select_positions
from reasondiff.lm.resume_forward import (
    RESUME_TOKENS,
    CleanRun,
    clean_run,
    final_norm,
    log_probs,
    resume_problem,
    resumed_at_hook,
)

log = logging.getLogger(__name__)

PROBE_TOKENS = 16
SCORE_CHUNK = 256
"""Predictions unembedded at once (a [256, 152k] float32 block is 155 MB)."""


@dataclass
class Runner:
    """One model at the hook: resumed from it when its forward can be replayed, else full forwards."""

    model: torch.nn.Module
    hook: object
    resumable: bool = True

    @classmethod
    def for_model(cls, model, hook, tokens: torch.Tensor) -> Runner:
        probe = clean_run(model, tokens[:1, :PROBE_TOKENS], from_layer=hook.layer)
        problem = resume_problem(model, hook, probe)
        if problem is not None:
            log.warning("intervene: %s at %s cannot be resumed from the hook (%s): full forwards instead",
                        type(model).__name__, hook.name, problem)
        return cls(model, hook, problem is None)

    @torch.no_grad()
    def clean(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, CleanRun | None]:
        """(activations at the hook [B, T, d], final hidden states after the final norm [B, T, d], the run
        to resume from or None)."""
        captured: dict[str, torch.Tensor] = {}

        def observe(acts: torch.Tensor) -> None:
            captured["acts"] = acts.detach()

        device = next(self.model.parameters()).device
        with residual_hook(self.model, self.hook, observe):
            if self.resumable:
                run = clean_run(self.model, tokens, from_layer=self.hook.layer)
                return captured["acts"], run.last_hidden, run
            hidden = self.model.base_model(input_ids=tokens.to(device), use_cache=False).last_hidden_state
        return captured["acts"], hidden, None

    @torch.no_grad()
    def intervened(self, tokens: torch.Tensor, run: CleanRun | None, edits: Sequence) -> list[torch.Tensor]:
        """Final hidden states (after the final norm) [B, T, d] under each edit at the hook."""
        if run is not None:
            norm = final_norm(self.model)
            return [norm(final) for final in resumed_at_hook(self.model, run, self.hook, list(edits))]
        device = next(self.model.parameters()).device
        out = []
        for edit in edits:
            with residual_hook(self.model, self.hook, edit):
                out.append(self.model.base_model(input_ids=tokens.to(device), use_cache=False).last_hidden_state)
        return out


@dataclass
class Site:
    """Where the crosscoder reads the models, and which positions it stands in for."""

    hook: object
    keep_first: bool
    """Position 0 is left untouched and unscored (the crosscoder never saw it)."""
    max_norm_ratio: float | None
    """Massive-activation tokens (harvest's rule) are left untouched and unscored."""


@torch.no_grad()
def paired_clean(runners: Sequence[Runner], tokens: torch.Tensor, valid: torch.Tensor, site: Site, crosscoder):
    """Both models' clean runs, the raw pair [B, T, 2, d], the latents f and the positions counted [B, T]."""
    cleans = [runner.clean(tokens) for runner in runners]
    device = crosscoder.W_dec.device
    x_raw = torch.stack([acts.to(device=device, dtype=torch.float32) for acts, _, _ in cleans], dim=2)
    counted = select_positions(x_raw, valid.to(device), drop_first_position=site.keep_first,
                               max_norm_ratio=site.max_norm_ratio)[0]
    return cleans, x_raw, latents_of(crosscoder, x_raw), counted


def group_size(batch: int, length: int, d_model: int) -> int:
    """Interventions scored together: their hidden states [group, B, T, d] stay under a few hundred MB."""
    return max(1, (8 * RESUME_TOKENS * 128) // max(1, batch * length * max(d_model, 128)))


@torch.no_grad()
def intervention_batch(runners: Sequence[Runner], tokens: torch.Tensor, valid: torch.Tensor, site: Site, crosscoder,
                       interventions: Sequence[Intervention], meter: InterventionMeter, *, context_index: torch.Tensor,
                       directions: dict[str, Direction] | None = None) -> dict[str, torch.Tensor]:
    """Every intervention on one batch of contexts [B, T]; per-context sums to `meter`. Returns the
    clean pair and latents (x_raw [B, T, 2, d], f, counted) for callers that need them."""
    valid = valid.bool()
    cleans, x_raw, f, counted = paired_clean(runners, tokens, valid, site, crosscoder)
    scored = (counted[:, :-1].cpu() & valid[:, 1:]).reshape(-1)
    index = scored.nonzero().squeeze(-1)
    context_of = torch.arange(tokens.shape[0]).repeat_interleave(tokens.shape[1] - 1)[index]
    targets = tokens[:, 1:].reshape(-1)[index]
    contexts = context_index.cpu()
    B, T = tokens.shape
    d = x_raw.shape[-1]

    def flat(hidden: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> the scored predictions [n, d]
        return hidden[:, :-1].reshape(-1, hidden.shape[-1])[index.to(hidden.device)]

    def per_context(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(B, dtype=torch.float64).index_add_(0, context_of, values.double().cpu())

    clean_hidden = [flat(hidden) for _, hidden, _ in cleans]
    counts = per_context(torch.ones(len(index)))
    where = counted.to(x_raw.device)
    for model_name, m in MODEL_INDEX.items():
        todo = [(k, iv) for k, iv in enumerate(interventions) if iv.model == model_name]
        partner = x_raw[:, :, 1 - m]
        edits = [edit_for(iv, crosscoder, f=f, partner=partner, where=where, directions=directions) for _, iv in todo]
        size = group_size(B, T, d)
        for lo in range(0, len(todo), size):
            group = todo[lo:lo + size]
            hidden = [flat(h) for h in runners[m].intervened(tokens, cleans[m][2], edits[lo:lo + size])]
            sums = {k: {key: torch.zeros(B, dtype=torch.float64) for key in ("kl_gap", "kl_after", "kl_self",
                                                                              "ce_clean", "ce_after")}
                    for k, _ in group}
            for c in range(0, len(index), SCORE_CHUNK):
                part = slice(c, c + SCORE_CHUNK)
                lp_base = log_probs(runners[0].model, clean_hidden[0][part])
                lp_tuned = log_probs(runners[1].model, clean_hidden[1][part])
                lp_clean = lp_base if m == 0 else lp_tuned
                target = targets[part].to(lp_base.device).unsqueeze(-1)
                gap = kl_terms(lp_base, lp_tuned)
                ce_clean = -lp_clean.gather(-1, target).squeeze(-1)
                ctx = context_of[part]
                for (k, _), h in zip(group, hidden, strict=True):
                    lp = log_probs(runners[m].model, h[part])
                    after = kl_terms(lp, lp_tuned) if m == 0 else kl_terms(lp_base, lp)
                    values = {"kl_gap": gap, "kl_after": after, "kl_self": kl_terms(lp_clean, lp),
                              "ce_clean": ce_clean, "ce_after": -lp.gather(-1, target).squeeze(-1)}
                    for key, v in values.items():
                        sums[k][key].index_add_(0, ctx, v.double().cpu())
            for k, _ in group:
                meter.add(contexts, k, {"n_predictions": counts, **sums[k]})
    return {"x_raw": x_raw, "f": f, "counted": counted}


@torch.no_grad()
def first_position_differences(runners: Sequence[Runner], tokens: torch.Tensor, valid: torch.Tensor, site: Site,
                               k: int, starts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Sums for the Activation Difference Lens over a window of k positions of a batch [B, T]: per position
    (Σ (x_tuned − x_base) [k, d], count [k]) and over those of them the crosscoder covers (pooled; which
    positions count is decided on the whole contexts, as in every other pass). Each model runs only up to
    the hook (`hooks.capture`).

    The window is the first k positions of each context, or with `starts` [B] the k positions from
    starts[b] on (the assistant turn's first token, as the reference code places its window on chat
    data); a context with fewer than k real tokens from its start is skipped whole (`skipped`), as the
    reference drops a conversation with fewer assistant tokens than its window."""
    x = torch.stack([capture(runner.model, tokens, None, site.hook).float() for runner in runners], dim=2)
    valid = valid.to(x.device)
    counted = select_positions(x, valid, drop_first_position=site.keep_first,
                               max_norm_ratio=site.max_norm_ratio)[0]
    B, T = tokens.shape
    if starts is None:
        k = min(k, T)
        index = torch.arange(k, device=x.device).expand(B, k)
        real = valid[:, :k].bool()
        skipped = torch.zeros((), dtype=torch.float64)
    else:
        starts = starts.to(x.device)
        inside = starts + k <= valid.sum(dim=1)
        index = (starts.unsqueeze(1) + torch.arange(k, device=x.device)).clamp(max=T - 1)
        real = inside.unsqueeze(1).expand(B, k)
        skipped = (~inside).sum().cpu().double()
    rows = torch.arange(B, device=x.device).unsqueeze(1)
    diff = (x[rows, index, 1] - x[rows, index, 0]).double()
    covered = counted[rows, index] & real
    norms = x.norm(dim=-1)  # [B, T, 2]: the median norm per model over the real tokens after the first
    later = valid.bool().clone()
    later[:, 0] = False
    median = norms[later].median(dim=0).values if later.any() else torch.full((2,), float("nan"))
    return {"sum": (diff * real.unsqueeze(-1)).sum(0).cpu(), "count": real.sum(0).cpu().double(),
            "pooled_sum": (diff * covered.unsqueeze(-1)).sum((0, 1)).cpu(), "skipped": skipped,
            "pooled_count": covered.sum().cpu().double(), "median_norm": median.cpu()}
