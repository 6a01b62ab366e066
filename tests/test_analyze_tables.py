"""Decoder geometry classes on hand-built decoders, latent statistics, top contexts, latents.html
and report.md — the pure parts of the analyze stage."""

from __future__ import annotations

import math
import re

import pytest
import torch

from reasondiff.analyze.contexts import (
    Example,
    LatentCard,
    LatentStats,
    TopContexts,
    window_example,
)
from reasondiff.analyze.latent_page import render_latents_html
from reasondiff.analyze.report import build_appendix, build_report, markdown_table, write_csv
from reasondiff.analyze.run import (
    class_count_rows,
    class_frequency_rows,
    extreme_latents,
    latent_rows,
)
from reasondiff.crosscoder.geometry import (
    BASE,
    TUNED,
    classify_latents,
    classify_latents_delta,
    decoder_cosine,
    decoder_norms,
    delta_norm,
    relative_decoder_norm,
)
from reasondiff.crosscoder.model import fold_scaling_factors


def hand_built_decoder() -> torch.Tensor:
    """Six latents with known relative norms r = ||d_tuned|| / (||d_base|| + ||d_tuned||)."""
    d = 8
    e = torch.eye(d)
    W = torch.zeros(6, 2, d)
    W[0, BASE] = 2 * e[0]                                 # r = 0     base-only
    W[1, TUNED] = 0.5 * e[1]                              # r = 1     tuned-only
    W[2, BASE], W[2, TUNED] = e[2], e[2]                  # r = 0.5   shared, cosine 1
    W[3, BASE], W[3, TUNED] = 3 * e[3], e[4]              # r = 0.25  other, cosine 0
    W[4, BASE], W[4, TUNED] = e[5], -0.6 * e[5] + 0.8 * e[6]  # r = 0.5 shared, cosine -0.6
    # latent 5: zero decoder -> dead
    return W


def test_relative_norm_cosine_and_classes_on_hand_built_decoder():
    W = hand_built_decoder()
    r = relative_decoder_norm(W)
    assert r[:5].tolist() == pytest.approx([0.0, 1.0, 0.5, 0.25, 0.5])
    assert math.isnan(r[5])
    cos = decoder_cosine(W)
    assert cos[2].item() == pytest.approx(1.0)
    assert cos[3].item() == pytest.approx(0.0)
    assert cos[4].item() == pytest.approx(-0.6)
    assert classify_latents(r) == ["base_only", "tuned_only", "shared", "other", "shared", "dead"]
    alive = torch.tensor([True, True, False, True, True, True])
    assert classify_latents(r, alive=alive)[2] == "dead"
    # The thresholds are configurable: widen "shared" to swallow latent 3.
    assert classify_latents(r, shared_min=0.2)[3] == "shared"


def test_delta_is_minders_function_of_the_norms_not_one_minus_r():
    """Δ = ½((‖d_t‖ − ‖d_b‖)/max + 1) with Minder et al.'s strict bins: for ρ = ‖d_t‖/‖d_b‖ = 6, r = 6/7
    is 'other' but Δ = 11/12 is tuned-only; for ρ = 2, r = 2/3 is shared but Δ = 3/4 is 'other'."""
    e = torch.eye(4)
    ratios = [0.0, 1.0, 6.0, 2.0, 1 / 6, 1.1, float("inf")]
    W = torch.zeros(len(ratios), 2, 4)
    for i, rho in enumerate(ratios):
        W[i, BASE], W[i, TUNED] = (0.0, 1.0) if rho == float("inf") else (1.0, rho) if rho <= 1 else (1.0 / rho, 1.0)
        W[i, BASE], W[i, TUNED] = W[i, BASE, 0] * e[0], W[i, TUNED, 0] * e[1]
    delta, r = delta_norm(W), relative_decoder_norm(W)
    expected = [0.0, 0.5, 11 / 12, 0.75, 1 / 12, 1 - 1 / 2.2, 1.0]
    assert delta.tolist() == pytest.approx(expected)
    assert r.tolist() == pytest.approx([0.0, 0.5, 6 / 7, 2 / 3, 1 / 7, 1.1 / 2.1, 1.0])
    assert not torch.allclose(delta, 1 - r) and not torch.allclose(delta, r)
    assert classify_latents(r) == ["base_only", "shared", "other", "shared", "other", "shared", "tuned_only"]
    assert classify_latents_delta(delta) == ["base_only", "shared", "tuned_only", "other", "base_only", "shared",
                                             "tuned_only"]
    alive = torch.tensor([True] * 6 + [False])
    assert classify_latents_delta(delta, alive=alive)[-1] == "dead"
    assert math.isnan(delta_norm(torch.zeros(1, 2, 4))[0])


def test_relative_norms_must_be_read_from_the_unfolded_decoder():
    W = hand_built_decoder()
    factors = torch.tensor([1.0, 4.0])
    _, folded, _ = fold_scaling_factors(torch.zeros(2, 8, 6), W, torch.zeros(2, 8), factors)
    # Folding different factors moves the shared latent out of its class: the reason geometry is unfolded.
    assert relative_decoder_norm(folded)[2].item() == pytest.approx(0.2)
    assert relative_decoder_norm(W)[2].item() == pytest.approx(0.5)


def test_extreme_latents_orders_by_relative_norm_outside_the_shared_band():
    r = torch.tensor([0.05, 0.0, 0.95, 1.0, 0.5, 0.92, 0.8, 0.25])
    band = {"shared_min": 0.3, "shared_max": 0.7}
    assert extreme_latents(r, "base", 5, **band) == [1, 0, 7]  # 0.25 is "other", still base-leaning
    assert extreme_latents(r, "tuned", 2, **band) == [3, 2]
    assert extreme_latents(r, "tuned", 10, **band) == [3, 2, 5, 6]
    assert extreme_latents(torch.tensor([0.4, 0.5, 0.6]), "tuned", 3, **band) == []  # all shared: nothing


def test_latent_stats_frequency_and_mean_activation():
    stats = LatentStats(3)
    f = torch.tensor([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0], [0.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    stats.update(f[:2])
    stats.update(f[2:])
    assert stats.frequency().tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert stats.mean_activation()[:2].tolist() == pytest.approx([3.0, 2.0])
    assert math.isnan(stats.mean_activation()[2])
    assert stats.max_activation.tolist() == pytest.approx([4.0, 3.0, 0.0])


def test_top_contexts_keeps_the_k_best_contexts_across_batches():
    torch.manual_seed(0)
    f = torch.rand(20, 6, 5) * (torch.rand(20, 6, 5) < 0.3)
    top = TopContexts([1, 3], k=3, context_length=6)
    for lo in range(0, 20, 7):
        top.update(f[lo:lo + 7], torch.arange(lo, min(20, lo + 7)))
    for latent in (1, 3):
        peaks = f[:, :, latent].max(dim=1).values
        expected = [i for i in peaks.argsort(descending=True).tolist() if peaks[i] > 0][:3]
        got = top.examples(latent)
        assert [c for c, _ in got] == expected
        for c, acts in got:  # the stored per-token row is that context's activation of that latent
            torch.testing.assert_close(acts, f[c, :, latent])
    assert top.examples(0) == []


def test_window_example_is_centred_on_the_peak():
    acts = torch.zeros(50)
    acts[30] = 2.0
    ex = window_example(list(range(50)), acts, window=5, context=7, decode=lambda ids: [f"t{i}" for i in ids])
    assert ex.tokens[ex.peak] == "t30"
    assert len(ex.tokens) == 11 and ex.context == 7


def test_latents_html_is_self_contained_and_escaped():
    card = LatentCard(latent=3, latent_class="tuned_only", facts={"relative_norm": 0.97, "nu_error": float("nan")},
                      examples={"general": [Example(tokens=["<script>", "alert(1)", "</script>", "\n", "&"],
                                                    activations=[0.0, 1.0, 0.5, 0.0, 0.0], peak=1, context=0)],
                                "reasoning": []})
    page = render_latents_html({"most tuned-only latents": [card], "shared": []}, title="t <x>")
    assert page.count("<script>") == 1 and "&lt;script&gt;" in page and "&amp;" in page  # only the page's own script
    assert "t &lt;x&gt;" in page
    assert not re.search(r"(src|href)=\"?https?:", page)  # nothing fetched from the network
    assert "<style>" in page and "rgba(255,140,0,1.00)" in page  # peak token fully shaded
    assert "never fires here" in page and "no live latent" in page
    assert "break-all" not in page  # words are never split mid-token
    assert '<span class="v">1.00</span>' in page and '<span class="v">0.50</span>' in page  # values shown, not on hover
    assert 'href="#latent-3"' in page and 'id="latent-3"' in page  # the index links to the card


def test_latent_rows_and_class_tables():
    W = hand_built_decoder()
    r, cos, norms = relative_decoder_norm(W), decoder_cosine(W), decoder_norms(W)
    general, reasoning = LatentStats(6), LatentStats(6)
    general.update(torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]))
    reasoning.update(torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]))
    alive = (general.n_active > 0) | (reasoning.n_active > 0)
    classes = classify_latents(r, alive=alive)
    rows = latent_rows(r, cos, norms, classes, general, reasoning, None)
    assert [row["class"] for row in rows] == ["base_only", "tuned_only", "shared", "other", "shared", "dead"]
    assert rows[1]["freq_general"] == 0.5 and rows[1]["freq_reasoning"] == 1.0
    assert rows[5]["relative_norm"] == ""  # NaN written as an empty cell
    counts = {row["class"]: row["n_latents"] for row in class_count_rows(classes)}
    assert counts == {"base_only": 1, "tuned_only": 1, "shared": 2, "other": 1, "designated_shared": 0, "dead": 1}
    freq = {row["class"]: row for row in class_frequency_rows(classes, general.frequency(), reasoning.frequency())}
    assert freq["tuned_only"]["reasoning_over_general"] == pytest.approx(2.0)
    assert freq["tuned_only"]["frac_latents_more_on_reasoning"] == 1.0
    assert freq["base_only"]["mean_freq_reasoning"] == 0.0


def test_markdown_table_formats():
    table = markdown_table([{"model": "base", "ce_recovered": 0.91234, "n_tokens": 1000.0, "x": "a|b"}],
                           floatfmt={"ce_recovered": ".1%", "n_tokens": "d"})
    assert "| base | 91.2% | 1000 | a\\|b |" in table


def test_report_gathers_what_exists_and_names_what_is_missing(tmp_path):
    exp = tmp_path / "myexp"
    analyze, bench = exp / "analyze", exp / "bench"
    from reasondiff.analyze.ce_recovery import CE_COLUMNS

    row = {"text": "general", "convention": "paper", "model": "base", "ce_clean": 2.0, "ce_zero_ablation": 6.0,
           "ce_spliced": 2.4, "ce_recovered": 0.9, "ce_recovered_ci_low": 0.85, "ce_recovered_ci_high": 0.93,
           "delta_ce": 0.4, "kl_spliced": 0.1, "kl_zero_ablation": 3.0, "n_tokens": 100, "n_contexts": 4}
    write_csv(analyze / "ce_recovery.csv", [row], CE_COLUMNS)
    write_csv(analyze / "scaling_factors.csv", [{"model": "base", "scaling_factor": 0.5, "relative_to_base": 1.0},
                                                {"model": "tuned", "scaling_factor": 0.25, "relative_to_base": 0.5}],
              ["model", "scaling_factor", "relative_to_base", "mean_norm"])
    write_csv(bench / "summary.csv", [{"task": "gsm8k", "model": "tuned", "performance": 50.0, "best_limit": 64, "n": 4}],
              ["task", "model", "performance", "best_limit", "n"])
    (bench / "accuracy_vs_limit.png").write_bytes(b"\x89PNG")
    (bench / ".hydra").mkdir(parents=True)
    (bench / ".hydra" / "config.yaml").write_text("model:\n  path: m\nbench:\n  limit: 3\nharvest:\n  n_tokens: 9\n")
    report = build_report(exp, analyze, title="R")
    assert "| general | paper | base | 90.0% [85.0%, 93.0%] | 2.0000 | 6.0000 | 2.4000 | 0.4000 | 0.1000 | 3.0000 | 100 |" \
        in report
    assert "Ratio tuned / base = **0.5**" in report
    assert "| tuned | gsm8k | 4 | 50.0 | 64 | – |" in report  # Table 1 with units and a no-answer column
    assert "](../bench/accuracy_vs_limit.png)" in report
    assert "python -m reasondiff.finetune +exp=myexp" in report  # Fig. 2 missing: says what to run
    assert "limit: 3" not in report and "report_appendix.md" in report  # configurations live in the appendix
    appendix = build_appendix(exp, analyze, title="R")
    assert "limit: 3" in appendix and "n_tokens: 9" not in appendix  # a stage's own config section only
    assert "**harvest** (not run)" in appendix
