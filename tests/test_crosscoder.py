"""The crosscoder module: fused GEMMs vs the per-model formula, init, fold/unfold, checkpoint format."""

from __future__ import annotations

import json

import pytest
import torch

from reasondiff.core.errors import UserError
from reasondiff.crosscoder.geometry import relative_decoder_norm
from reasondiff.crosscoder.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CrossCoder,
    CrossCoderConfig,
    batch_topk_mask,
    decoder_norm_sum,
    fold_scaling_factors,
    load_crosscoder,
    unfold_scaling_factors,
)


def _trained_looking(variant: str = "l1", d: int = 8, F: int = 24) -> CrossCoder:
    """A crosscoder with non-trivial biases and per-model decoder scales (so bugs cannot hide)."""
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=F, variant=variant, k=3))
    with torch.no_grad():
        cc.W_enc.normal_()
        cc.W_dec.normal_()
        cc.W_dec[:, 1] *= torch.rand(F, 1) * 2
        cc.b_enc.normal_(std=0.5)
        cc.b_dec.normal_()
        cc.scaling_factors.copy_(torch.tensor([3.0, 0.25]))
        cc.threshold.fill_(0.7)
    return cc


def _per_model_reference(W_enc, W_dec, b_enc, b_dec, x):
    """The paper's formula written per model: f = ReLU(Σ_m x_m W_enc[m] + b_enc), x̂_m = f W_dec[:, m] + b_dec[m]."""
    f = torch.relu(sum(x[:, m] @ W_enc[m] for m in range(W_enc.shape[0])) + b_enc)
    recon = torch.stack([f @ W_dec[:, m] + b_dec[m] for m in range(W_enc.shape[0])], dim=1)
    return recon, f


def test_init_is_kissane_nanda():
    cc = CrossCoder(CrossCoderConfig(d_model=16, n_latents=40, dec_init_norm=0.08))
    assert cc.W_enc.shape == (2, 16, 40) and cc.W_dec.shape == (40, 2, 16)
    assert cc.b_enc.shape == (40,) and cc.b_dec.shape == (2, 16) and cc.scaling_factors.shape == (2,)
    torch.testing.assert_close(cc.W_dec.norm(dim=-1), torch.full((40, 2), 0.08))
    assert torch.equal(cc.W_enc, cc.W_dec.permute(1, 2, 0))
    assert torch.equal(cc.scaling_factors, torch.ones(2))


def test_fused_gemms_equal_per_model_formula():
    cc = _trained_looking()
    x = torch.randn(10, 2, 8)
    recon, f = cc(x)
    ref_recon, ref_f = _per_model_reference(cc.W_enc, cc.W_dec, cc.b_enc, cc.b_dec, x)
    torch.testing.assert_close(f, ref_f)
    torch.testing.assert_close(recon, ref_recon)
    assert (f == 0).any() and (f > 0).any()
    # extra leading dims (e.g. [batch, seq, 2, d]) work too
    recon3, f3 = cc(x.view(2, 5, 2, 8))
    torch.testing.assert_close(f3.view(10, -1), f)
    torch.testing.assert_close(recon3.view(10, 2, 8), recon)


def test_normalise_denormalise():
    cc = _trained_looking()
    x = torch.randn(4, 2, 8)
    xn = cc.normalise(x)
    torch.testing.assert_close(xn[:, 0], 3.0 * x[:, 0])
    torch.testing.assert_close(xn[:, 1], 0.25 * x[:, 1])
    torch.testing.assert_close(cc.denormalise(xn), x)


def test_fold_round_trip_keeps_latents_and_raw_reconstructions():
    cc = _trained_looking()
    x_raw = torch.randn(12, 2, 8) * 4
    recon_norm, f = cc(cc.normalise(x_raw))
    folded = cc.folded_weights()
    raw_recon, raw_f = _per_model_reference(folded["W_enc"], folded["W_dec"], folded["b_enc"], folded["b_dec"], x_raw)
    torch.testing.assert_close(raw_f, f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(raw_recon, cc.denormalise(recon_norm), rtol=1e-4, atol=1e-4)
    # The pitfall: with different factors, folded decoder norms give other relative norms ...
    assert not torch.allclose(relative_decoder_norm(folded["W_dec"]), relative_decoder_norm(cc.W_dec.detach()))
    # ... and unfolding restores the trained weights exactly (up to float rounding).
    W_enc, W_dec, b_dec = unfold_scaling_factors(folded["W_enc"], folded["W_dec"], folded["b_dec"], cc.scaling_factors)
    torch.testing.assert_close(W_enc, cc.W_enc.detach())
    torch.testing.assert_close(W_dec, cc.W_dec.detach())
    torch.testing.assert_close(b_dec, cc.b_dec.detach())
    other = CrossCoder(cc.cfg)
    other.set_folded_weights(**folded, scaling_factors=cc.scaling_factors.clone())
    torch.testing.assert_close(other.W_dec, cc.W_dec)
    torch.testing.assert_close(other(other.normalise(x_raw))[1], f)


def test_fold_with_unit_factors_is_identity():
    cc = _trained_looking()
    W_enc, W_dec, b_dec = fold_scaling_factors(cc.W_enc, cc.W_dec, cc.b_dec, torch.ones(2))
    assert torch.equal(W_enc, cc.W_enc) and torch.equal(W_dec, cc.W_dec) and torch.equal(b_dec, cc.b_dec)


def test_batch_topk_mask_keeps_k_per_token_on_average():
    scores = torch.tensor([[5.0, 0.0, 1.0, 2.0], [0.5, 4.0, 3.0, 0.1], [0.2, 0.3, 6.0, 0.0]])
    mask = batch_topk_mask(scores, k=2)
    assert mask.sum() == 6  # k·B over the batch, not k per row
    # the 6 largest (6, 5, 4, 3, 2, 1): row 0 keeps 3 latents, row 2 only 1
    assert mask.tolist() == [[True, False, True, True], [False, True, True, False], [False, False, True, False]]
    # zero scores are never "active" even when k·B exceeds the positives
    assert batch_topk_mask(torch.tensor([[1.0, 0.0]]), k=2).tolist() == [[True, False]]


def test_batchtopk_encode_uses_threshold_on_norm_weighted_activations():
    cc = _trained_looking("batchtopk")
    x = torch.randn(16, 2, 8)
    pre = torch.relu(cc.pre_activations(x))
    scores = pre * decoder_norm_sum(cc.W_dec)
    f = cc.encode(x)
    torch.testing.assert_close(f, pre * (scores > 0.7))
    assert (f == 0).sum() > (pre == 0).sum()  # the threshold removed some positive activations


@pytest.mark.parametrize("variant", ["l1", "batchtopk"])
def test_save_load_round_trip(tmp_path, variant):
    cc = _trained_looking(variant)
    cc.save(tmp_path, extra={"step": 7})
    assert (tmp_path / WEIGHTS_FILE).is_file() and (tmp_path / CONFIG_FILE).is_file()
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["step"] == 7 and config["variant"] == variant and config["n_latents"] == 24
    loaded = load_crosscoder(tmp_path)
    assert not loaded.training
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors", "threshold"):
        assert torch.equal(getattr(loaded, name), getattr(cc, name)) or (variant == "l1" and name == "threshold")
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(loaded(x)[0], cc(x)[0])


def test_load_detects_missing_and_torn_checkpoints(tmp_path):
    with pytest.raises(UserError, match="no crosscoder"):
        load_crosscoder(tmp_path)
    cc = _trained_looking()
    cc.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["n_latents"] = 48
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not match"):
        load_crosscoder(tmp_path)
