"""Running a decoder-only model from the middle: one clean forward, then only the layers after a point.

Every intervention the stages make on the residual stream (scan's activation patching, analyze's
zero ablation and splicing at the crosscoder's hook) changes nothing before its layer, so the layers
before it would compute exactly what the clean run computed. `clean_run` runs the model once and
keeps what each decoder layer received: its residual input and the keyword arguments the model
computed for it (rotary position embeddings, attention mask, cache-free flags). From there

- `run_layers` applies the model's own decoder layers start..N-1 to any residual stream, several
  copies of the batch stacked along the batch dimension (the layer arguments are replicated);
- `resumed_at_hook` runs the model with edits at a TransformerLens hook point
  (`blocks.L.hook_resid_pre|mid|post`, the same PyTorch hooks as `hooks.residual_hook`), one stacked
  batch for all of them, from layer L (resid_pre, resid_mid) or L+1 (resid_post) on;
- `patched_final_residuals` runs every layer's patch at once with a batch that grows by one copy per
  layer (scan);
- `resume_problem` checks on a short probe that resuming reproduces a model's own forward (callers
  fall back to full forwards when it does not), and `uniform_final_residual` gives the one final
  residual every position gets when the hook holds the same vector everywhere (analyze's zero
  ablation of every position), or None for a model where positions would differ.

The model's forward is never re-implemented: only its decoder layers are called, with the
arguments it passed them, and `final_norm` is its own final norm. What a causal LM does after the
last decoder layer besides that norm (nothing, for Qwen2/Llama/Mistral) is checked by the callers
(`CleanRun.last_hidden` against `final_norm`).

Padding: texts are right-padded and run WITHOUT an attention mask. Under causal attention a real
token never sees the pad tokens after it, so its activations are exactly those of the unpadded text;
the callers leave the pad positions out of every statistic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reasondiff.lm.hooks import ActivationFn, base_transformer, decoder_layers, residual_hook
from reasondiff.lm.models import HookPoint

RESUME_TOKENS = 16 * 512
"""Tokens (copies x batch x positions) run through the resumed layers at once: at most a few hundred
MB of activations for a 0.5B model; more copies are run in groups (the result does not depend on it)."""


@dataclass
class CleanRun:
    """One model's clean forward on a batch [B, T]: what patching and resuming need."""

    resid: list[torch.Tensor | None]
    """N+1 tensors [B, T, d]: resid_pre of layers 0..N-1, then the final residual (before the final
    norm). None for the layers before `from_layer` when the run was asked to keep only the rest."""
    layer_kwargs: list[dict[str, Any] | None]
    """The keyword arguments each decoder layer was called with (position embeddings, mask, ...)."""
    last_hidden: torch.Tensor
    """[B, T, d] the base transformer's own output (after its final norm): the clean run's hidden
    states before the unembedding."""
    attn_out: list[torch.Tensor] = field(default_factory=list)
    """N tensors [B, T, d] (empty unless components were read)."""
    mlp_out: list[torch.Tensor] = field(default_factory=list)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def clean_run(model, input_ids: torch.Tensor, *, components: bool = False, from_layer: int = 0) -> CleanRun:
    """Run `model` once on `input_ids` (no attention mask: see the module docstring) reading every
    layer from `from_layer` on (the residuals and arguments of earlier layers are not kept)."""
    layers = decoder_layers(model)
    n_layers = len(layers)
    if not 0 <= from_layer <= n_layers:
        raise ValueError(f"from_layer={from_layer}: the model has {n_layers} layers")
    resid: list[torch.Tensor | None] = [None] * (n_layers + 1)
    kwargs_seen: list[dict[str, Any] | None] = [None] * n_layers
    attn_out: list[torch.Tensor | None] = [None] * n_layers
    mlp_out: list[torch.Tensor | None] = [None] * n_layers
    handles = []

    def pre_hook(index):
        def hook(module, args, kwargs):
            if len(args) > 1:
                raise NotImplementedError(f"{type(module).__name__} got {len(args)} positional arguments; "
                                          "resuming a forward replays only keyword arguments")
            resid[index] = args[0] if args else kwargs["hidden_states"]
            kwargs_seen[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return hook

    def final_hook(module, args, output):
        resid[n_layers] = _first(output)

    def store(target, index):
        def hook(module, args, output):
            target[index] = _first(output)
        return hook

    try:
        for index in range(from_layer, n_layers):
            layer = layers[index]
            handles.append(layer.register_forward_pre_hook(pre_hook(index), with_kwargs=True))
            if components:
                handles.append(layer.self_attn.register_forward_hook(store(attn_out, index)))
                handles.append(layer.mlp.register_forward_hook(store(mlp_out, index)))
        handles.append(layers[-1].register_forward_hook(final_hook))
        device = next(model.parameters()).device
        out = base_transformer(model)(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(r is None for r in resid[from_layer:]) or any(k is None for k in kwargs_seen[from_layer:]):
        raise RuntimeError("the forward did not pass through every decoder layer")
    return CleanRun(resid=list(resid), layer_kwargs=list(kwargs_seen), last_hidden=out.last_hidden_state,
                    attn_out=list(attn_out) if components else [], mlp_out=list(mlp_out) if components else [])


def replicate(value: Any, batch: int, copies: int) -> Any:
    """`value` (a layer argument) for `copies` stacked copies of a batch of `batch` rows: tensors
    whose first dimension is the batch are repeated; everything else (broadcast dims, flags) is kept."""
    if isinstance(value, torch.Tensor):
        if copies > 1 and batch > 1 and value.dim() > 0 and value.shape[0] == batch:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(replicate(v, batch, copies) for v in value)
    if isinstance(value, dict):
        return {k: replicate(v, batch, copies) for k, v in value.items()}
    return value


@torch.no_grad()
def run_layers(model, layer_kwargs: Sequence[dict[str, Any] | None], start: int, hidden: torch.Tensor, *,
               batch: int) -> torch.Tensor:
    """The final residual (before the final norm) of decoder layers start..N-1 applied to `hidden`
    [copies x batch, T, d], each layer called with the arguments the clean run gave it (`layer_kwargs`
    of a batch of `batch` rows, replicated for the copies)."""
    layers = decoder_layers(model)
    copies = hidden.shape[0] // batch
    for index in range(start, len(layers)):
        kwargs = layer_kwargs[index]
        if kwargs is None:
            raise ValueError(f"layer {index}: the clean run did not keep its arguments (from_layer too late)")
        hidden = _first(layers[index](hidden, **replicate(kwargs, batch, copies)))
    return hidden


def final_norm(model) -> torch.nn.Module:
    """The final norm the base transformer applies after its last decoder layer."""
    norm = getattr(base_transformer(model), "norm", None)
    if norm is None:
        raise TypeError(f"{type(model).__name__}: no final `norm` after the decoder layers "
                        "(expected Qwen2/Llama/Mistral-style models)")
    return norm


def log_probs(model, hidden: torch.Tensor) -> torch.Tensor:
    """log-softmax [n, V] (float32) of the model's logits for hidden states after its final norm [n, d]
    (Gemma-2's final soft cap applied, as its forward does): CE recovery and the interventions score with it."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


def resume_layer(hook: HookPoint) -> int:
    """The first decoder layer a run edited at `hook` must run again: L for resid_pre and resid_mid
    (resid_mid lies inside layer L), L+1 for resid_post (the input of layer L+1)."""
    return hook.layer + 1 if hook.kind == "hook_resid_post" else hook.layer


def hook_activation(run: CleanRun, hook: HookPoint) -> torch.Tensor | None:
    """The clean activation at `hook` when the run holds it (resid_pre, resid_post), else None."""
    if hook.kind == "hook_resid_pre":
        return run.resid[hook.layer]
    if hook.kind == "hook_resid_post":
        return run.resid[hook.layer + 1]
    return None


def _edited(acts: torch.Tensor, edit: ActivationFn) -> torch.Tensor:
    new = edit(acts)
    return acts if new is None else new.to(device=acts.device, dtype=acts.dtype)


@torch.no_grad()
def resumed_at_hook(model, run: CleanRun, hook: HookPoint, edits: Sequence[ActivationFn], *,
                    max_tokens: int = RESUME_TOKENS) -> list[torch.Tensor]:
    """The final residual (before the final norm) [B, T, d] of `model` run with each of `edits`
    applied at `hook` (each edit maps the clean activation [B, T, d] to its replacement, or None to
    leave it), running only the layers from `resume_layer(hook)` on: what a full forward under
    `hooks.residual_hook(model, hook, edit)` gives, up to float rounding. The edits run stacked
    along the batch dimension, `max_tokens` tokens at a time. `run` must come from `clean_run`
    with `from_layer <= hook.layer`."""
    layers = decoder_layers(model)
    if not 0 <= hook.layer < len(layers):
        raise ValueError(f"{hook.name}: the model has {len(layers)} layers")
    start = resume_layer(hook)
    source = run.resid[hook.layer]
    if source is None:
        raise ValueError(f"{hook.name}: the clean run did not keep layer {hook.layer} (from_layer too late)")
    batch, length = source.shape[:2]
    per_group = max(1, max_tokens // max(1, batch * length))
    out: list[torch.Tensor] = []
    for lo in range(0, len(edits), per_group):
        group = list(edits[lo:lo + per_group])
        if hook.kind == "hook_resid_mid":
            # resid_mid exists only inside layer L: run layer L on its clean input under the same
            # mid hook as a full forward, editing each copy of the stacked batch
            def edit_copies(acts: torch.Tensor, group=group) -> torch.Tensor:
                return torch.cat([_edited(part, edit) for part, edit in zip(acts.split(batch), group, strict=True)])

            stacked = source.repeat(len(group), *([1] * (source.dim() - 1)))
            with residual_hook(model, hook, edit_copies):
                final = run_layers(model, run.layer_kwargs, start, stacked, batch=batch)
        else:
            acts = hook_activation(run, hook)
            stacked = torch.cat([_edited(acts, edit) for edit in group])
            final = run_layers(model, run.layer_kwargs, start, stacked, batch=batch)
        out.extend(final.split(batch))
    return out


def close_up_to_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a == b up to float rounding (of b's dtype: bf16 rounds at 4e-3), relative to the larger entries
    (residuals reach the hundreds)."""
    rtol = max(1e-4, 4 * torch.finfo(b.dtype).eps) if b.is_floating_point() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-6)))


@torch.no_grad()
def resume_problem(model, hook: HookPoint, probe: CleanRun) -> str | None:
    """Why a run of `model` resumed at `hook` would NOT give what its full forward gives, or None
    when it does on `probe` (a `clean_run` of a few tokens with `from_layer <= hook.layer`): the
    model's output must be its final norm of the last decoder layer's output, and replaying the
    decoder layers from the hook with the arguments the forward gave them must reproduce the forward.
    A model this fails for is run in full forwards (callers log the reason), never resumed."""
    try:
        norm = final_norm(model)
    except TypeError as err:
        return str(err)
    if probe.resid[-1] is None or not close_up_to_rounding(norm(probe.resid[-1]), probe.last_hidden):
        return "its hidden states are not its final norm of the last decoder layer's output"
    try:
        again = resumed_at_hook(model, probe, hook, [lambda acts: None])[0]
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as err:
        return f"replaying its decoder layers failed ({type(err).__name__}: {err})"
    if not close_up_to_rounding(again, probe.resid[-1]):
        return "replaying its decoder layers from the hook does not reproduce its forward"
    return None


@torch.no_grad()
def uniform_final_residual(model, hook: HookPoint, probe: CleanRun, value: torch.Tensor) -> torch.Tensor | None:
    """The final residual [d] (before the final norm) at EVERY position of a run whose activation at
    `hook` is `value` [d] at every position (zero ablation everywhere: `value` = 0), or None when the
    model does not give every position the same one.

    Why one vector serves every position of every context: the layers after the hook see the same
    input at every position; norms and MLPs act per position, and attention returns a convex
    combination of value vectors that are all the same, whatever the (rotary, causal, sliding) scores
    — so every position stays the same through every layer. A model where that fails (learned
    attention sinks, a position signal added inside the layers) is caught here: the run is made on
    `probe` (a `clean_run` of a few tokens) and every position must agree."""
    final = resumed_at_hook(model, probe, hook, [lambda acts: value.to(acts.dtype).expand_as(acts)])[0]
    rows = final.reshape(-1, final.shape[-1])
    if not close_up_to_rounding(rows, rows[:1].expand_as(rows)):
        return None
    return rows[0].clone()


@torch.no_grad()
def patched_final_residuals(recipient, layer_kwargs: list[dict[str, Any]],
                            donor_resid: list[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """(L, final residual [B, T, d]) of the recipient run on the donor's residual stream at layer L,
    for L = 0..N (L = N: the donor's final residual itself, so only the recipient's final norm and
    unembedding differ). `layer_kwargs` are the recipient's own (`clean_run(...).layer_kwargs`).

    Every L at once with a batch that grows by one copy per layer (copy L joins at layer L), so the
    layers before L never run for copy L: N(N+1)/2 layer passes in N batched calls instead of N+1
    full forwards."""
    layers = decoder_layers(recipient)
    n_layers = len(layers)
    if len(donor_resid) != n_layers + 1:
        raise ValueError(f"donor has {len(donor_resid) - 1} layers, recipient {n_layers}")
    batch = donor_resid[0].shape[0]
    hidden = donor_resid[0]
    for index, layer in enumerate(layers):
        if index > 0:  # copy `index` starts here, from the donor's residual at this layer
            hidden = torch.cat([hidden, donor_resid[index].to(hidden.dtype)], dim=0)
        kwargs = replicate(layer_kwargs[index], batch, index + 1)
        hidden = _first(layer(hidden, **kwargs))
    for index in range(n_layers):
        yield index, hidden[index * batch:(index + 1) * batch]
    yield n_layers, donor_resid[n_layers]
