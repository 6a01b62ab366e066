"""Interop with the dictionary_learning fork and Kissane & Nanda's replication, checked against the
golden fixtures their own code wrote (../shared/data/interop/, README there): imports reproduce the
references' raw-space latents and reconstructions (normaliser buffers and BatchTopK thresholds
included), exports carry every buffer under the references' own names, and no export moves a
relative decoder norm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, app_env
from safetensors.torch import load_file, save_file

from reasondiff.core.errors import UserError
from reasondiff.crosscoder.convert import (
    FORK_BATCHTOPK_CONFIG,
    FORK_CROSSCODER_CONFIG,
    KISSANE_DEFAULT_CFG,
    convert,
    detect_format,
    from_dictionary_learning,
    from_kissane,
    load_dictionary_learning,
    save_dictionary_learning,
    to_dictionary_learning,
    to_kissane,
)
from reasondiff.crosscoder.geometry import delta_norm, relative_decoder_norm
from reasondiff.crosscoder.loss import reconstruction_loss, sparsity_penalty
from reasondiff.crosscoder.model import (
    CrossCoder,
    CrossCoderConfig,
    batch_topk_mask,
    decoder_norm_sum,
    load_crosscoder,
)

INTEROP = Path(os.environ.get("REASONDIFF_INTEROP", SHARED_DATA / "interop"))
pytestmark = pytest.mark.skipif(not (INTEROP / "fork_l1" / "model.safetensors").is_file(),
                                reason=f"needs the interop fixtures at {INTEROP} (REASONDIFF_INTEROP)")
TOL = {"rtol": 1e-5, "atol": 1e-5}
FORKS = ("fork_l1", "fork_batchtopk")


def fixture(name: str, file: str) -> dict[str, torch.Tensor]:
    return load_file(str(INTEROP / name / file))


def raw_forward(cc: CrossCoder, x_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """normalise → encode → decode → denormalise: latents and the RAW-space reconstruction."""
    with torch.no_grad():
        f = cc.encode(cc.normalise(x_raw))
        return f, cc.denormalise(cc.decode(f))


def imported(tmp_path: Path, name: str, **kwargs) -> CrossCoder:
    out = convert(INTEROP / name, tmp_path / f"{name}_imported", **kwargs)
    return load_crosscoder(out)


# --- import -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FORKS)
def test_fork_import_reproduces_the_forks_raw_space_outputs(tmp_path, name):
    cc = imported(tmp_path, name)
    x, expected = fixture(name, "inputs.safetensors")["x"], fixture(name, "expected.safetensors")
    f, x_hat = raw_forward(cc, x)
    assert torch.equal(f > 0, expected["f"] > 0)  # the same active sets, threshold included
    torch.testing.assert_close(f, expected["f"], **TOL)
    torch.testing.assert_close(x_hat, expected["x_hat"], **TOL)  # raw space: the mean was folded in
    torch.testing.assert_close(f * decoder_norm_sum(cc.W_dec), expected["f_scaled"], **TOL)
    # geometry on the stored decoder, as the fork (and Minder et al.) read it
    torch.testing.assert_close(relative_decoder_norm(cc.W_dec), expected["r_stored"], **TOL)
    torch.testing.assert_close(delta_norm(cc.W_dec), expected["delta_fork_stored"][1], **TOL)
    torch.testing.assert_close(cc.scaling_factors, fixture(name, "model.safetensors")["activation_global_scale"])


def test_fork_batchtopk_threshold_k_and_training_selection(tmp_path):
    cc = imported(tmp_path, "fork_batchtopk")
    model, expected = fixture("fork_batchtopk", "model.safetensors"), fixture("fork_batchtopk", "expected.safetensors")
    assert cc.cfg.variant == "batchtopk" and cc.cfg.k == int(model["k"]) == 4
    assert float(cc.threshold) == float(model["threshold"])
    f, _ = raw_forward(cc, fixture("fork_batchtopk", "inputs.safetensors")["x"])
    assert float((f > 0).float().sum(-1).mean()) == pytest.approx(3.59375)  # README: mean L0 3.59
    # training mode: the batch top-k of the scaled ReLU codes keeps exactly the fork's k·B entries
    relu = torch.relu(cc.pre_activations(cc.normalise(fixture("fork_batchtopk", "inputs.safetensors")["x"]))).detach()
    torch.testing.assert_close(relu, expected["f_relu"], **TOL)
    mask = batch_topk_mask(relu * decoder_norm_sum(cc.W_dec).detach(), cc.cfg.k)
    assert torch.equal(mask, expected["f_train"] > 0)
    torch.testing.assert_close(relu * mask, expected["f_train"], **TOL)


def test_fork_normaliser_is_folded_not_dropped():
    """The mean goes into the biases; a crosscoder that ignored it would be far off in raw space."""
    state = fixture("fork_l1", "model.safetensors")
    cc = from_dictionary_learning(state)
    assert not torch.allclose(cc.b_dec, state["decoder.bias"])
    dropped = from_dictionary_learning({k: v for k, v in state.items() if k not in ("activation_mean", "activation_std")},
                                       scaling_factors=state["activation_global_scale"])
    x, expected = fixture("fork_l1", "inputs.safetensors")["x"], fixture("fork_l1", "expected.safetensors")
    assert (raw_forward(dropped, x)[1] - expected["x_hat"]).abs().max() > 1.0


def test_fork_without_normaliser_is_the_identity():
    """Paper-era fork crosscoders have NaN (or no) mean/std: they act on the activations as given.
    The fixtures' weights are Kissane's numbers, so on Kissane's input they must give his outputs."""
    state = fixture("fork_l1", "model.safetensors")
    nan = torch.full_like(state["activation_mean"], float("nan"))
    kissane_x, expected = fixture("kissane", "inputs.safetensors")["x"], fixture("kissane", "expected.safetensors")
    for no_normaliser in ({**state, "activation_mean": nan, "activation_std": nan},
                          {k: v for k, v in state.items() if not k.startswith(("activation_", "target_rms"))}):
        cc = from_dictionary_learning(no_normaliser)
        assert torch.equal(cc.scaling_factors, torch.ones(2))
        f, x_hat = raw_forward(cc, kissane_x)
        torch.testing.assert_close(f, expected["f"], **TOL)
        torch.testing.assert_close(x_hat, expected["x_hat"], **TOL)


def test_fork_training_pickle_and_compiled_prefix(tmp_path):
    state = fixture("fork_batchtopk", "model.safetensors")
    path = tmp_path / "model_final.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, path)  # the training loop's format, compiled
    assert detect_format(path) == "dictionary_learning"
    cc = load_dictionary_learning(path)
    f, x_hat = raw_forward(cc, fixture("fork_batchtopk", "inputs.safetensors")["x"])
    torch.testing.assert_close(x_hat, fixture("fork_batchtopk", "expected.safetensors")["x_hat"], **TOL)


def test_kissane_import_with_his_factors(tmp_path):
    inputs, expected = fixture("kissane", "inputs.safetensors"), fixture("kissane", "expected.safetensors")
    factors = inputs["normalisation_factor"]
    with pytest.raises(UserError, match="--scaling-factors"):
        convert(INTEROP / "kissane", tmp_path / "no_factors")
    assert not (tmp_path / "no_factors").exists()  # nothing half-written
    cc = imported(tmp_path, "kissane", scaling_factors=factors.tolist())
    torch.testing.assert_close(cc.normalise(inputs["x_raw"]), inputs["x"], **TOL)
    f, x_hat_raw = raw_forward(cc, inputs["x_raw"])
    assert torch.equal(f > 0, expected["f"] > 0)
    torch.testing.assert_close(f, expected["f"], **TOL)
    torch.testing.assert_close(cc.decode(f), expected["x_hat"], **TOL)  # his normalised space
    torch.testing.assert_close(x_hat_raw, expected["x_hat"] / factors[None, :, None], **TOL)
    torch.testing.assert_close(relative_decoder_norm(cc.W_dec), expected["relative_norm"], **TOL)
    # his losses on his input (squared L2 summed over models, L1 weighted by Σ_m ||d||): ours agree
    x = inputs["x"]
    with torch.no_grad():
        recon, f = cc(x)
        assert float(reconstruction_loss(x, recon)) == pytest.approx(float(expected["l2_loss"]), rel=1e-5)
        assert float(sparsity_penalty(f, decoder_norm_sum(cc.W_dec))) == pytest.approx(float(expected["l1_loss"]), rel=1e-5)
        assert float((f > 0).float().sum(-1).mean()) == float(expected["l0_loss"])


# --- export ------------------------------------------------------------------------------------------

def random_crosscoder(variant: str, factors=(5.6, 2.9)) -> CrossCoder:
    torch.manual_seed(0)
    cc = CrossCoder(CrossCoderConfig(d_model=16, n_latents=64, variant=variant, k=4))
    with torch.no_grad():
        cc.W_enc.normal_(std=0.3)
        cc.W_dec.normal_(std=0.3)
        cc.b_enc.normal_(std=0.2)
        cc.b_dec.normal_(std=0.1)
        cc.scaling_factors.copy_(torch.tensor(factors))
        cc.threshold.fill_(0.8)
    return cc.eval()


@pytest.mark.parametrize("name", FORKS)
def test_fork_export_writes_every_buffer_and_the_mixins_config(tmp_path, name):
    cc = imported(tmp_path, name)
    out = save_dictionary_learning(cc, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ours, theirs = load_file(str(out / "model.safetensors")), fixture(name, "model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {k: (v.shape, v.dtype) for k, v in theirs.items()}
    for key in ("encoder.weight", "decoder.weight", "k", "threshold", "code_normalization_id"):
        if key in theirs:
            assert torch.equal(ours[key], theirs[key]), key  # stored as the fork stored them
    # the fork's own derivation of the global scale from std and target_rms gives back ours
    scale = ours["target_rms"] / torch.sqrt((ours["activation_std"] ** 2).sum(-1) + 1e-8)
    torch.testing.assert_close(scale, ours["activation_global_scale"])
    assert torch.equal(ours["activation_mean"], torch.zeros(2, 16))
    config, reference = (json.loads((d / "config.json").read_text()) for d in (out, INTEROP / name))
    assert list(config) == list(reference)  # the same keys, sorted as the mixin writes them
    assert {k: type(v) for k, v in config.items()} == {k: type(v) for k, v in reference.items()}
    assert (out / "config.json").read_text() == json.dumps(config, sort_keys=True, indent=2)
    assert tuple(config) == (FORK_BATCHTOPK_CONFIG if name == "fork_batchtopk" else FORK_CROSSCODER_CONFIG)
    # and it reads back to the fork's outputs
    back = load_dictionary_learning(out)
    f, x_hat = raw_forward(back, fixture(name, "inputs.safetensors")["x"])
    torch.testing.assert_close(x_hat, fixture(name, "expected.safetensors")["x_hat"], **TOL)


@pytest.mark.parametrize("variant", ["l1", "batchtopk"])
def test_export_moves_no_relative_norm(tmp_path, variant):
    """Factors 5.6 / 2.9 (folding them into W_dec shifted r by up to 0.17 before): every exported
    decoder gives exactly reasondiff's relative norm r and Δ, computed the references' way."""
    cc = random_crosscoder(variant)
    r, delta = relative_decoder_norm(cc.W_dec), delta_norm(cc.W_dec)
    fork = to_dictionary_learning(cc)
    n = fork["decoder.weight"].norm(dim=2)  # [L, F], the fork's dec_norm_diff input
    torch.testing.assert_close(n[1] / n.sum(0), r, rtol=0, atol=1e-7)
    fork_delta = 0.5 * ((2 * n[1] - n.sum(0)) / torch.maximum(n[1], n.sum(0) - n[1]) + 1)  # fixture README formula
    torch.testing.assert_close(fork_delta, delta, rtol=0, atol=1e-7)
    assert torch.equal(fork["decoder.weight"].permute(1, 0, 2), cc.W_dec.detach())
    if variant == "l1":
        state, cfg = to_kissane(cc)
        n = state["W_dec"].norm(dim=-1)  # Kissane's analysis.py
        assert torch.equal(n[:, 1] / n.sum(-1), r)
        assert cfg["normalisation_factor"] == pytest.approx([5.6, 2.9])
    # unequal factors used to make a batchtopk export impossible; now it is lossless both ways
    back = from_dictionary_learning(fork)
    x = torch.randn(32, 2, 16) * 3
    f0, x0 = raw_forward(cc, x)
    f1, x1 = raw_forward(back, x)
    assert torch.equal(f0 > 0, f1 > 0)
    torch.testing.assert_close(x1, x0, **TOL)
    if variant == "batchtopk":
        assert float(back.threshold) == float(cc.threshold) and back.cfg.k == cc.cfg.k


def test_kissane_export_is_his_cfg_and_strict_state_dict(tmp_path):
    cc = random_crosscoder("l1")
    src = cc.save(tmp_path / "ours", extra={"hook": "blocks.2.hook_resid_pre", "train": {"lr": 1e-3, "l1_coeff": 4.0}})
    out = convert(src, tmp_path / "kissane", to="kissane")
    cfg = json.loads((out / "cfg.json").read_text())
    reference = json.loads((INTEROP / "kissane" / "cfg.json").read_text())
    assert list(cfg)[:len(reference)] == list(reference) == list(KISSANE_DEFAULT_CFG)
    assert (cfg["d_in"], cfg["dict_size"], cfg["lr"], cfg["l1_coeff"], cfg["hook_point"]) == \
        (16, 64, 1e-3, 4.0, "blocks.2.hook_resid_pre")
    state, theirs = load_file(str(out / "cc_weights.safetensors")), fixture("kissane", "cc_weights.safetensors")
    assert set(state) == set(theirs)  # his load_state_dict is strict: no scaling_factors, no threshold
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in theirs.items()}
    back = load_crosscoder(convert(out, tmp_path / "again"))  # factors read back from cfg.json
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors"):
        assert torch.equal(getattr(back, name), getattr(cc, name)), name
    with pytest.raises(UserError, match="ReLU"):
        to_kissane(random_crosscoder("batchtopk"))


def test_reasondiff_round_trips_are_exact(tmp_path):
    for variant in ("l1", "batchtopk"):
        cc = random_crosscoder(variant)
        fork = from_dictionary_learning(to_dictionary_learning(cc))
        assert fork.cfg.variant == variant
        names = ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors")
        if variant == "batchtopk":  # an L1 crosscoder has no k or inference threshold to carry
            assert fork.cfg.k == cc.cfg.k
            names += ("threshold",)
        for name in names:
            assert torch.equal(getattr(fork, name), getattr(cc, name)), (variant, name)
    cc = random_crosscoder("l1")
    state, cfg = to_kissane(cc)
    back = from_kissane(state, cfg)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors"):
        assert torch.equal(getattr(back, name), getattr(cc, name)), name


# --- bad input and the CLI ----------------------------------------------------------------------

def test_foreign_or_broken_inputs_are_one_line_errors(tmp_path):
    state = fixture("fork_batchtopk", "model.safetensors")
    with pytest.raises(UserError, match="code normalisation"):
        from_dictionary_learning({**state, "code_normalization_id": torch.tensor(5)})
    with pytest.raises(UserError, match="does not match"):
        from_dictionary_learning({**state, "decoder.weight": state["decoder.weight"][:, :10]})
    with pytest.raises(UserError, match="activation_global_scale"):
        from_dictionary_learning({k: v for k, v in state.items() if k != "activation_global_scale"})
    with pytest.raises(UserError, match="drop --scaling-factors"):
        from_dictionary_learning(state, scaling_factors=[1.0, 1.0])
    with pytest.raises(UserError, match="positive"):
        from_kissane(fixture("kissane", "cc_weights.safetensors"), scaling_factors=[1.0, -2.0])
    save_file({"W_enc": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(UserError, match="not a crosscoder"):
        detect_format(tmp_path / "odd.safetensors")
    with pytest.raises(UserError, match="no crosscoder here"):
        detect_format(tmp_path)


def test_cli(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "reasondiff.convert", *map(str, args)], capture_output=True,
                              text=True, env=app_env(), timeout=120)

    done = run(INTEROP / "fork_batchtopk", tmp_path / "rd")
    assert done.returncode == 0, done.stderr
    assert detect_format(tmp_path / "rd") == "reasondiff"
    done = run(tmp_path / "rd", tmp_path / "fork", "--to", "dictionary_learning")
    assert done.returncode == 0 and detect_format(tmp_path / "fork") == "dictionary_learning"
    refused = run(tmp_path / "rd", tmp_path / "fork", "--to", "dictionary_learning")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    refused = run(INTEROP / "kissane", tmp_path / "k")
    assert refused.returncode == 2 and "--scaling-factors" in refused.stderr and not (tmp_path / "k").exists()
    done = run(INTEROP / "kissane", tmp_path / "k", "--scaling-factors", "0.57734591,0.22914210")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "k" / "config.json").read_text())["converted_from"]["format"] == "kissane"


def test_analyze_points_a_foreign_crosscoder_at_convert(tmp_path):
    from reasondiff.analyze.run import check_crosscoder_format

    with pytest.raises(UserError, match="holds a dictionary_learning crosscoder: convert it first"):
        check_crosscoder_format(INTEROP / "fork_batchtopk")
    check_crosscoder_format(convert(INTEROP / "fork_batchtopk", tmp_path / "ok"))  # converted: fine


def test_designated_shared_latents_survive_both_exports(tmp_path):
    """The designated latents' record travels in each export and comes back only while the rows are tied."""
    from reasondiff.crosscoder.convert import load_kissane, save_kissane

    torch.manual_seed(0)
    cc = CrossCoder(CrossCoderConfig(d_model=16, n_latents=64, n_shared_latents=6, shared_penalty_ratio=0.2)).eval()
    for save, load in ((save_dictionary_learning, load_dictionary_learning), (save_kissane, load_kissane)):
        back = load(save(cc, tmp_path / save.__name__))
        assert back.cfg.n_shared_latents == 6 and back.cfg.shared_penalty_ratio == pytest.approx(0.2), save.__name__
        assert torch.equal(back.designated_shared, cc.designated_shared)
        assert torch.equal(back.W_dec, cc.W_dec)
    # untied rows (trained further by another tool) come back as ordinary latents
    with torch.no_grad():
        cc.W_dec[0, 1] += 1.0
    untied = load_dictionary_learning(save_dictionary_learning(cc, tmp_path / "untied"))
    assert untied.cfg.n_shared_latents == 0
    # a plain crosscoder's export carries no record at all: the references' files, byte for byte
    plain = CrossCoder(CrossCoderConfig(d_model=16, n_latents=64)).eval()
    path = save_dictionary_learning(plain, tmp_path / "plain") / "model.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        assert not handle.metadata() or "designated_shared_latents" not in handle.metadata()


def test_fork_export_keeps_the_hook_and_a_readable_mode(tmp_path):
    """Issue 33.6: `--to dictionary_learning` kept no `hook` and wrote the weights with mode 0600."""
    from reasondiff.core.artifacts import _file_mode

    cc = CrossCoder(CrossCoderConfig(d_model=16, n_latents=64)).eval()
    cc.save(tmp_path / "rd", extra={"hook": "blocks.2.hook_resid_pre"})
    out = convert(tmp_path / "rd", tmp_path / "fork", to="dictionary_learning")
    assert json.loads((out / "config.json").read_text())["hook"] == "blocks.2.hook_resid_pre"
    for name in ("model.safetensors", "config.json"):
        assert (out / name).stat().st_mode & 0o777 == _file_mode(), name
    back = convert(out, tmp_path / "back")  # and the hook comes home again
    assert json.loads((back / "config.json").read_text())["hook"] == "blocks.2.hook_resid_pre"


def test_cli_names_a_damaged_crosscoder_in_one_line(tmp_path):
    """Issue 32.2: a truncated crosscoder gave a SafetensorError traceback; nothing is written."""
    CrossCoder(CrossCoderConfig(d_model=16, n_latents=64)).save(tmp_path / "rd")
    weights = tmp_path / "rd" / "crosscoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    done = subprocess.run([sys.executable, "-m", "reasondiff.convert", str(tmp_path / "rd"), str(tmp_path / "out"),
                           "--to", "dictionary_learning"], capture_output=True, text=True, env=app_env(), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "crosscoder.safetensors does not match the sha256" in done.stderr
    assert not (tmp_path / "out").exists()
