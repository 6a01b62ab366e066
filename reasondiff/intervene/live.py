"""An intervention applied while a model generates (HF `generate` with its KV cache): the budget sweeps of
intervened models.

The edit runs at the hook on every forward of the generating model: once on the prompt (the prefill), then
on each new token. patch_set and ablate_set need the latents of the PAIRED activations, so the other model
(the partner) runs beside it on exactly the same tokens — the same attention mask and position ids — up to
the hook only (`hooks.capture`), with a KV cache of its own that is started afresh whenever the generating
model's is (a new batch). The partner's cache holds only the layers before the hook: nothing after it is
ever needed.

Which positions are edited follows the text passes: not the first token when the crosscoder never saw
position 0 (position id 0: the first real token of a left-padded prompt), and no massive-activation token,
judged against a FIXED norm per model (`max_norm_ratio` × the median norm on the clean general text:
generation sees one token at a time, so harvest's batch median has nothing to take the median of).
`prompt_only` (steer) edits the prefill's positions only.

Every hook is removed when the block exits, also on an error (tests/test_intervene_edits.py checks both models
for left-over hooks after every kind of intervention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from reasondiff.intervene.edits import MODEL_INDEX, Direction, Intervention, edit_for, latents_of
from reasondiff.lm.hooks import base_transformer, capture, residual_hook

CACHE_KEYS = ("cache", "past_key_values")
"""The KV cache's keyword in a decoder's forward (transformers renamed past_key_values to cache)."""


def _cache_of(kwargs: dict) -> tuple[str, object]:
    for key in CACHE_KEYS:
        if kwargs.get(key) is not None:
            return key, kwargs[key]
    return CACHE_KEYS[0], None


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@contextlib.contextmanager
def live_intervention(model, hook, intervention: Intervention, crosscoder, *, partner=None, keep_first: bool,
                      norm_limits: tuple[float, float] | None = None, directions: dict[str, Direction] | None = None,
                      prompt_only: bool = False) -> Iterator[None]:
    """Inside the block, every forward of `model` runs with `intervention` at `hook` (the partner model beside
    it when the intervention needs the paired latents). `norm_limits`: (base, tuned) raw norms above which a
    token counts as a massive activation and is left alone."""
    m = MODEL_INDEX[intervention.model]
    needs_partner = intervention.kind in ("patch_set", "ablate_set", "restore_set", "patch_residual")
    if needs_partner and partner is None:
        raise ValueError(f"{intervention.name} needs the other model's activations: pass partner=")
    state: dict[str, object] = {}

    def before_forward(module, args, kwargs):
        input_ids = args[0] if args else kwargs.get("input_ids")
        key, cache = _cache_of(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(past, past + length, device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1)
        state.update(prefill=past == 0, positions=positions)
        if needs_partner:
            if past == 0 or "cache" not in state:
                state["cache"] = _new_cache(partner)
            passed = {k: v for k, v in kwargs.items() if k not in ("input_ids", "inputs_embeds", "use_cache", *CACHE_KEYS)}
            mask = passed.pop("attention_mask", None)
            state["partner"] = capture(partner, input_ids, mask, hook, use_cache=True, **{key: state["cache"]}, **passed)
        return None

    def where(acts: torch.Tensor, pair: torch.Tensor | None) -> torch.Tensor:
        keep = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
        if keep_first:
            keep &= state["positions"].to(acts.device) != 0
        if norm_limits is not None:
            if pair is None:
                keep &= acts.float().norm(dim=-1) <= norm_limits[m]
            else:
                limits = torch.tensor(norm_limits, device=acts.device)
                keep &= (pair.norm(dim=-1) <= limits).all(dim=-1)
        return keep

    def step(acts: torch.Tensor) -> torch.Tensor | None:
        if prompt_only and not state["prefill"]:
            return None
        other = state.get("partner") if needs_partner else None
        f, pair = None, None
        if other is not None:
            own, theirs = acts.float(), other.to(device=acts.device, dtype=torch.float32)
            pair = torch.stack((own, theirs) if m == 0 else (theirs, own), dim=2).to(crosscoder.W_dec.device)
            f = latents_of(crosscoder, pair)
        edit = edit_for(intervention, crosscoder, f=f, partner=other, where=where(acts, pair), directions=directions)
        return edit(acts)

    handle = base_transformer(model).register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        with residual_hook(model, hook, step):
            yield
    finally:
        handle.remove()
        state.clear()


class LiveGenerator:
    """A bench generator (`generate`, `stop_ids`, `chunk_size`) whose every generation runs under an
    intervention: the bench's own sweep (`reasondiff.bench.sweep_chunk`) drives it unchanged."""

    def __init__(self, generator, intervene):
        self.generator = generator
        self.intervene = intervene
        """A no-argument context manager factory: `with intervene(): ...` holds the intervention."""
        self.stop_ids = generator.stop_ids
        self.chunk_size = generator.chunk_size
        self.model = generator.model

    def generate(self, prompts, max_new_tokens, **kwargs):
        with self.intervene():
            return self.generator.generate(prompts, max_new_tokens, **kwargs)
