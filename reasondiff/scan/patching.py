"""Reading every layer of a model in one forward, and activation patching of every layer in one batch.

Residual stream positions are numbered as in TransformerLens: layer L in 0..N-1 is
`blocks.L.hook_resid_pre` (the input of decoder layer L; L = 0 is the embedding output) and layer N
is the final residual, `blocks.{N-1}.hook_resid_post` (before the final norm). Components:
`blocks.L.hook_attn_out` / `hook_mlp_out`, the attention / MLP outputs added to the residual.

`clean_run` registers hooks on every decoder layer (and its attention and MLP) and runs the model
once, keeping what each layer received: its residual input and the keyword arguments the model
computed for it (rotary position embeddings, attention mask). Patching needs nothing else: the
whole residual stream at layer L carries everything the layers after L see, so "the recipient
with the donor's residual at layer L" is the recipient's layers L..N-1 applied to the donor's
residual, then its final norm and unembedding. `patched_final_residuals` does that for every L at
once with a batch that grows by one copy per layer (copy L joins at layer L), so the layers before
L never run for copy L: N(N+1)/2 layer passes in N batched calls instead of N+1 full forwards.
The model's own forward is never re-implemented; only its decoder layers are called, with the
arguments it passed them.

Padding: texts are right-padded and run WITHOUT an attention mask. Under causal attention a real
token never sees the pad tokens after it, so its activations are exactly those of the unpadded
text; the pad positions are left out of every statistic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from reasondiff.errors import UserError
from reasondiff.hooks import base_transformer, decoder_layers
from reasondiff.scan.similarity import kl_divergence


@dataclass
class CleanRun:
    """One model's activations on a batch [B, T]: what a scan compares and what patching needs."""

    resid: list[torch.Tensor]
    """N+1 tensors [B, T, d]: resid_pre of layers 0..N-1, then the final residual (pre-norm)."""
    layer_kwargs: list[dict[str, Any]]
    """The keyword arguments each decoder layer was called with (position embeddings, mask, ...)."""
    attn_out: list[torch.Tensor] = field(default_factory=list)
    """N tensors [B, T, d] (empty unless components were read)."""
    mlp_out: list[torch.Tensor] = field(default_factory=list)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def clean_run(model, input_ids: torch.Tensor, *, components: bool = False) -> CleanRun:
    """Run `model` once on `input_ids` (no attention mask: see the module docstring) reading every layer."""
    layers = decoder_layers(model)
    n_layers = len(layers)
    resid: list[torch.Tensor | None] = [None] * (n_layers + 1)
    kwargs_seen: list[dict[str, Any] | None] = [None] * n_layers
    attn_out: list[torch.Tensor | None] = [None] * n_layers
    mlp_out: list[torch.Tensor | None] = [None] * n_layers
    handles = []

    def pre_hook(index):
        def hook(module, args, kwargs):
            resid[index] = args[0] if args else kwargs["hidden_states"]
            kwargs_seen[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if len(args) > 1:
                raise NotImplementedError(f"{type(module).__name__} got {len(args)} positional arguments; "
                                          "the scan replays only keyword arguments")
        return hook

    def final_hook(module, args, output):
        resid[n_layers] = _first(output)

    def store(target, index):
        def hook(module, args, output):
            target[index] = _first(output)
        return hook

    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(index), with_kwargs=True))
            if components:
                handles.append(layer.self_attn.register_forward_hook(store(attn_out, index)))
                handles.append(layer.mlp.register_forward_hook(store(mlp_out, index)))
        handles.append(layers[-1].register_forward_hook(final_hook))
        device = next(model.parameters()).device
        base_transformer(model)(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(r is None for r in resid) or any(k is None for k in kwargs_seen):
        raise RuntimeError("the forward did not pass through every decoder layer")
    return CleanRun(resid=list(resid), layer_kwargs=list(kwargs_seen),
                    attn_out=list(attn_out) if components else [], mlp_out=list(mlp_out) if components else [])


def _replicate(value: Any, batch: int, copies: int) -> Any:
    """`value` (a layer argument) for `copies` stacked copies of a batch of `batch` rows: tensors
    whose first dimension is the batch are repeated; everything else (broadcast dims, flags) is kept."""
    if isinstance(value, torch.Tensor):
        if copies > 1 and batch > 1 and value.dim() > 0 and value.shape[0] == batch:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_replicate(v, batch, copies) for v in value)
    if isinstance(value, dict):
        return {k: _replicate(v, batch, copies) for k, v in value.items()}
    return value


@torch.no_grad()
def patched_final_residuals(recipient, layer_kwargs: list[dict[str, Any]],
                            donor_resid: list[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """(L, final residual [B, T, d]) of the recipient run on the donor's residual stream at layer L,
    for L = 0..N (L = N: the donor's final residual itself, so only the recipient's final norm and
    unembedding differ). `layer_kwargs` are the recipient's own (`clean_run(...).layer_kwargs`)."""
    layers = decoder_layers(recipient)
    n_layers = len(layers)
    if len(donor_resid) != n_layers + 1:
        raise ValueError(f"donor has {len(donor_resid) - 1} layers, recipient {n_layers}")
    batch = donor_resid[0].shape[0]
    hidden = donor_resid[0]
    for index, layer in enumerate(layers):
        if index > 0:  # copy `index` starts here, from the donor's residual at this layer
            hidden = torch.cat([hidden, donor_resid[index].to(hidden.dtype)], dim=0)
        kwargs = _replicate(layer_kwargs[index], batch, index + 1)
        hidden = _first(layer(hidden, **kwargs))
    for index in range(n_layers):
        yield index, hidden[index * batch:(index + 1) * batch]
    yield n_layers, donor_resid[n_layers]


class Unembedding:
    """The final norm + unembedding of a causal LM as log-probabilities, in chunks of positions (a
    [positions, vocabulary] float32 tensor is 0.6 MB per position for Qwen's 151936 tokens)."""

    def __init__(self, model, chunk_positions: int = 64) -> None:
        inner = base_transformer(model)
        self.norm = getattr(inner, "norm", None)
        self.head = model.get_output_embeddings()
        if self.norm is None or self.head is None:
            raise UserError(f"{type(model).__name__}: the scan needs a final `norm` and an output embedding "
                            "(Qwen2/Llama/Mistral-style models)")
        self.chunk = chunk_positions

    @torch.no_grad()
    def logprobs(self, final_resid: torch.Tensor) -> torch.Tensor:
        """[n, V] float32 log-probabilities from final residuals [n, d]."""
        parts = []
        for lo in range(0, final_resid.shape[0], self.chunk):
            logits = self.head(self.norm(final_resid[lo:lo + self.chunk]))
            parts.append(torch.log_softmax(logits.float(), dim=-1))
        return torch.cat(parts) if parts else torch.zeros(0, self.head.weight.shape[0])

    @torch.no_grad()
    def kl_to(self, final_resid: torch.Tensor, reference: torch.Tensor, *, patched_first: bool) -> torch.Tensor:
        """[n] KL(p || reference) (patched_first) or KL(reference || p) per position, p being this
        model's distribution from `final_resid` [n, d]; chunked so no [n, vocabulary] tensor is made."""
        out = []
        for lo in range(0, final_resid.shape[0], self.chunk):
            logp = self.logprobs(final_resid[lo:lo + self.chunk])
            ref = reference[lo:lo + self.chunk]
            out.append(kl_divergence(logp, ref) if patched_first else kl_divergence(ref, logp))
        return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def check_unembedding(model, input_ids: torch.Tensor) -> None:
    """The scan computes next-token distributions from the final residual itself; make sure that is
    exactly what the model's own forward does (no logit soft-capping, no extra scaling)."""
    device = next(model.parameters()).device
    ids = input_ids[:1, :16].to(device)
    run = clean_run(model, ids)
    ours = Unembedding(model).logprobs(run.resid[-1][0])
    theirs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
    if not torch.allclose(ours, theirs, atol=1e-3, rtol=1e-3):
        raise UserError(f"{type(model).__name__}: final norm + output embedding of the last residual do not "
                        "reproduce the model's logits; the scan supports Qwen2/Llama/Mistral-style models")
