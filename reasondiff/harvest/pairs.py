"""Paired activations of the base and tuned models on the same tokens (what harvest stores).

`paired_activations` runs both models up to the hook point (`reasondiff.lm.hooks.capture`, early
stop); `bridge_activations` is the same read through TransformerLens's
`TransformerBridge.run_with_cache` (`harvest.backend=bridge`); tests check that both paths give
the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from reasondiff.lm.hooks import capture, select_positions
from reasondiff.lm.models import HookPoint


@torch.no_grad()
def paired_activations(base_model, tuned_model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       hook: HookPoint) -> torch.Tensor:
    """[B, T, 2, d_model] activations of the same tokens in both models (base first), early-stopped."""
    base = capture(base_model, input_ids, attention_mask, hook)
    tuned = capture(tuned_model, input_ids, attention_mask, hook).to(base.device)
    return torch.stack((base, tuned), dim=2)


# --- TransformerLens path ------------------------------------------------------------------------
@torch.no_grad()
def bridge_activations(bridge, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, hook: HookPoint,
                       *, stop_early: bool = True) -> torch.Tensor:
    """Activations [B, T, d] at `hook` via `TransformerBridge.run_with_cache(names_filter=...)`.
    `stop_early` passes stop_at_layer so blocks after the hook point are skipped."""
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(bridge.cfg.device)
    if stop_early:
        kwargs["stop_at_layer"] = hook.layer + 1
    _, cache = bridge.run_with_cache(input_ids.to(bridge.cfg.device), names_filter=[hook.name], **kwargs)
    return cache[hook.name]


@torch.no_grad()
def paired_bridge_activations(base_bridge, tuned_bridge, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor | None, hook: HookPoint, *,
                              stop_early: bool = True) -> torch.Tensor:
    """As `paired_activations`, through two TransformerBridges."""
    base = bridge_activations(base_bridge, input_ids, attention_mask, hook, stop_early=stop_early)
    tuned = bridge_activations(tuned_bridge, input_ids, attention_mask, hook, stop_early=stop_early)
    return torch.stack((base, tuned.to(base.device)), dim=2)


class PairedHarvester:
    """Both models (or their TransformerBridges) at one hook point: tokens in, kept rows out."""

    def __init__(self, base_model, tuned_model, hook: HookPoint, *, backend: str = "hf",
                 drop_first_position: bool = True, max_norm_ratio: float | None = None) -> None:
        self.base, self.tuned, self.hook, self.backend = base_model, tuned_model, hook, backend
        self.drop_first_position, self.max_norm_ratio = drop_first_position, max_norm_ratio
        self.n_massive_dropped = 0

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows [n, 2, d] on the models' device, token ids [n]) of the positions kept."""
        if self.backend == "bridge":
            acts = paired_bridge_activations(self.base, self.tuned, input_ids, attention_mask, self.hook)
        else:
            acts = paired_activations(self.base, self.tuned, input_ids, attention_mask, self.hook)
        keep, n_massive = select_positions(acts, attention_mask, drop_first_position=self.drop_first_position,
                                           max_norm_ratio=self.max_norm_ratio)
        self.n_massive_dropped += n_massive
        return acts[keep], input_ids.to(keep.device)[keep]


def load_pair(cfg) -> tuple[Any, Any, Any, HookPoint]:
    """(base, tuned, tokenizer, hook point) for `cfg` (model.path, tuned_model, harvest.hook),
    checked to be a compatible pair; TransformerBridges when harvest.backend=bridge."""
    from reasondiff.lm.models import check_compatible, hooked, load_model, parse_hook

    base, base_tok = load_model(cfg.model.path, cfg.hardware, config_key="model.path",
                                revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    tuned, tuned_tok = load_model(cfg.tuned_model, cfg.hardware, config_key="tuned_model")
    shape = check_compatible(base, tuned, base_tok, tuned_tok)
    hook = parse_hook(cfg.harvest.hook, shape.n_layers)
    if cfg.harvest.backend == "bridge":
        import copy

        # the bridge rewires the model and edits the tokenizer in place: give it its own copies
        base = hooked(base, copy.deepcopy(base_tok), name=cfg.model.path)
        tuned = hooked(tuned, copy.deepcopy(tuned_tok), name=cfg.tuned_model)
    return base, tuned, base_tok, hook
