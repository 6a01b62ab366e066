"""Reading every layer of a model in one forward, and activation patching of every layer in one batch.

Residual stream positions are numbered as in TransformerLens: layer L in 0..N-1 is
`blocks.L.hook_resid_pre` (the input of decoder layer L; L = 0 is the embedding output) and layer N
is the final residual, `blocks.{N-1}.hook_resid_post` (before the final norm). Components:
`blocks.L.hook_attn_out` / `hook_mlp_out`, the attention / MLP outputs added to the residual.

The machinery is the foundation's (`reasondiff/lm/resume_forward.py`, shared with analyze's CE
recovery): `clean_run` runs the model once, keeping what each layer received: its residual input and
the keyword arguments the model computed for it (rotary position embeddings, attention mask).
Patching needs nothing else: the whole residual stream at layer L carries everything the layers
after L see, so "the recipient with the donor's residual at layer L" is the recipient's layers
L..N-1 applied to the donor's residual, then its final norm and unembedding.
`patched_final_residuals` does that for every L at once with a batch that grows by one copy per
layer (copy L joins at layer L), so the layers before L never run for copy L: N(N+1)/2 layer passes
in N batched calls instead of N+1 full forwards. The model's own forward is never re-implemented;
only its decoder layers are called, with the arguments it passed them. This module adds the
unembedding as log-probabilities and its check.

Padding: texts are right-padded and run WITHOUT an attention mask. Under causal attention a real
token never sees the pad tokens after it, so its activations are exactly those of the unpadded
text; the pad positions are left out of every statistic.
"""

from __future__ import annotations

import torch

from reasondiff.core.errors import UserError
from reasondiff.lm.hooks import base_transformer
from reasondiff.lm.resume_forward import CleanRun, clean_run, patched_final_residuals
from reasondiff.scan.similarity import kl_divergence

__all__ = ["CleanRun", "Unembedding", "check_unembedding", "clean_run", "patched_final_residuals"]


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
