"""Hook points: HF early-stop capture == TransformerBridge run_with_cache; replacement; early stop."""

from __future__ import annotations

import copy

import pytest
import torch

from reasondiff.harvest.pairs import bridge_activations, paired_activations
from reasondiff.lm.hooks import capture, residual_hook, select_positions
from reasondiff.lm.models import hooked, parse_hook

HOOKS = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_mid", "blocks.3.hook_resid_post"]


@pytest.fixture
def batch(tiny_tokenizer):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tiny_tokenizer), (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # a right-padded row
    return ids, mask


@pytest.fixture(scope="module")
def bridge(_tiny_model_session, tiny_tokenizer):
    # the bridge rewires its model and edits its tokenizer in place: give it copies
    return hooked(copy.deepcopy(_tiny_model_session), copy.deepcopy(tiny_tokenizer), name="Qwen/Qwen2-0.5B")


@pytest.mark.parametrize("name", HOOKS)
def test_early_stop_capture_matches_transformer_bridge(tiny_model, bridge, batch, name):
    ids, mask = batch
    hook = parse_hook(name, tiny_model.config.num_hidden_layers)
    ours = capture(tiny_model, ids, mask, hook)
    theirs = bridge_activations(bridge, ids, mask, hook, stop_early=False)
    assert ours.shape == (3, 24, tiny_model.config.hidden_size)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)
    # and the bridge's own early stop gives the same numbers as its full forward
    torch.testing.assert_close(bridge_activations(bridge, ids, mask, hook, stop_early=True), theirs)


def test_resid_pre_is_the_hidden_state_entering_the_layer(tiny_model, batch):
    ids, _ = batch
    with torch.no_grad():
        hidden = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(tiny_model.config.num_hidden_layers):
        torch.testing.assert_close(capture(tiny_model, ids, None, parse_hook(f"blocks.{layer}.hook_resid_pre", 4)),
                                   hidden[layer])


def test_capture_runs_no_layer_after_the_hook_point_nor_the_unembedding(tiny_model, batch):
    ids, mask = batch
    ran = []
    for index, layer in enumerate(tiny_model.model.layers):
        layer.register_forward_hook(lambda m, a, o, index=index: ran.append(index))
    tiny_model.lm_head.register_forward_hook(lambda m, a, o: ran.append("lm_head"))
    tiny_model.model.norm.register_forward_hook(lambda m, a, o: ran.append("norm"))
    capture(tiny_model, ids, mask, parse_hook("blocks.2.hook_resid_pre", 4))
    assert ran == [0, 1]
    ran.clear()
    capture(tiny_model, ids, mask, parse_hook("blocks.2.hook_resid_post", 4))
    assert ran == [0, 1, 2]
    # no hook is left behind: a full forward afterwards is unchanged and runs everything
    ran.clear()
    with torch.no_grad():
        tiny_model(input_ids=ids)
    assert ran == [0, 1, 2, 3, "norm", "lm_head"]


@pytest.mark.parametrize("name", HOOKS)
def test_replacement_changes_downstream_and_identity_does_not(tiny_model, batch, name):
    ids, _ = batch
    hook = parse_hook(name, 4)
    with torch.no_grad():
        clean = tiny_model(input_ids=ids).logits
        with residual_hook(tiny_model, hook, lambda acts: acts.clone()):
            same = tiny_model(input_ids=ids).logits
        with residual_hook(tiny_model, hook, torch.zeros_like):
            ablated = tiny_model(input_ids=ids).logits
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-5)
    assert (ablated - clean).abs().max() > 1e-2


@pytest.mark.parametrize("name", HOOKS)
def test_replacement_is_what_the_hook_point_then_holds(tiny_model, batch, name):
    """Replace at the hook, observe at the same hook from a second (outer) hook: the value seen
    downstream is the replacement (for resid_mid up to the rounding of one subtraction)."""
    ids, _ = batch
    hook = parse_hook(name, 4)
    target = torch.randn(3, 24, 128)
    seen = []
    layers = tiny_model.model.layers
    # a norm whose input is the residual stream right at the hook point
    probe_module = {"hook_resid_pre": layers[hook.layer].input_layernorm,
                    "hook_resid_mid": layers[hook.layer].post_attention_layernorm,
                    "hook_resid_post": layers[hook.layer + 1].input_layernorm if hook.layer + 1 < 4
                    else tiny_model.model.norm}[hook.kind]
    probe = probe_module.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad(), residual_hook(tiny_model, hook, lambda acts: target):
        tiny_model(input_ids=ids)
    probe.remove()
    torch.testing.assert_close(seen[-1], target, rtol=1e-5, atol=1e-5)


def test_paired_activations_base_first(tiny_model, tiny_tokenizer, batch):
    from reasondiff.tiny import make_model

    tuned = make_model(tiny_tokenizer, seed=1)
    ids, mask = batch
    hook = parse_hook("blocks.2.hook_resid_pre", 4)
    pair = paired_activations(tiny_model, tuned, ids, mask, hook)
    assert pair.shape == (3, 24, 2, 128)
    torch.testing.assert_close(pair[:, :, 0], capture(tiny_model, ids, mask, hook))
    torch.testing.assert_close(pair[:, :, 1], capture(tuned, ids, mask, hook))
    assert not torch.allclose(pair[:, :, 0], pair[:, :, 1])


def test_select_positions_drops_padding_first_position_and_massive_tokens():
    acts = torch.ones(2, 6, 2, 4)
    acts[0, 3, 1] *= 50  # a massive token in the tuned model only
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    keep, n_massive = select_positions(acts, mask, drop_first_position=True, max_norm_ratio=10.0)
    expected = torch.tensor([[0, 1, 1, 0, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(keep, expected) and n_massive == 1
    keep, n_massive = select_positions(acts, mask, drop_first_position=False, max_norm_ratio=None)
    assert torch.equal(keep, mask.bool()) and n_massive == 0
