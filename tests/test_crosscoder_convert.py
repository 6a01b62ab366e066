"""Round trips with the dictionary_learning crosscoder fork's state dict."""

from __future__ import annotations

import pytest
import torch

from reasondiff.crosscoder.convert import from_dictionary_learning, to_dictionary_learning
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig


def _crosscoder(variant="l1", factors=(3.0, 0.5)) -> CrossCoder:
    cc = CrossCoder(CrossCoderConfig(d_model=8, n_latents=20, variant=variant, k=3))
    with torch.no_grad():
        cc.W_enc.normal_()
        cc.W_dec.normal_()
        cc.b_enc.normal_(std=0.5)
        cc.b_dec.normal_()
        cc.scaling_factors.copy_(torch.tensor(factors))
        cc.threshold.fill_(1.5)
    return cc


def _fork_forward(state, x):
    """The fork's CrossCoder/BatchTopKCrossCoder inference math, written from its layout."""
    f = torch.relu(torch.einsum("bld,ldf->bf", x, state["encoder.weight"]) + state["encoder.bias"])
    if "k" in state:
        f = f * (f * state["decoder.weight"].norm(dim=2).sum(0) > state["threshold"])
    return torch.einsum("bf,lfd->bld", f, state["decoder.weight"]) + state["decoder.bias"], f


def test_fork_layout_names_and_shapes():
    state = to_dictionary_learning(_crosscoder())
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "encoder.weight": (2, 8, 20), "encoder.bias": (20,), "decoder.weight": (2, 20, 8),
        "decoder.bias": (2, 8), "code_normalization_id": ()}
    assert int(state["code_normalization_id"]) == 1


@pytest.mark.parametrize("variant", ["l1", "batchtopk"])
def test_unfolded_round_trip_is_exact(variant):
    cc = _crosscoder(variant)
    back = from_dictionary_learning(to_dictionary_learning(cc, fold_scaling=False),
                                    scaling_factors=cc.scaling_factors, folded=False)
    assert (back.cfg.variant, back.cfg.d_model, back.cfg.n_latents) == (variant, 8, 20)
    names = ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors")
    if variant == "batchtopk":  # l1 has no k or inference threshold to carry
        assert back.cfg.k == cc.cfg.k
        names += ("threshold",)
    for name in names:
        assert torch.equal(getattr(back, name), getattr(cc, name)), name


def test_fork_state_round_trip_is_exact():
    state = to_dictionary_learning(_crosscoder(factors=(1.0, 1.0)))
    again = to_dictionary_learning(from_dictionary_learning(state))
    assert state.keys() == again.keys()
    for key in state:
        assert torch.equal(state[key], again[key]), key
    compiled = {f"_orig_mod.{k}": v for k, v in state.items()}  # saved while torch.compile'd
    assert torch.equal(from_dictionary_learning(compiled).W_dec, from_dictionary_learning(state).W_dec)


def test_folded_export_works_on_raw_activations_and_unfolds_back():
    cc = _crosscoder()
    x_raw = torch.randn(16, 2, 8) * 3
    recon_norm, f = cc(cc.normalise(x_raw))
    state = to_dictionary_learning(cc)  # fold_scaling=True
    fork_recon, fork_f = _fork_forward(state, x_raw)
    torch.testing.assert_close(fork_f, f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fork_recon, cc.denormalise(recon_norm), rtol=1e-4, atol=1e-4)
    back = from_dictionary_learning(state, scaling_factors=cc.scaling_factors)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors"):
        torch.testing.assert_close(getattr(back, name), getattr(cc, name))


def test_batchtopk_fold_rescales_the_threshold_or_refuses():
    cc = _crosscoder("batchtopk", factors=(2.0, 2.0))
    x_raw = torch.randn(32, 2, 8)
    _, f = cc(cc.normalise(x_raw))
    state = to_dictionary_learning(cc)
    assert int(state["k"]) == 3
    torch.testing.assert_close(_fork_forward(state, x_raw)[1], f, rtol=1e-4, atol=1e-4)
    assert (f == 0).sum() > (torch.relu(cc.pre_activations(cc.normalise(x_raw))) == 0).sum()
    with pytest.raises(ValueError, match="cannot be folded"):
        to_dictionary_learning(_crosscoder("batchtopk", factors=(2.0, 0.5)))


def test_rejects_foreign_state_dicts():
    state = to_dictionary_learning(_crosscoder())
    with pytest.raises(ValueError, match="CROSSCODER"):
        from_dictionary_learning({**state, "code_normalization_id": torch.tensor(2)})
    with pytest.raises(ValueError, match="does not match"):
        from_dictionary_learning({**state, "decoder.weight": state["decoder.weight"][:, :10]})
    with pytest.raises(ValueError, match="not a dictionary_learning"):
        from_dictionary_learning({"W_enc": state["encoder.weight"]})
