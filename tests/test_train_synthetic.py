"""The synthetic source (planted features) and the recovery check of a crosscoder trained on it."""

from __future__ import annotations

import pytest
import torch
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.config.train import SyntheticConfig
from reasondiff.core import artifacts
from reasondiff.train.synthetic import SyntheticSource, load_ground_truth, plant_features, recovery_report

CFG = SyntheticConfig(d_model=24, n_shared=10, n_base_only=5, n_tuned_only=5, n_rotated=5,
                      firing_probability=0.08, n_tokens=20_000)


def test_planted_features_have_the_right_kinds():
    features, kinds = plant_features(CFG, seed=0)
    assert features.shape == (25, 2, 24)
    norms = features.norm(dim=-1)
    for j, kind in enumerate(kinds):
        base, tuned = features[j, 0], features[j, 1] / CFG.tuned_scale
        if kind == "base_only":
            assert norms[j, 1] == 0 and norms[j, 0] == pytest.approx(1.0)
        elif kind == "tuned_only":
            assert norms[j, 0] == 0 and norms[j, 1] == pytest.approx(CFG.tuned_scale)
        elif kind == "shared":
            torch.testing.assert_close(base, tuned)
        else:
            assert torch.dot(base, tuned).item() == pytest.approx(CFG.rotated_cosine, abs=1e-5)
            assert tuned.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert kinds.count("rotated") == 5 and kinds.count("shared") == 10


def test_stream_is_deterministic_resumable_and_normalisable():
    source = SyntheticSource(CFG, seed=3)
    stream = source.iter_batches(128, seed=7)
    first = [next(stream) for _ in range(5)]
    assert first[0].shape == (128, 2, 24) and first[0].dtype == torch.float32
    assert torch.equal(next(source.iter_batches(128, seed=7, start_batch=3)), first[3])
    assert not torch.equal(next(source.iter_batches(128, seed=8)), first[0])
    assert torch.equal(next(SyntheticSource(CFG, seed=3).iter_batches(128, seed=7)), first[0])
    # 20_000 tokens of 128 -> 156 batches per epoch, then the data repeats
    assert torch.equal(next(source.iter_batches(128, seed=7, start_batch=156 + 2)), first[2])
    # the tuned model is tuned_scale larger; the factors bring both to mean norm sqrt(d_model)
    x = torch.cat(first)
    assert x[:, 1].norm(dim=-1).mean() / x[:, 0].norm(dim=-1).mean() == pytest.approx(CFG.tuned_scale, rel=0.1)
    normed = (x * source.scaling_factors[None, :, None]).norm(dim=-1).mean(0)
    torch.testing.assert_close(normed, torch.full((2,), 24**0.5), rtol=0.05, atol=0)


def test_ground_truth_round_trip(tmp_path):
    source = SyntheticSource(CFG, seed=0)
    source.write_ground_truth(tmp_path)
    features, kinds = load_ground_truth(tmp_path)
    assert torch.equal(features, source.features) and kinds == source.kinds


def test_recovery_report_scores_a_perfect_and_a_broken_decoder():
    source = SyntheticSource(CFG, seed=0)
    s = source.scaling_factors
    planted = source.features * s[None, :, None]  # the ideal decoder lives in the normalised space
    perfect = recovery_report(planted, s, source.features, source.kinds)
    assert perfect["mean_max_cosine"] == pytest.approx(1.0, abs=1e-5) and perfect["classified_right"] == 1.0
    assert perfect["per_kind"]["rotated"]["mean_decoder_cosine"] == pytest.approx(CFG.rotated_cosine, abs=1e-4)
    # a decoder that puts the tuned-only features into both models: right directions, wrong classes
    broken = planted.clone()
    tuned_only = [j for j, k in enumerate(source.kinds) if k == "tuned_only"]
    broken[tuned_only, 0] = broken[tuned_only, 1]
    report = recovery_report(broken, s, source.features, source.kinds)
    assert report["per_kind"]["tuned_only"]["classified_right"] == 0.0
    assert report["per_kind"]["shared"]["classified_right"] == 1.0
    # folding the (different) scaling factors into the decoder moves every relative norm:
    # shared features read 1/3 : 2/3 (the tuned model is 2x larger) instead of 1/2
    assert perfect["per_kind"]["shared"]["mean_relative_norm"] == pytest.approx(0.5, abs=0.01)
    folded = recovery_report(planted / s[None, :, None], s, source.features, source.kinds)
    assert folded["per_kind"]["shared"]["mean_relative_norm"] == pytest.approx(2 / 3, abs=1e-4)


def test_crosscoder_recovers_planted_features(tmp_path):
    """The issue's acceptance check: mean max cosine >= 0.9 and every kind classified right."""
    cfg = make_config(
        "+exp=tiny", f"output_root={tmp_path}", "train.data=synthetic", "model.build_tiny=false",
        "hardware.device=cpu", "train.synthetic.d_model=24", "train.synthetic.n_shared=10",
        "train.synthetic.n_base_only=5", "train.synthetic.n_tuned_only=5", "train.synthetic.n_rotated=5",
        "train.synthetic.firing_probability=0.08", "train.n_latents=96", "train.batch_size=256",
        "train.n_tokens=102400", "train.lr=3e-3", "train.l1_coeff=2.0", "train.log_every=100",
        "train.eval_tokens=1024", "train.dead_tokens=20000")
    out = run_stage(cfg)
    report = artifacts.read_json(out / "synthetic_report.json")
    assert report["mean_max_cosine"] >= 0.9, report
    for kind, row in report["per_kind"].items():
        assert row["classified_right"] == 1.0, (kind, row)
    assert report["per_kind"]["shared"]["mean_decoder_cosine"] > 0.95
    # the tuned model is 2x larger in raw space: only correctly applied scaling factors give r ~ 1/2
    assert report["per_kind"]["shared"]["mean_relative_norm"] == pytest.approx(0.5, abs=0.05)
    assert report["per_kind"]["rotated"]["mean_decoder_cosine"] < 0.7
