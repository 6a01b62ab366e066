"""The crosscoder module: fused GEMMs vs the per-model formula, init, fold/unfold, checkpoint format."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from reasondiff.core import artifacts
from reasondiff.core.artifacts import sha256_file
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
    verify_crosscoder,
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
    with pytest.raises(UserError, match=r"no crosscoder.*analyze\.crosscoder_dir at"):  # the key's real name
        load_crosscoder(tmp_path)
    cc = _trained_looking()
    cc.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["n_latents"] = 48
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not match"):
        load_crosscoder(tmp_path)


# --- a damaged crosscoder file (issue 32.2): one line naming the file and what to do ----------------
def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    if how == "truncated":
        del data[len(data) // 2:]
    elif how == "garbage header":
        data[8:40] = b"\x00garbage that is no JSON at all\x00"
    elif how == "random bytes":  # NaN bit patterns in the middle of the tensors
        data[header + 64:header + 192] = b"\xff\xff\xff\x7f" * 32
    elif how == "zeroed":
        data[header:] = bytes(len(data) - header)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbage header", "random bytes", "zeroed"])
def test_a_damaged_weights_file_is_one_line_naming_it(tmp_path, how):
    _trained_looking().save(tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["weights_sha256"] == sha256_file(tmp_path / WEIGHTS_FILE)
    verify_crosscoder(tmp_path)  # intact
    _damage(tmp_path / WEIGHTS_FILE, how)
    for check in (verify_crosscoder, load_crosscoder):
        with pytest.raises(UserError, match=r"crosscoder\.safetensors does not match the sha256") as err:
            check(tmp_path)
        assert "\n" not in str(err.value) and "overwrite=true" in str(err.value)


@pytest.mark.parametrize("how, message", [("truncated", "cannot be read"), ("garbage header", "cannot be read"),
                                          ("random bytes", "non-finite"), ("zeroed", "all zeros")])
def test_damage_is_caught_without_the_checksum(tmp_path, how, message):
    """verify=False (or a crosscoder saved before checksums) still never loads damage as numbers."""
    _trained_looking().save(tmp_path)
    _damage(tmp_path / WEIGHTS_FILE, how)
    with pytest.raises(UserError, match=message) as err:
        load_crosscoder(tmp_path, verify=False)
    assert str(tmp_path / WEIGHTS_FILE) in str(err.value) and "\n" not in str(err.value)


def test_verify_false_reads_an_edited_crosscoder(tmp_path):
    cc = _trained_looking()
    cc.save(tmp_path)
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    state["b_enc"] = state["b_enc"] + 1
    save_file(state, str(tmp_path / WEIGHTS_FILE), metadata={"config": json.dumps(asdict(cc.cfg), sort_keys=True)})
    with pytest.raises(UserError, match="sha256"):
        load_crosscoder(tmp_path)
    torch.testing.assert_close(load_crosscoder(tmp_path, verify=False).b_enc, cc.b_enc + 1)


def test_a_damaged_config_is_one_line(tmp_path):
    _trained_looking().save(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"d_model": 8, "n_lat')
    with pytest.raises(UserError, match=r"config\.json is not valid JSON"):
        load_crosscoder(tmp_path)


def test_encode_names_the_pair_shape_it_expects():
    cc = _trained_looking()
    with pytest.raises(ValueError, match=r"\[batch, 2, 8\]"):
        cc.encode(torch.randn(5, 8))  # one model's activations
    with pytest.raises(ValueError, match=r"\[batch, 2, 8\]"):
        cc.normalise(torch.randn(5, 8))
    assert cc.encode(torch.randn(5, 2, 8)).shape == (5, 24)


def test_saved_weights_are_readable_by_the_team(tmp_path):
    """safetensors replaces the staging file: its mode must still be the umask's, not mkstemp's 0600."""
    _trained_looking().save(tmp_path)
    assert (tmp_path / WEIGHTS_FILE).stat().st_mode & 0o777 == artifacts._file_mode()
