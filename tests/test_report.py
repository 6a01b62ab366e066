"""report.md's generated headline (its numbers are the CSVs' numbers), its layout (Fig. 3 before
Fig. 4, no raw training rows, no fields foreign to the crosscoder's variant, configs in the
appendix), the self-contained report.html, and the data behind latents.html (direct logit
effects, activation histograms)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from reasondiff.analyze.contexts import ActivationHistogram
from reasondiff.analyze.headline import bench_sentences, headline_sentences
from reasondiff.analyze.logit_effects import (
    direct_logit_effects,
    folded_unembedding,
    group_logit_rows,
    logit_effect_rows,
)
from reasondiff.analyze.report import build_report, crosscoder_facts, write_csv, write_reports
from reasondiff.core import artifacts

SUMMARY = [
    {"model": "base", "task": "gsm8k", "performance": 17.5, "performance_low": 7.5, "performance_high": 30.0,
     "scaling": 0.0, "scaling_low": 0.0, "scaling_high": 0.0, "best_limit": 16, "token_limits": "16-32-64-128", "n": 40},
    {"model": "tuned", "task": "gsm8k", "performance": 42.5, "performance_low": 27.5, "performance_high": 57.5,
     "scaling": 0.25, "scaling_low": 0.12, "scaling_high": 0.38, "best_limit": 128, "token_limits": "16-32-64-128",
     "n": 40, "paired_with": "base", "n_paired": 40, "only_this": 12, "only_other": 2, "mcnemar_p": 0.0129,
     "performance_diff": 25.0, "scaling_diff": 0.25, "scaling_diff_low": 0.1, "scaling_diff_high": 0.4},
]
RESULTS = [{"model": m, "task": "gsm8k", "limit": limit, "accuracy": acc, "accuracy_low": acc / 2,
            "accuracy_high": min(100, acc * 1.5 + 5), "n": 40, "correct": int(acc * 0.4), "no_answer": na,
            "finished": 40, "seconds": 1.0, "seconds_per_question": 0.05, "mean_tokens": 9.0}
           for m, acc, na in (("base", 17.5, 0), ("tuned", 42.5, 3)) for limit in (16, 32, 64, 128)]
CE = [{"text": "general", "convention": c, "model": m, "ce_clean": 2.0, "ce_zero_ablation": 6.0, "ce_spliced": 2.3,
       "ce_recovered": v, "ce_recovered_ci_low": v - 0.012, "ce_recovered_ci_high": v + 0.011, "delta_ce": 0.3,
       "kl_spliced": 0.1, "kl_zero_ablation": 3.0, "n_tokens": 1000, "n_contexts": 8}
      for c, m, v in (("paper", "base", 0.9219), ("paper", "tuned", 0.9258), ("sink_preserving", "base", 0.88),
                      ("sink_preserving", "tuned", 0.89))]
COUNTS = [{"class": c, "n_latents": n, "fraction": n / 1024, "n_latents_delta": d, "fraction_delta": d / 1024}
          for c, n, d in (("base_only", 122, 145), ("tuned_only", 165, 189), ("shared", 510, 197), ("other", 196, 462),
                          ("designated_shared", 0, 0), ("dead", 31, 31))]
SCALING = [{"class": "base_only", "n_live_latents": 122, "n_with_beta": 122, "median_nu_error": 0.23,
            "median_nu_reconstruction": 0.31, "n_truly_specific": 49, "specific_ratio_max": 0.2},
           {"class": "tuned_only", "n_live_latents": 165, "n_with_beta": 165, "median_nu_error": 0.18,
            "median_nu_reconstruction": 0.39, "n_truly_specific": 91, "specific_ratio_max": 0.2}]
LATENTS = [{"latent": 0, "class": "tuned_only", "relative_norm": 0.97, "delta_norm": 0.98, "cosine": 0.1,
            "freq_general": 0.001, "freq_reasoning": 0.05},
           {"latent": 1, "class": "tuned_only", "relative_norm": 0.995, "delta_norm": 0.99, "cosine": 0.2,
            "freq_general": 0.02, "freq_reasoning": 0.02},
           {"latent": 2, "class": "base_only", "relative_norm": 0.01, "delta_norm": 0.0, "cosine": 0.3,
            "freq_general": 0.12, "freq_reasoning": 0.1},
           {"latent": 3, "class": "dead", "relative_norm": 0.5, "delta_norm": 0.5, "cosine": 0.0,
            "freq_general": 0.0, "freq_reasoning": 0.0}]
LOGITS = [{"latent": latent, "model": model, "direction": "promoted", "rank": rank, "token_id": rank,
           "token": token, "logit_effect": 1.0 / rank}
          for latent in (0, 1, 2) for model in ("base", "tuned") for rank, token in enumerate((" Wait", " so", "\n"), 1)]


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "demo"
    bench, analyze, train = exp / "bench", exp / "analyze", exp / "train"
    write_csv(bench / "summary.csv", SUMMARY, list(SUMMARY[1]))
    write_csv(bench / "results.csv", RESULTS, list(RESULTS[0]))
    write_csv(analyze / "ce_recovery.csv", CE, list(CE[0]))
    write_csv(analyze / "class_counts.csv", COUNTS, list(COUNTS[0]))
    write_csv(analyze / "latent_scaling_summary.csv", SCALING, list(SCALING[0]))
    write_csv(analyze / "latents.csv", LATENTS, list(LATENTS[0]))
    write_csv(analyze / "latent_logits.csv", LOGITS, list(LOGITS[0]))
    artifacts.write_json(train / "config.json", {"variant": "l1", "d_model": 64, "n_latents": 1024, "k": 100,
                                                 "l1_coeff": 2.0, "hook": "blocks.2.hook_resid_pre"})
    (train / "metrics.csv").write_text("step,loss,l2,l1,l0\n50,9.0,6.0,1.5,80.0\n100,5.0,3.0,1.0,40.0\n")
    # a 1x1 PNG per figure, in the order the stages would NOT list them alphabetically
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
    for name in ("accuracy_vs_limit", "time_vs_limit"):
        (bench / f"{name}.png").write_bytes(png)
        (bench / f"{name}.pdf").write_bytes(b"%PDF-1.4\n")
    (analyze / "relative_norm_hist.png").write_bytes(png)
    (analyze / ".hydra").mkdir(parents=True)
    (analyze / ".hydra" / "config.yaml").write_text(
        "model:\n  path: m\nanalyze:\n  base_only_max: 0.1\n  shared_min: 0.3\n  shared_max: 0.7\n  tuned_only_min: 0.9\n")
    return exp


def test_headline_sentences_carry_the_csvs_numbers(experiment):
    sentences = headline_sentences(experiment, experiment / "analyze")
    assert 5 <= len(sentences) <= 8
    text = " ".join(sentences)
    # the fine-tune helped on gsm8k: both accuracies with their bootstrap intervals, the gain and the test
    assert "42.5% [27.5, 57.5]" in text and "17.5% [7.5, 30.0]" in text and "+25.0 points" in text
    assert "a significant gain (McNemar exact p = 0.013)" in text
    assert "scales at +0.250%/token over the 16-128-token grid (Table 1's scaling; base +0.000)" in text
    assert "[+0.100, +0.400] %/token, significant" in text and "per 100 tokens" not in text
    # CE recovered with intervals (paper convention), the other convention beside it
    assert "92.2% [91.0, 93.3] of the CE loss for base" in text and "92.6% [91.4, 93.7] of the CE loss for tuned" in text
    assert "88.0% and 89.0% under the sink-preserving convention" in text
    # classes with the run's bands, and by Δ
    assert "1024 latents, 510 (49.8%) are shared (0.3 ≤ r ≤ 0.7), 122 base-only (r ≤ 0.1), 165 tuned-only" in text
    assert "by Minder et al.'s Δ, 197 shared, 145 base-only and 189 tuned-only" in text
    assert "91 of 165 tuned-only latents are truly tuned-specific" in text
    # notable latents: the most reasoning-selective tuned latent (0, not the higher-r 1) and its tokens
    assert "latent 0 (tuned_only, r = 0.9700)" in text and "5.00% of reasoning tokens" in text
    assert "`\\\\n`" not in text and "` Wait`, ` so`, `\\n`" in text
    assert "latent 2 (base_only, r = 0.0100) is the most frequent base-leaning latent (12.00%" in text


def test_headline_says_when_a_difference_is_not_significant_and_when_answers_are_missing():
    summary = [dict(SUMMARY[0]), dict(SUMMARY[1], mcnemar_p=0.4, performance_diff=-2.5, scaling_diff_low=-0.1)]
    results = [dict(r, no_answer=30 if r["model"] == "tuned" else 0) for r in RESULTS]
    (sentence,) = bench_sentences(summary, results)
    assert "-2.5 points, not significant (McNemar exact p = 0.4)" in sentence
    assert "30 of its 40 replies there give no answer" in sentence
    assert "[-0.100, +0.400] %/token, not significant" in sentence


def test_headline_leads_with_the_largest_significant_effect_and_names_a_slope_made_by_no_answers():
    """Issue 33.5: the summary opened with a null boolq result whose "+84.38 points per 100 tokens,
    significant" came from 40/40 unanswered questions at 16 and 32 tokens (beyond a 16-80 grid)."""
    grid = "16-32-48-64-80"
    base = {"model": "base", "performance": 50.0, "scaling": 0.0, "best_limit": 16, "token_limits": grid, "n": 40}
    summary = [dict(base, task="boolq"), dict(base, task="gsm8k", performance=17.5),
               {"model": "tuned", "task": "boolq", "performance": 45.0, "scaling": 0.84375, "best_limit": 64,
                "token_limits": grid, "n": 40, "mcnemar_p": 0.86, "performance_diff": -5.0, "scaling_diff": 0.84375,
                "scaling_diff_low": 0.5625, "scaling_diff_high": 1.125},
               {"model": "tuned", "task": "gsm8k", "performance": 62.5, "scaling": 1.156, "best_limit": 64,
                "token_limits": grid, "n": 40, "mcnemar_p": 0.0001, "performance_diff": 45.0, "scaling_diff": 1.156,
                "scaling_diff_low": 0.875, "scaling_diff_high": 1.44}]
    results = [{"model": "tuned", "task": task, "limit": limit, "no_answer": 40 if limit <= 32 else 2, "n": 40}
               for task in ("boolq", "gsm8k") for limit in (16, 32, 48, 64, 80)]
    gsm8k, boolq = bench_sentences(summary, results)
    assert gsm8k.startswith("On gsm8k") and boolq.startswith("On boolq")  # the significant gain leads
    assert "+0.844%/token over the 16-80-token grid" in boolq and "per 100 tokens" not in boolq + gsm8k
    assert "driven by unanswered questions (no answer in 40/40 at 16 tokens and 40/40 at 32 tokens" in boolq
    assert boolq.endswith("not a gain over base.") and not gsm8k.endswith("not a gain over base.")
    # a slope without unanswered questions at the low limits says nothing about them
    quiet = [dict(r, no_answer=0) for r in results]
    assert not any("unanswered" in s for s in bench_sentences(summary, quiet))


def test_headline_and_table_1_read_a_constant_answerer_against_its_baseline():
    """Issue 26.2: a base that answers "no" to every boolq question scores the share of False labels."""
    from reasondiff.analyze.report import table1_rows

    flagged = {"model": "base", "task": "boolq", "performance": 34.0, "best_limit": 16, "n": 50, "top_answer": "no",
               "top_answer_share": "100.0", "majority_answer": "yes", "majority_baseline": "66.0",
               "constant_answerer": "True"}
    tuned = {"model": "tuned", "task": "boolq", "performance": 60.0, "best_limit": 64, "n": 50, "mcnemar_p": 0.01,
             "top_answer": "yes", "top_answer_share": "48.0", "majority_answer": "yes", "majority_baseline": "66.0",
             "constant_answerer": "False"}
    (sentence,) = bench_sentences([flagged, tuned])
    assert 'base answers "no" to 100% of the questions there (majority-class baseline 66.0%)' in sentence
    assert "tuned answers" not in sentence
    rows = {r["model"]: r for r in table1_rows([flagged, tuned], [])}
    assert rows["base"]["top answer (share %)"] == "`no` (100) ⚑" and rows["base"]["majority baseline (%)"] == "66.0"
    assert rows["tuned"]["top answer (share %)"] == "`yes` (48)"
    # a summary.csv from before issue 26 has none of these columns: nothing is added, nothing breaks
    (old,) = bench_sentences([dict(SUMMARY[0]), dict(SUMMARY[1])])
    assert "answers" not in old and table1_rows(SUMMARY, RESULTS)[0]["top answer (share %)"] == "–"


def test_report_layout(experiment):
    report = build_report(experiment, experiment / "analyze", title="R", crosscoder_dir=experiment / "train")
    assert report.index("## Summary") < report.index("## Token-budget benchmarks")
    assert report.index("time_vs_limit.png") < report.index("accuracy_vs_limit.png")  # Fig. 3 before Fig. 4
    assert "*Fig. 3:" in report and "*Fig. 4:" in report and "[PDF](../bench/time_vs_limit.pdf)" in report
    assert "| model | task | n | performance (%) | best limit (tokens) | no answer at best limit |" in report
    assert "| tuned | gsm8k | 40 | 42.5 [27.5, 57.5] | 128 | 3/40 | 0.2500 [0.1200, 0.3800] | +25.0 | 0.0129 |" in report
    assert "| tuned | gsm8k | 128 | 42.5 [21.2, 68.8] | 3/40 | 40/40 | 0.050 | 9.0 |" in report
    assert "Last logged training metrics" not in report and "| 100 | 5.0 |" not in report  # no raw training rows
    assert "l1_coeff = 2.0" in report and "k = 100" not in report  # k means nothing for an L1 crosscoder
    assert "```yaml" not in report and "](report_appendix.md)" in report  # configs live in the appendix
    assert "CE recovered [95% CI] | CE clean (nats)" in report  # units in the headers


def test_crosscoder_facts_follow_the_variant():
    l1 = crosscoder_facts({"variant": "l1", "k": 100, "l1_coeff": 2.0, "n_latents": 8})
    topk = crosscoder_facts({"train": {"variant": "batchtopk", "k": 32, "l1_coeff": 2.0}, "n_latents": 8})
    assert l1 == {"variant": "l1", "n_latents": 8, "l1_coeff": 2.0}
    assert topk == {"variant": "batchtopk", "n_latents": 8, "k": 32}


def test_report_html_is_one_self_contained_page(experiment):
    paths = write_reports(experiment, experiment / "analyze", title="R <demo>")
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>R &lt;demo&gt;</title>" in page
    images = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)  # embedded
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    assert "<link" not in page and "<script" not in page
    assert "42.5% [27.5, 57.5]" in page  # the headline
    assert "<table>" in page and "<th>no answer at best limit</th>" in page  # tables rendered, not raw pipes
    assert 'id="appendix"' in page and 'href="#appendix"' in page and "analyze config" in page
    assert paths["appendix"].read_text().count("```yaml") == 1  # only analyze has a config here


# --- latents.html's data --------------------------------------------------------------------------

def test_direct_logit_effects_rank_centred_effects_and_skip_padded_rows():
    torch.manual_seed(0)
    W_U = torch.randn(12, 4)
    directions = torch.randn(3, 4)
    effects = direct_logit_effects(directions, W_U, k=3, vocab_size=10)
    full = directions @ W_U[:10].T
    full = full - full.mean(-1, keepdim=True)
    values, ids = effects["promoted"]
    assert ids.tolist() == full.topk(3, dim=-1).indices.tolist()
    torch.testing.assert_close(values, full.topk(3, dim=-1).values)
    low_values, low_ids = effects["suppressed"]
    assert low_ids.tolist() == (-full).topk(3, dim=-1).indices.tolist() and (low_values <= 0).all()
    W_U[10:] = 1e6 * directions[0]  # padded rows that would win
    assert (direct_logit_effects(directions, W_U, k=3, vocab_size=10)["promoted"][1] < 10).all()
    # folding a norm weight into the directions = folding it into the unembedding; chunks change nothing
    weight = torch.rand(4) + 0.5
    chunked = direct_logit_effects(directions, W_U, k=5, norm_weight=weight, chunk=3)
    folded = direct_logit_effects(directions, W_U * weight[None, :], k=5)
    for direction in ("promoted", "suppressed"):
        assert chunked[direction][1].tolist() == folded[direction][1].tolist()
        torch.testing.assert_close(chunked[direction][0], folded[direction][0])


def test_logit_effect_rows_fold_the_final_norm_and_undo_the_scaling_factor(tiny_model):
    with torch.no_grad():
        tiny_model.model.norm.weight.copy_(torch.linspace(0.5, 2.0, tiny_model.config.hidden_size))
    W_U = folded_unembedding(tiny_model)
    expected = tiny_model.get_output_embeddings().weight * tiny_model.model.norm.weight[None, :]
    torch.testing.assert_close(W_U, expected.detach())
    d = tiny_model.config.hidden_size
    W_dec = torch.randn(4, 2, d)
    rows = logit_effect_rows([1, 3], W_dec, torch.tensor([1.0, 0.5]), [tiny_model, tiny_model], ["base", "tuned"],
                             lambda ids: [f"t{i}" for i in ids], k=2, vocab_size=None)
    assert len(rows) == 2 * 2 * 2 * 2  # latents x models x directions x k
    grouped = group_logit_rows([{k: str(v) for k, v in r.items()} for r in rows])  # as read back from the CSV
    assert set(grouped) == {1, 3} and list(grouped[1]) == ["base", "tuned"]
    top_base = grouped[1]["base"]["promoted"][0]
    effects = W_dec[1, 0] @ W_U.T
    top = int((effects - effects.mean()).argmax())
    assert top_base[0] == f"t{top}" and top_base[1] == pytest.approx(float((effects - effects.mean())[top]), rel=1e-4)
    # scaling factor 0.5: one unit of activation is 2x the normalised vector in the raw space
    tuned = W_dec[1, 1] @ W_U.T / 0.5
    assert grouped[1]["tuned"]["promoted"][0][1] == pytest.approx(float((tuned - tuned.mean()).max()), rel=1e-4)


def test_activation_histogram_bins_the_non_zero_activations():
    rng = np.random.default_rng(0)
    values = rng.lognormal(-1, 2, size=(500, 3)) * (rng.random((500, 3)) < 0.3)
    values[0, 2] = 1e6  # beyond the last edge: counted in the last bin
    hist = ActivationHistogram([0, 2])
    f = torch.tensor(values, dtype=torch.float32)
    hist.update(f[:200])
    hist.update(f[200:])
    edges = ActivationHistogram.EDGES.numpy()
    for latent in (0, 2):
        column = values[:, latent].astype(np.float32).astype(np.float64)
        active = column[column > 0]
        expected, _ = np.histogram(np.clip(active, edges[0], edges[-1] * 0.999), bins=edges)
        assert hist.histogram(latent) == expected.tolist()
        assert sum(hist.histogram(latent)) == int((column > 0).sum())
    assert hist.histogram(1) == []


def test_the_report_rebuilds_from_the_files_alone(experiment, capsys):
    from reasondiff.analyze.report import main

    assert main([str(experiment)]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["report.md", "report_appendix.md", "report.html"]
    assert "42.5% [27.5, 57.5]" in (experiment / "analyze" / "report.md").read_text()
    with pytest.raises(SystemExit, match="no analyze directory"):
        main([str(experiment / "nothing")])


def test_csv_text_with_carriage_return_round_trips(tmp_path):
    """A token such as "\r" (Qwen has it) must not split its row when the CSV is read back."""
    from reasondiff.analyze.report import read_csv_rows, write_csv

    rows = [{"latent": 1, "token": "\r", "logit_effect": 0.5}, {"latent": 2, "token": "a,\"b\"\r\n", "logit_effect": -1.0}]
    write_csv(tmp_path / "t.csv", rows, ["latent", "token", "logit_effect"])
    back = read_csv_rows(tmp_path / "t.csv")
    assert [r["token"] for r in back] == ["\r", "a,\"b\"\r\n"]
    assert [float(r["logit_effect"]) for r in back] == [0.5, -1.0]
