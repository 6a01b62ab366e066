"""Resuming a forward at a hook point (reasondiff/lm/resume_forward.py) gives what a full forward with the
same edit at that hook gives: for resid_pre, resid_mid and resid_post, the first and last layers,
several edits stacked in one batch or in groups, one context or several, sdpa or eager attention."""

from __future__ import annotations

import pytest
import torch

from reasondiff.lm.hooks import residual_hook
from reasondiff.lm.models import parse_hook
from reasondiff.lm.resume_forward import RESUME_TOKENS, clean_run, final_norm, resume_layer, resumed_at_hook

N_LAYERS = 4  # the tiny model's


def full_forward(model, ids, hook, edit):
    """The reference: the whole model with `edit` at `hook` (hooks.residual_hook), hidden states after the final norm."""
    with torch.no_grad(), residual_hook(model, hook, edit):
        return model.base_model(input_ids=ids, use_cache=False).last_hidden_state


def edits_for(shape, seed=0):
    """Edits of every kind the stages make: none, zero everywhere, a splice at some positions, a scaled copy."""
    g = torch.Generator().manual_seed(seed)
    replacement = torch.randn(shape, generator=g)
    where = torch.rand(shape[:2], generator=g) > 0.5
    where[:, 0] = False
    return {"observe": lambda a: None,
            "zero": lambda a: torch.zeros_like(a),
            "splice": lambda a: torch.where(where.unsqueeze(-1), replacement.to(a.dtype), a),
            "scaled": lambda a: 0.5 * a}


@pytest.mark.parametrize("hook_name", ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_mid",
                                       "blocks.1.hook_resid_post", "blocks.3.hook_resid_post", "blocks.3.hook_resid_mid"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_resumed_runs_equal_full_forwards_with_the_edit_hooked_in(tiny_model, tiny_tokenizer, hook_name, attention):
    tiny_model.set_attn_implementation(attention)
    hook = parse_hook(hook_name, N_LAYERS)
    ids = torch.randint(0, len(tiny_tokenizer), (3, 20))
    run = clean_run(tiny_model, ids, from_layer=hook.layer)
    assert all(r is None for r in run.resid[:hook.layer]) and all(k is None for k in run.layer_kwargs[:hook.layer])
    d = tiny_model.config.hidden_size
    edits = edits_for((3, 20, d))
    resumed = resumed_at_hook(tiny_model, run, hook, list(edits.values()))
    norm = final_norm(tiny_model)
    for (name, edit), final in zip(edits.items(), resumed, strict=True):
        expected = full_forward(tiny_model, ids, hook, edit)
        torch.testing.assert_close(norm(final), expected, atol=2e-5, rtol=1e-5, msg=f"{hook_name} {name}")
    # the clean run itself: its own output, and its final norm of the last residual
    torch.testing.assert_close(run.last_hidden, full_forward(tiny_model, ids, hook, lambda a: None))
    torch.testing.assert_close(norm(run.resid[-1]), run.last_hidden)
    # an edit that changes something changes the result (the comparison above is not vacuous)
    assert not torch.allclose(norm(resumed[1]), run.last_hidden, atol=1e-3)


def test_grouping_and_batch_size_do_not_change_the_result(tiny_model, tiny_tokenizer):
    hook = parse_hook("blocks.1.hook_resid_mid", N_LAYERS)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 16))
    run = clean_run(tiny_model, ids)
    edits = list(edits_for((2, 16, tiny_model.config.hidden_size), seed=1).values())
    together = resumed_at_hook(tiny_model, run, hook, edits)
    one_at_a_time = resumed_at_hook(tiny_model, run, hook, edits, max_tokens=1)  # one edit per group
    assert len(together) == len(one_at_a_time) == len(edits)
    for a, b in zip(together, one_at_a_time, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # one context alone (layer arguments with a batch dimension of 1 are broadcast, not repeated)
    single = clean_run(tiny_model, ids[:1])
    alone = resumed_at_hook(tiny_model, single, hook, [lambda a: torch.zeros_like(a), lambda a: 2 * a])
    torch.testing.assert_close(alone[0], resumed_at_hook(tiny_model, run, hook, [lambda a: torch.zeros_like(a)])[0][:1],
                               atol=1e-5, rtol=1e-5)
    assert RESUME_TOKENS >= 512


def test_resume_layer_and_the_runs_that_cannot_resume(tiny_model, tiny_tokenizer):
    assert [resume_layer(parse_hook(f"blocks.2.hook_resid_{k}", N_LAYERS)) for k in ("pre", "mid", "post")] == [2, 2, 3]
    ids = torch.randint(0, len(tiny_tokenizer), (1, 8))
    late = clean_run(tiny_model, ids, from_layer=3)
    with pytest.raises(ValueError, match="from_layer"):
        resumed_at_hook(tiny_model, late, parse_hook("blocks.1.hook_resid_pre", N_LAYERS), [lambda a: None])
    with pytest.raises(ValueError, match="layers"):
        clean_run(tiny_model, ids, from_layer=5)
