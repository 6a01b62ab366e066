"""The analyze stage end to end on the tiny models: every artifact appears, the tables agree with
each other, and a killed run resumes to the same numbers."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import make_config, model_leaning_crosscoder

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts

N_LATENTS = 256


@pytest.fixture(scope="module")
def crosscoder_dir(tmp_path_factory) -> Path:
    """A crosscoder in the train stage's format with latents of every class (0-39 tuned-only, 40-79 base-only)
    and factors != 1."""
    out = model_leaning_crosscoder(tmp_path_factory.mktemp("crosscoder"), N_LATENTS, shrink=0.01)
    (out / "metrics.csv").write_text("step,loss,l2,l1,l0,frac_dead,explained_variance_base,explained_variance_tuned\n"
                                     "50,9.0,6.0,1.5,80.0,0.0,0.80,0.70\n100,5.0,3.0,1.0,40.0,0.1,0.90,0.85\n")
    return out


CONTEXT = 96
"""Tokens per context: long enough that four of the tiny world's SFT conversations (the bench's
prompt plus a worked solution) fit whole, so the reasoning pass runs in two batches."""


def analyze_overrides(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *extra) -> list[str]:
    return [
        f"output_root={tmp_path}", "exp_name=t", "hardware=cpu", f"model.path={tiny_model_dir}", "model.build_tiny=false",
        f"tuned_model={tiny_tuned_model_dir}", f"analyze.crosscoder_dir={crosscoder_dir}",
        f"analyze.heldout_corpus={tiny_world / 'corpus.jsonl'}", f"finetune.dataset={tiny_world / 's1k.jsonl'}",
        "finetune.holdout.fraction=0.5",
        "analyze.n_heldout_contexts=6", "analyze.n_reasoning_contexts=4", f"analyze.context_length={CONTEXT}",
        "analyze.n_top_latents=3", "analyze.n_shared_sample=2", "analyze.n_contexts_per_latent=2",
        "harvest.hook=blocks.2.hook_resid_pre", "hardware.analyze_batch_size=2", *extra]


def analyze_config(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *extra):
    return make_config(*analyze_overrides(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world,
                                          *extra), config_name="analyze")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_analyze_stage_writes_every_artifact(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    cfg = analyze_config(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    out = run_stage(cfg)
    assert artifacts.is_complete(out)
    for name in ("ce_recovery.csv", "ce_recovery.md", "reconstruction.csv", "latents.csv", "class_counts.csv", "class_frequency.csv",
                 "latent_scaling_summary.csv", "relative_norm_hist.png", "cosine_hist.png", "latent_scaling.png",
                 "decoder_norms.png", "frequency_hist.png", "training_curves.png", "scaling_factors.csv", "latents.html",
                 "latent_logits.csv", "report.md", "report_appendix.md", "report.html",
                 "manifest.json"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):  # every figure also as a vector PDF
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF"), png.name
    assert not list(out.glob("partial_*.pt"))

    ce = read_rows(out / "ce_recovery.csv")
    assert [(r["text"], r["convention"], r["model"]) for r in ce] == [
        (t, c, m) for t in ("general", "reasoning") for c in ("paper", "sink_preserving") for m in ("base", "tuned")]
    by = {(r["text"], r["convention"], r["model"]): r for r in ce}
    # the reasoning text is the fine-tune's held-out rows by default, and every table says so
    assert {r["text_source"] for r in ce if r["text"] == "reasoning"} == {"held-out rows"}
    assert {r["text_source"] for r in read_rows(out / "reconstruction.csv")} == {"held-out general", "held-out rows"}
    assert {r["reasoning_text_source"] for r in read_rows(out / "class_frequency.csv")} == {"held-out rows"}
    texts = artifacts.read_json(out / artifacts.MANIFEST)["inputs"]["texts"]
    assert texts["reasoning"]["label"] == "held-out rows" and texts["reasoning"]["tokens"] > 0
    for m in ("base", "tuned"):
        assert int(by[("general", "paper", m)]["n_tokens"]) == 6 * (CONTEXT - 1)  # every prediction
        assert int(by[("general", "sink_preserving", m)]["n_tokens"]) == 6 * (CONTEXT - 2)  # sink position out too
        reasoning = [by[("reasoning", c, m)] for c in ("paper", "sink_preserving")]
        n_conversations = int(reasoning[0]["n_contexts"])
        assert 1 <= n_conversations <= 4 and int(reasoning[0]["n_tokens"]) - int(reasoning[1]["n_tokens"]) == n_conversations
    for row in ce:
        assert all(math.isfinite(float(row[k])) for k in ("ce_clean", "ce_zero_ablation", "ce_spliced", "delta_ce"))
        assert float(row["kl_spliced"]) >= 0 and float(row["kl_zero_ablation"]) >= 0
        assert float(row["delta_ce"]) == pytest.approx(float(row["ce_spliced"]) - float(row["ce_clean"]))
        assert float(row["ce_clean_ci_low"]) <= float(row["ce_clean"]) <= float(row["ce_clean_ci_high"])

    latents = read_rows(out / "latents.csv")
    assert len(latents) == N_LATENTS
    classes = [row["class"] for row in latents]
    assert set(classes[:40]) <= {"tuned_only", "dead"} and "tuned_only" in classes[:40]
    assert set(classes[40:80]) <= {"base_only", "dead"} and "base_only" in classes[40:80]
    for row in latents:  # Minder et al.'s Δ beside r: its own function of the two norms
        n_base, n_tuned = float(row["decoder_norm_base"]), float(row["decoder_norm_tuned"])
        assert float(row["delta_norm"]) == pytest.approx(0.5 * ((n_tuned - n_base) / max(n_base, n_tuned) + 1), abs=1e-6)
    fit = read_rows(out / "reconstruction.csv")
    assert [(row["text"], row["model"]) for row in fit] == [(t, m) for t in ("general", "reasoning")
                                                            for m in ("base", "tuned", "both")]
    assert all(float(row["explained_variance"]) <= 1 for row in fit)
    assert all(int(row["n_tokens"]) == 6 * (CONTEXT - 1) for row in fit if row["text"] == "general")
    # L0 on held-out text is the sum of every latent's firing frequency there
    assert float(fit[0]["l0"]) == pytest.approx(sum(float(row["freq_general"]) for row in latents), rel=1e-6)
    counts = read_rows(out / "class_counts.csv")
    assert sum(int(r["n_latents"]) for r in counts) == N_LATENTS == sum(int(r["n_latents_delta"]) for r in counts)
    by_class = {r["class"]: r for r in counts}
    assert int(by_class["tuned_only"]["n_latents"]) == classes.count("tuned_only")
    assert int(by_class["shared"]["n_latents_delta"]) == [row["class_delta"] for row in latents].count("shared")
    factors = read_rows(out / "scaling_factors.csv")
    assert [(r["model"], float(r["scaling_factor"]), float(r["relative_to_base"])) for r in factors] == \
        [("base", 2.0, 1.0), ("tuned", 0.5, 0.25)]
    for row in latents:
        assert (float(row["freq_general"]) == 0 and float(row["freq_reasoning"]) == 0) == (row["class"] == "dead")
        has_beta = row["beta_error_tuned"] != ""
        if has_beta:  # Latent Scaling ran for the model-specific latents that fired
            assert row["class"] in ("base_only", "tuned_only")
    assert any(row["nu_error"] != "" for row in latents if row["class"] == "tuned_only")

    page = (out / "latents.html").read_text()
    assert "most tuned-leaning latents" in page and "reasoning text" in page and 'class="tok peak"' in page
    logit_rows = read_rows(out / "latent_logits.csv")
    shown = {int(m) for m in re.findall(r'<section class="card" id="latent-(\d+)"', page)}
    assert shown and {int(r["latent"]) for r in logit_rows} == shown  # every card has its logit effects
    for latent in shown:
        for model in ("base", "tuned"):
            for direction in ("promoted", "suppressed"):
                ranked = [r for r in logit_rows if int(r["latent"]) == latent and r["model"] == model
                          and r["direction"] == direction]
                assert [int(r["rank"]) for r in ranked] == list(range(1, 11))  # analyze.n_logit_tokens
                values = [float(r["logit_effect"]) for r in ranked]
                assert values == sorted(values, reverse=direction == "promoted")
    assert page.count('<table class="logit') == 2 * len(shown)
    report = (out / "report.md").read_text()
    assert "CE-loss recovery (Table 2)" in report and "| general | held-out general | paper | base |" in report
    assert "| reasoning | held-out rows | paper | base |" in report
    assert "| reasoning | held-out rows | sink_preserving | tuned |" in report and "| explained variance |" in report
    assert "Ratio tuned / base = **0.25**" in report and "| latents (by Δ) |" in report
    for figure in ("relative_norm_hist.png", "decoder_norms.png", "frequency_hist.png", "training_curves.png"):
        assert f"]({figure})" in report
    assert "latents.html" in report and "## Summary" in report
    assert "## Configurations" not in report and "analyze config" in (out / "report_appendix.md").read_text()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # missing stages are named, not fatal, with the overrides the run was made with (no exp file named t)
    assert f"python -m reasondiff.bench +exp=<experiment> exp_name=t tuned_model={tiny_tuned_model_dir}" in report
    assert "No fine-tune in this experiment: the tuned model was given" in report  # tuned_model is given here
    manifest = artifacts.read_json(out / "manifest.json")
    assert manifest["inputs"]["crosscoder_dir"] == str(crosscoder_dir)
    assert manifest["inputs"]["exclude_first_position"] is True
    assert len(manifest["outputs"]["ce_recovery"]) == 8


def test_killed_analyze_resumes_to_the_same_numbers(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir,
                                                   tiny_world, monkeypatch):
    import reasondiff.analyze.run as analysis

    reference = run_stage(analyze_config(tmp_path / "ref", crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world))
    cfg = analyze_config(tmp_path / "run", crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world,
                         "analyze.checkpoint_every=1")
    real_batch, calls = analysis.ce_recovery_batch, []

    def dies_in_the_reasoning_pass(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 + 2:  # three general batches, then the second reasoning one
            raise KeyboardInterrupt("killed")
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(analysis, "ce_recovery_batch", dies_in_the_reasoning_pass)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    out = cfg.stage_dir("analyze")
    assert not artifacts.is_complete(out)
    assert torch.load(out / "partial_general.pt", weights_only=True)["finished"]
    assert torch.load(out / "partial_reasoning.pt", weights_only=True)["batches_done"] == 1
    calls.clear()
    run_stage(cfg)
    assert len(calls) == 1  # only the second and last reasoning batch was recomputed
    assert read_rows(out / "ce_recovery.csv") == read_rows(reference / "ce_recovery.csv")
    assert read_rows(out / "latents.csv") == read_rows(reference / "latents.csv")
    assert read_rows(out / "reconstruction.csv") == read_rows(reference / "reconstruction.csv")


@pytest.mark.parametrize("how", ["truncated", "random bytes", "zeroed"])
def test_a_damaged_crosscoder_is_one_line_and_leaves_no_run(tmp_path, crosscoder_dir, tiny_model_dir,
                                                            tiny_tuned_model_dir, tiny_world, how):
    """Issue 32.2: a traceback (truncated), a FloatingPointError and a partial sibling run (random bytes),
    or a silent run on other numbers (zeroed). Now one line before any work, and no run left behind."""
    import json
    import shutil

    from test_crosscoder import _damage

    from reasondiff.core.errors import UserError

    damaged = tmp_path / "cc"
    shutil.copytree(crosscoder_dir, damaged)
    _damage(damaged / "crosscoder.safetensors", how)
    cfg = analyze_config(tmp_path, damaged, tiny_model_dir, tiny_tuned_model_dir, tiny_world, "run=sibling")
    with pytest.raises(UserError, match=r"cc/crosscoder\.safetensors does not match the sha256") as err:
        run_stage(cfg, func=None)
    assert "\n" not in str(err.value)
    assert not cfg.stage_dir("analyze").exists()
    runs = tmp_path / "t" / "runs.json"
    assert not runs.is_file() or cfg.stage_dir("analyze").name not in json.loads(runs.read_text())
