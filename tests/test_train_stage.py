"""The train stage end to end on small synthetic data: resume == uninterrupted, NaN guard, outputs."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import make_config
from safetensors.torch import load_file

from reasondiff import harvest
from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.crosscoder.model import load_crosscoder
from reasondiff.train.run import CHECKPOINT_FILE, SUMMARY_FILE
from reasondiff.train.synthetic import SyntheticSource

SMALL = ("train.data=synthetic", "model.build_tiny=false", "hardware.device=cpu",
         "train.synthetic.d_model=16", "train.synthetic.n_shared=6", "train.synthetic.n_base_only=3",
         "train.synthetic.n_tuned_only=3", "train.synthetic.n_rotated=3", "train.synthetic.firing_probability=0.1",
         "train.n_latents=48", "train.batch_size=64", "train.n_tokens=1920", "train.lr=1e-3",
         "train.log_every=5", "train.checkpoint_every=8", "train.eval_tokens=256", "train.dead_tokens=640")


def small_config(tmp_path, *overrides):
    return make_config("+exp=tiny", f"output_root={tmp_path}", *SMALL, *overrides)


def _weights(directory):
    return load_file(str(directory / "crosscoder.safetensors"))


def _interrupting_source(monkeypatch, at_batch: int, action):
    """Make the synthetic source call `action()` once, when batch `at_batch` of the training stream is due."""
    original = SyntheticSource.iter_batches
    armed = {"on": True}

    def iter_batches(self, batch_size, *, seed, start_batch=0):
        for b, x in enumerate(original(self, batch_size, seed=seed, start_batch=start_batch), start=start_batch):
            if b == at_batch and armed["on"] and seed == 0:
                armed["on"] = False
                x = action(x)
            yield x

    monkeypatch.setattr(SyntheticSource, "iter_batches", iter_batches)


def _raise_interrupt(x):
    raise KeyboardInterrupt("simulated Ctrl-C")


def _send_sigterm(x):
    os.kill(os.getpid(), signal.SIGTERM)
    return x


@pytest.mark.parametrize("variant", ["l1", "batchtopk"])
def test_stage_writes_crosscoder_summary_and_metrics(tmp_path, variant):
    cfg = small_config(tmp_path, f"train.variant={variant}", "train.k=4", "train.threshold_start_step=5")
    out = run_stage(cfg)
    assert out == tmp_path / "tiny" / "train@synthetic" and artifacts.is_complete(out)
    cc = load_crosscoder(out)
    assert cc.cfg.n_latents == 48 and cc.cfg.d_model == 16 and cc.cfg.variant == variant
    torch.testing.assert_close(cc.scaling_factors, SyntheticSource(cfg.train.synthetic, seed=0).scaling_factors)
    summary = artifacts.read_json(out / SUMMARY_FILE)
    assert 0 < summary["fvu"] < 1 and summary["l0"] > 0 and summary["steps"] == 30
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("l2", "l1", "l0", "explained_variance_base", "explained_variance_tuned", "frac_dead", "lr",
                   "l1_coeff"):
        assert column in header
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 6  # every 5 of 30 steps
    assert not (out / CHECKPOINT_FILE).exists()  # removed after a finished run (keep_checkpoint=false)
    assert (out / "ground_truth.safetensors").is_file()
    if variant == "batchtopk":
        assert cc.threshold.item() > 0  # tracked during training, used at inference


@pytest.mark.parametrize("how", ["exception", "sigterm"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, how):
    straight = run_stage(small_config(tmp_path / "a"))
    cfg = small_config(tmp_path / "b")
    _interrupting_source(monkeypatch, 13, _raise_interrupt if how == "exception" else _send_sigterm)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    out = cfg.stage_dir("train")
    state = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    # Ctrl-C before batch 13 -> saved at step 13; SIGTERM during it -> the step finishes first
    assert state["step"] == (13 if how == "exception" else 14)
    assert state["data_position"]["start_batch"] == state["step"]
    assert not artifacts.is_complete(out)
    resumed = run_stage(cfg)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert artifacts.read_json(straight / SUMMARY_FILE)["fvu"] == artifacts.read_json(resumed / SUMMARY_FILE)["fvu"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, monkeypatch):
    cfg = small_config(tmp_path)
    _interrupting_source(monkeypatch, 5, _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    with pytest.raises(UserError, match=r"partial run made with other settings \(train.l1_coeff=2.0; you asked 3.0\)"):
        run_stage(small_config(tmp_path, "train.l1_coeff=3.0"))
    assert (cfg.stage_dir("train") / CHECKPOINT_FILE).is_file()  # refused: nothing lost


def test_nan_loss_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    cfg = small_config(tmp_path)
    _interrupting_source(monkeypatch, 11, lambda x: torch.full_like(x, float("nan")))
    with pytest.raises(UserError, match=r"nan at step 11.*intact"):
        run_stage(cfg)
    out = cfg.stage_dir("train")
    state = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    assert state["step"] == 8
    assert all(torch.isfinite(t).all() for t in state["crosscoder"].values())
    assert not (out / "crosscoder.safetensors").exists() and not artifacts.is_complete(out)


class _FakeStore:
    """A stand-in with harvest's ActivationStore interface (raw [B, 2, d] batches, deterministic)."""

    def __init__(self, directory):
        gen = torch.Generator().manual_seed(1)
        self.data = torch.randn(512, 2, 8, generator=gen) * torch.tensor([1.0, 5.0])[None, :, None]
        self.d_model, self.n_tokens = 8, 512
        self.scaling_factors = torch.tensor([8**0.5 / 2.8, 8**0.5 / 14.0])

    @classmethod
    def open(cls, directory):
        return cls(directory)

    def iter_batches(self, batch_size, *, seed, start_batch=0):
        per_epoch = self.n_tokens // batch_size
        b = start_batch
        while True:
            i = b % per_epoch
            yield self.data[i * batch_size:(i + 1) * batch_size]
            b += 1


def test_store_data_reads_harvest_dir_and_its_scaling_factors(tmp_path, monkeypatch):
    monkeypatch.setattr(harvest, "ActivationStore", _FakeStore, raising=False)
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "hardware.device=cpu",
                      "train.data=store", "train.batch_size=64", "train.n_tokens=640", "train.n_latents=null",
                      "train.expansion_factor=4", "train.eval_tokens=128")
    with pytest.raises(UserError, match="run the harvest stage first"):
        run_stage(cfg)
    artifacts.mark_complete(cfg.stage_dir("harvest"))
    out = run_stage(cfg)
    cc = load_crosscoder(out)
    assert cc.cfg.d_model == 8 and cc.cfg.n_latents == 32  # expansion_factor x d_model read from the data
    torch.testing.assert_close(cc.scaling_factors, _FakeStore(None).scaling_factors)
    manifest = artifacts.read_json(out / artifacts.MANIFEST)
    assert manifest["inputs"]["activations"] == str(cfg.stage_dir("harvest"))
    assert out == tmp_path / "tiny" / "train"


def test_live_data_uses_the_live_source(tmp_path, monkeypatch, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    built = []

    class _Live(_FakeStore):
        def __init__(self, cfg):
            built.append(cfg.harvest.hook)
            super().__init__(None)

    monkeypatch.setattr(harvest, "LiveActivationSource", _Live, raising=False)
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "hardware.device=cpu",
                      f"model.path={tiny_model_dir}", f"tuned_model={tiny_tuned_model_dir}",
                      f"harvest.corpus={tiny_world}/corpus.jsonl", "harvest.reasoning_fraction=0",
                      "train.data=live", "train.batch_size=64", "train.n_tokens=640", "train.n_latents=16",
                      "train.eval_tokens=128")
    out = run_stage(cfg)
    assert built and built[0] == cfg.harvest.hook and load_crosscoder(out).cfg.d_model == 8


NEW_TRAIN_KEYS = ("shared_latents", "shared_penalty_ratio", "reconstruction_loss", "aux_k_style", "b_dec_init",
                  "lr_warmup_steps", "same_init_across_models", "synthetic.n_near_duplicate",
                  "synthetic.near_duplicate_cosine_min", "synthetic.near_duplicate_cosine_max")


def test_a_checkpoint_from_before_the_config_grew_still_resumes_exactly(tmp_path, monkeypatch):
    """Written before W_enc was stored latent-major and before the new train keys: the checkpoint's
    W_enc [n_models, d, F] and its Adam moments are permuted on load, and the stage fingerprint
    reads the keys it lacks as their defaults."""
    straight = run_stage(small_config(tmp_path / "a", "train.variant=batchtopk", "train.k=4"))
    cfg = small_config(tmp_path / "b", "train.variant=batchtopk", "train.k=4")
    _interrupting_source(monkeypatch, 13, _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    stage_dir = cfg.stage_dir("train")
    path = stage_dir / CHECKPOINT_FILE
    state = torch.load(path, weights_only=False)
    state["crosscoder"]["W_enc"] = state["crosscoder"].pop("W_enc_by_latent").permute(1, 2, 0).contiguous()
    adam = state["optimizer"]["state"][0]
    for name in ("exp_avg", "exp_avg_sq"):
        adam[name] = adam[name].permute(1, 2, 0).contiguous()
    torch.save(state, path)
    record = json.loads((stage_dir / "fingerprint.json").read_text())
    for key in NEW_TRAIN_KEYS:
        del record["settings"][f"train.{key}"]
    (stage_dir / "fingerprint.json").write_text(json.dumps(record))
    resumed = run_stage(cfg)
    a, b = _weights(straight), _weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_finished_train_with_a_damaged_crosscoder_is_trained_again_not_skipped(tmp_path, caplog):
    """Issue 32.2: train's manifest records the crosscoder's sha256 (as harvest's store does its
    shards'); a re-run finds the damage and trains again instead of calling itself complete."""
    cfg = small_config(tmp_path)
    out = run_stage(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    weights = out / "crosscoder.safetensors"
    assert manifest["outputs"]["crosscoder_sha256"] == artifacts.sha256_file(weights)
    weights.write_bytes(weights.read_bytes()[:-64] + bytes(64))  # the last floats zeroed
    with pytest.raises(UserError, match="does not match the sha256"):
        load_crosscoder(out)
    run_stage(cfg)  # the same command: not "already complete"
    assert any("reopening it to repair it" in r.getMessage() for r in caplog.records)
    assert any("training again" in r.getMessage() for r in caplog.records)
    load_crosscoder(out)  # intact again
    assert json.loads((out / "manifest.json").read_text())["outputs"]["crosscoder_sha256"] == \
        artifacts.sha256_file(weights)
