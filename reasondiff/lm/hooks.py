"""Residual-stream activations at a TransformerLens hook point, read from a plain HF model.

`residual_hook` registers PyTorch hooks on the HF decoder layer that a TransformerLens name
denotes (`blocks.L.hook_resid_pre` = input of `layers[L]`; `hook_resid_post` = its output;
`hook_resid_mid` = the residual after attention, before the MLP), so every stage can observe or
replace activations without wrapping the model. `capture` uses it to *stop the forward* right
after the hook point: harvesting never runs the layers after L nor the unembedding, which at
L=14 of 24 is about half the work of a full forward (ARCHITECTURE.md). `select_positions` is
the one rule for which positions count (no padding, optionally no first position, no
massive-activation token), shared by harvest and analyze.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from reasondiff.lm.models import HookPoint

ActivationFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class _StopForward(Exception):
    """Raised from a hook once the activation is captured: the rest of the forward is skipped."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (`model.model.layers`) or of its base model (`.layers`)."""
    for candidate in (model, getattr(model, "model", None), getattr(model, "base_model", None)):
        layers = getattr(candidate, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise TypeError(f"{type(model).__name__}: no decoder layers found (expected model.model.layers, "
                    "as in Qwen2/Llama/Mistral)")


def base_transformer(model) -> torch.nn.Module:
    """The module that runs embeddings + decoder layers (without the unembedding)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(getattr(inner, "layers", None), torch.nn.ModuleList) else model


def _first(args: tuple, output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def residual_hook(model, hook: HookPoint, fn: ActivationFn) -> Iterator[None]:
    """Call `fn(acts [B, T, d])` at `hook` on every forward inside the block; a tensor it returns
    replaces the activation for the rest of the forward (splicing, ablation), None only observes."""
    layers = decoder_layers(model)
    if not 0 <= hook.layer < len(layers):
        raise ValueError(f"{hook.name}: the model has {len(layers)} layers")
    layer = layers[hook.layer]
    handles = []
    if hook.kind == "hook_resid_pre":
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if new is None:
                return None
            new = new.to(hidden.dtype)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
    elif hook.kind == "hook_resid_post":
        def post_hook(module, args, output):
            hidden = _first(args, output)
            new = fn(hidden)
            if new is None:
                return None
            new = new.to(hidden.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(layer.register_forward_hook(post_hook))
    elif hook.kind == "hook_resid_mid":
        handles.extend(_mid_hooks(layer, fn))
    else:
        raise ValueError(f"unknown hook kind {hook.kind!r}")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _mid_hooks(layer, fn: ActivationFn) -> list:
    """resid_mid = layer input + attention output. HF keeps that sum in a local variable that is
    both the MLP's residual and the input of `post_attention_layernorm`, so no single hook can
    replace it; instead the attention output is rewritten to `replacement - layer input`, which
    makes the sum equal the replacement (up to one rounding of the subtraction)."""
    if not hasattr(layer, "self_attn"):
        raise NotImplementedError(f"hook_resid_mid on {type(layer).__name__}: no self_attn submodule")
    state: dict[str, torch.Tensor] = {}

    def remember_input(module, args, kwargs):
        state["resid_pre"] = args[0] if args else kwargs["hidden_states"]

    def attn_hook(module, args, output):
        attn_out = _first(args, output)
        resid_pre = state.pop("resid_pre")
        new = fn(resid_pre + attn_out)
        if new is None:
            return None
        attn_new = new.to(attn_out.dtype) - resid_pre
        return (attn_new, *output[1:]) if isinstance(output, tuple) else attn_new

    return [layer.register_forward_pre_hook(remember_input, with_kwargs=True),
            layer.self_attn.register_forward_hook(attn_hook)]


@torch.no_grad()
def capture(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, hook: HookPoint,
            **forward_kwargs) -> torch.Tensor:
    """Activations [B, T, d] at `hook`, running the model only up to the hook point. `forward_kwargs` go to
    the base transformer's forward (a KV cache with use_cache=True: the layers before the hook extend it)."""
    captured: list[torch.Tensor] = []

    def grab(acts: torch.Tensor) -> None:
        captured.append(acts)
        raise _StopForward

    device = next(model.parameters()).device
    if isinstance(attention_mask, torch.Tensor):
        attention_mask = attention_mask.to(device)
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}  # or masks prepared by generate
    kwargs = {"use_cache": False, **kwargs, **forward_kwargs}
    with residual_hook(model, hook, grab), contextlib.suppress(_StopForward):
        base_transformer(model)(input_ids=input_ids.to(device), **kwargs)
    if not captured:
        raise RuntimeError(f"{hook.name}: the forward finished without reaching the hook point")
    return captured[0]


def select_positions(acts: torch.Tensor, attention_mask: torch.Tensor | None, *, drop_first_position: bool,
                     max_norm_ratio: float | None) -> tuple[torch.Tensor, int]:
    """Boolean [B, T] mask of the positions kept: no padding, optionally no first position, and
    optionally no massive-activation token (norm in either model > max_norm_ratio x the batch's
    median norm of that model). Returns (mask, number of tokens dropped for their norm)."""
    batch, length = acts.shape[:2]
    keep = torch.ones(batch, length, dtype=torch.bool, device=acts.device)
    if attention_mask is not None:
        keep &= attention_mask.to(acts.device).bool()
    if drop_first_position:
        keep[:, 0] = False
    n_massive = 0
    if max_norm_ratio is not None and keep.any():
        norms = acts.float().norm(dim=-1)  # [B, T, 2]
        median = norms[keep].median(dim=0).values  # [2], over the tokens otherwise kept
        massive = (norms > max_norm_ratio * median).any(dim=-1) & keep
        n_massive = int(massive.sum())
        keep &= ~massive
    return keep, n_massive
