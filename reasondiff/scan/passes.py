"""The two streamed passes of a scan over one text, each resumable from its saved sums.

1. Representation pass (every context): one forward per model per batch with every layer read
   (`patching.clean_run`); per site, the tokens that count are compared (`meters.RepresentationMeter`).
   CKA's minibatch is one context, so no number depends on the batch size.
2. Patching pass (the first `scan.patch_contexts` contexts): for each direction, every residual
   layer patched at once (`patching.patched_final_residuals`), and the KL of each patched
   next-token distribution summed per context (`meters.PatchMeter`, for the bootstrap intervals)
   beside the clean KL(base || tuned).

Which tokens count: real tokens (no padding), minus position 0 when the first position is
excluded; the representation metrics also leave out massive-activation tokens when
`harvest.max_norm_ratio` is set (`hooks.select_positions`, the rule harvest applies, with the median
taken per context and per residual layer; a block's attention/MLP output uses the mask of the
residual it writes into). A view restricted to the answer tokens is kept for reasoning text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from reasondiff.core.streamed_pass import PassState, resumable_pass
from reasondiff.lm.hooks import select_positions
from reasondiff.scan.meters import PatchMeter, RepresentationMeter, Site
from reasondiff.scan.patching import Unembedding, clean_run, patched_final_residuals
from reasondiff.scan.similarity import kl_divergence
from reasondiff.scan.texts import ScanTexts

log = logging.getLogger(__name__)


def counted_positions(texts: ScanTexts, *, exclude_first: bool) -> dict[str, torch.Tensor]:
    """view -> [B, T] bool mask: `all` real tokens (minus position 0 if excluded), `answer` tokens."""
    mask = texts.valid.clone()
    if exclude_first:
        mask[:, 0] = False
    views = {"all": mask}
    if texts.answer is not None:
        views["answer"] = mask & texts.answer
    return views


def views_of(texts: ScanTexts) -> list[str]:
    return ["all"] + (["answer"] if texts.answer is not None else [])


def _massive_keep(base: torch.Tensor, tuned: torch.Tensor, valid: torch.Tensor, *, exclude_first: bool,
                  max_norm_ratio: float | None) -> torch.Tensor:
    """[B, T] positions kept by harvest's rule, decided per context (so no batch-size dependence)."""
    pair = torch.stack((base, tuned), dim=2)
    rows = [select_positions(pair[i:i + 1], valid[i:i + 1], drop_first_position=exclude_first,
                             max_norm_ratio=max_norm_ratio)[0] for i in range(pair.shape[0])]
    return torch.cat(rows)


def representation_pass(models, texts: ScanTexts, sites: list[Site], state_path: Path, fingerprint: dict, *,
                        batch_size: int, exclude_first: bool, max_norm_ratio: float | None,
                        checkpoint_every: int, checkpoint_minutes: float,
                        components: bool) -> dict[str, RepresentationMeter]:
    meters = {view: RepresentationMeter(sites) for view in views_of(texts)}
    n_layers = sum(1 for s in sites if s.kind == "resid") - 1

    def step(rows: slice) -> None:
        batch = texts.rows(rows)
        base, tuned = (clean_run(m, batch.input_ids, components=components) for m in models)
        device = base.resid[0].device
        keep_resid = [_massive_keep(base.resid[layer], tuned.resid[layer], batch.valid, exclude_first=exclude_first,
                                    max_norm_ratio=max_norm_ratio) for layer in range(n_layers + 1)]
        for view, mask in counted_positions(batch, exclude_first=exclude_first).items():
            mask = mask.to(device)
            for index, site in enumerate(sites):
                if site.kind == "resid":
                    a, b, keep = base.resid[site.layer], tuned.resid[site.layer], keep_resid[site.layer]
                else:  # a block's output is judged by the residual it writes into
                    source = "attn_out" if site.kind == "attn_out" else "mlp_out"
                    a, b = getattr(base, source)[site.layer], getattr(tuned, source)[site.layer]
                    keep = keep_resid[site.layer + 1]
                meters[view].update(index, a, b, keep & mask)  # one context = one CKA minibatch

    return resumable_pass(PassState(state_path, fingerprint, meters), len(texts), batch_size, step,
                          checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
                          desc=f"scan {texts.name}: representations")


DIRECTION_MODELS = {"tuned_into_base": (0, 1), "base_into_tuned": (1, 0)}
"""direction -> (recipient, donor) indices into (base, tuned)."""


def patch_pass(models, texts: ScanTexts, directions: list[str], state_path: Path, fingerprint: dict, *,
               n_contexts: int, batch_size: int, exclude_first: bool) -> dict[str, PatchMeter]:
    """Fractions of KL(base || tuned) closed by patching each residual layer, on the first n_contexts
    (saved after every batch: one batch is (N+1) x batch_size sequences through half the model)."""
    n_layers = models[0].config.num_hidden_layers
    n_patched = min(n_contexts, len(texts))
    meters = {view: PatchMeter(directions, n_layers, n_contexts=n_patched) for view in views_of(texts)}
    unembed = [Unembedding(m) for m in models]

    def step(rows: slice) -> None:
        batch = texts.rows(rows)
        runs = [clean_run(m, batch.input_ids) for m in models]
        device = runs[0].resid[0].device
        views = counted_positions(batch, exclude_first=exclude_first)
        mask = views["all"].to(device)
        selections = {view: v.to(device)[mask] for view, v in views.items()}  # over the flattened tokens
        # the (global) context of every counted token, for the bootstrap over contexts
        context_of = (rows.start + torch.arange(mask.shape[0], device=device))[:, None].expand_as(mask)[mask]
        logp_base = unembed[0].logprobs(runs[0].resid[n_layers][mask])
        logp_tuned = unembed[1].logprobs(runs[1].resid[n_layers][mask].to(device))
        gap = kl_divergence(logp_base, logp_tuned)
        for view, sel in selections.items():
            meters[view].update_gap(gap[sel], context_of[sel])
        for direction in directions:
            recipient, donor = DIRECTION_MODELS[direction]
            for layer, final in patched_final_residuals(models[recipient], runs[recipient].layer_kwargs,
                                                        runs[donor].resid):
                # both fractions measure what is left of the gap KL(base || tuned)
                if direction == "tuned_into_base":
                    kl = unembed[recipient].kl_to(final[mask], logp_tuned, patched_first=True)
                else:
                    kl = unembed[recipient].kl_to(final[mask], logp_base, patched_first=False)
                for view, sel in selections.items():
                    meters[view].update_patched(direction, layer, kl[sel], context_of[sel])

    return resumable_pass(PassState(state_path, fingerprint, meters), n_patched, batch_size, step,
                          checkpoint_every=1, checkpoint_minutes=0, desc=f"scan {texts.name}: patching {n_layers + 1} layers x {len(directions)}")
