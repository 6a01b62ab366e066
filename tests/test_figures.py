"""Every figure: saved as PNG and PDF, one theme; Fig. 4's fixed y range, error bars, single legend
and dodged models; Fig. 3 saying what its seconds are; the Latent Scaling plot never clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasondiff.analyze import plots as analyze_plots
from reasondiff.bench import plots as bench_plots
from reasondiff.bench.tables import results_table
from reasondiff.core import figures

LIMITS = (16, 32, 64, 128)


def generation_rows(n: int = 20) -> list[dict]:
    """Rows as bench writes them: two models with identical accuracy on gsm8k (they overlap), tuned
    better on math500; tuned generates up to the limit, base stops at 9 tokens."""
    rows = []
    for model in ("base", "tuned"):
        for task in ("gsm8k", "math500"):
            for q in range(n):
                for limit in LIMITS:
                    right = q < n // 4 if task == "gsm8k" else (model == "tuned" and q < limit // 16)
                    tokens = 9 if model == "base" else min(limit, 100)
                    rows.append({"model": model, "task": task, "id": str(q), "limit": limit, "correct": right,
                                 "no_answer": model == "tuned" and limit == 16, "finished": tokens < limit,
                                 "tokens": tokens, "seconds": 0.01 * tokens, "batch": f"{model}{task}{q // 8}"})
    return rows


@pytest.fixture
def captured(monkeypatch):
    """The figures the plotting functions save, kept open for inspection (files are still written)."""
    kept = []

    def save(fig, path):
        kept.append(fig)
        written = figures.outputs_of(path)
        for target, fmt in zip(written, figures.FORMATS, strict=True):
            fig.savefig(target, format=fmt)
        return written[0]

    monkeypatch.setattr(figures, "save", save)
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def test_every_figure_is_written_as_png_and_pdf(tmp_path):
    results = results_table(generation_rows())
    rng = np.random.default_rng(0)
    classes = ["base_only"] * 5 + ["tuned_only"] * 5 + ["shared"] * 10
    thresholds = {"base_only_max": 0.1, "shared_min": 0.3, "shared_max": 0.7, "tuned_only_min": 0.9}
    made = [
        bench_plots.accuracy_figure(results, tmp_path / "accuracy_vs_limit.png"),
        bench_plots.time_figure(results, tmp_path / "time_vs_limit.png", batch_size=8, device="cpu (2 threads)"),
        analyze_plots.relative_norm_histogram(rng.random(50).tolist(), tmp_path / "relative_norm_hist.png", **thresholds),
        analyze_plots.cosine_histogram(rng.uniform(-1, 1, 30).tolist(), tmp_path / "cosine_hist.png"),
        analyze_plots.decoder_norm_scatter(rng.random(20).tolist(), rng.random(20).tolist(), classes,
                                           tmp_path / "decoder_norms.png", **thresholds),
        analyze_plots.frequency_histogram(rng.random(20).tolist(), classes, tmp_path / "frequency_hist.png"),
        analyze_plots.latent_scaling_scatter(rng.random(10).tolist(), rng.random(10).tolist(), classes[:10],
                                             tmp_path / "latent_scaling.png", specific_ratio_max=0.2),
        analyze_plots.training_curves([{"step": s, "l2": 1 / s, "l0": 10, "explained_variance_base": 0.9}
                                       for s in (1, 2, 3)], tmp_path / "training_curves.png"),
    ]
    for png in made:
        assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", png
        assert figures.caption(png.stem) != png.stem.replace("_", " "), f"{png.stem} has no caption"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.stem}.{fmt}" for p in made for fmt in ("pdf", "png"))
    assert figures.caption("time_vs_limit").startswith("Fig. 3") and figures.caption("accuracy_vs_limit").startswith("Fig. 4")


def test_accuracy_figure_fixes_y_and_keeps_overlapping_models_apart(tmp_path, captured):
    results = results_table(generation_rows(n=20))
    bench_plots.accuracy_figure(results, tmp_path / "a.png")
    (fig,) = captured
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_ylim() == (0.0, 100.0)
        assert all(0 <= t <= 100 for t in ax.get_yticks())  # no negative (or >100) tick
        assert ax.get_legend() is None  # one legend for the figure, not one per panel
        assert "n = 20" in ax.get_title()
        assert ax.get_xscale() == "log"
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["base", "tuned"]
    gsm8k = axes[0]
    bars = {c.get_label(): c for c in gsm8k.containers}
    base, tuned = bars["base"].lines[0], bars["tuned"].lines[0]
    assert list(base.get_ydata()) == list(tuned.get_ydata())  # same accuracy: the points would overlap...
    assert all(b < t for b, t in zip(base.get_xdata(), tuned.get_xdata(), strict=True))  # ...but are dodged
    assert base.get_marker() != tuned.get_marker() and base.get_linestyle() != tuned.get_linestyle()
    # Wilson error bars: each point's bar spans exactly its interval from results.csv
    expected = [(r["accuracy_low"], r["accuracy_high"]) for r in results if r["task"] == "gsm8k" and r["model"] == "base"]
    (segments,) = bars["base"].lines[2]
    spans = [v for s in segments.get_segments() for v in (float(s[0][1]), float(s[1][1]))]
    assert spans == pytest.approx([v for pair in expected for v in pair], abs=1e-3) and expected[0][1] > expected[0][0]


def test_time_figure_says_what_the_time_is_and_shows_tokens(tmp_path, captured):
    results = results_table(generation_rows())
    bench_plots.time_figure(results, tmp_path / "t.png", batch_size=8, device="cpu (2 threads)", backend="hf")
    (fig,) = captured
    text = " ".join(t.get_text() for t in fig.texts)
    for needed in ("per question", "wall clock", "batches of 8 questions", "cpu (2 threads)", "noisy on shared CPUs"):
        assert needed in text
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["wall seconds per question", "tokens generated per question"]
    tokens_axis = [ax for ax in fig.axes if ax.get_ylabel() == "tokens generated per question"][0]
    tuned = [line for line in tokens_axis.get_lines() if line.get_label() == "tuned"][0]
    assert list(tuned.get_ydata()) == [16, 32, 64, 100]  # mean tokens per question at each limit
    assert all(ax.get_ylim()[0] == 0 for ax in fig.axes if ax.get_ylabel())


def test_latent_scaling_plot_never_clips_silently(tmp_path, captured):
    nu_error = [0.05, 0.1, 0.9, 250.0, -40.0, math.nan]
    nu_reconstruction = [0.1, 0.2, 1.0, 3.0, 0.5, 0.3]
    classes = ["tuned_only"] * 3 + ["base_only"] * 3
    assert analyze_plots.latent_scaling_scale(nu_error, nu_reconstruction) == "symlog"
    assert analyze_plots.latent_scaling_scale([0.1, 0.9], [0.2, 1.2]) == "linear"
    analyze_plots.latent_scaling_scatter(nu_error, nu_reconstruction, classes, tmp_path / "ls.png",
                                         specific_ratio_max=0.2)
    (fig,) = captured
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "symlog"
    (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
    points = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert len(points) == 5  # every finite point drawn...
    assert all(x_lo <= x <= x_hi and y_lo <= y <= y_hi for x, y in points)  # ...inside the axes
    assert "1 latent(s) without a finite ν" in ax.get_title()  # the NaN one is counted, not dropped silently


def test_model_styles_tell_base_and_tuned_apart():
    base, tuned = figures.model_style("base"), figures.model_style("tuned")
    assert base["color"] != tuned["color"] and base["marker"] != tuned["marker"]
    assert base["linestyle"] != tuned["linestyle"]
    assert figures.model_style("other", 0)["marker"] not in (base["marker"], tuned["marker"])


def _kept_figure(monkeypatch, module):
    """The figure a plotting function draws, kept open for inspection (its save still runs)."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(module, "_save", keep)
    return kept


def test_relative_norm_histogram_states_its_bin_width_and_names_every_zone(monkeypatch, tmp_path):
    """Issue 33.6: no bin width, and the two gaps between the classes were unlabelled."""
    kept = _kept_figure(monkeypatch, analyze_plots)
    analyze_plots.relative_norm_histogram(np.random.default_rng(0).random(200).tolist(), tmp_path / "r.png",
                                          base_only_max=0.1, shared_min=0.3, shared_max=0.7, tuned_only_min=0.9)
    ax = kept[0].axes[0]
    assert "bin width 0.02" in ax.get_ylabel()
    widths = {round(p.get_width(), 6) for p in ax.patches if p.get_height() > 0 and p.get_width() < 0.05}
    assert widths == {0.02}  # the bars are as wide as the label says
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("other") for label in labels) and len(labels) == 4
    # every part of [0, 1] is inside exactly one labelled zone
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches if p.get_width() >= 0.05)
    assert spans[0][0] == 0 and spans[-1][1] == 1 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_scan_figure_block_axis_ends_at_the_last_block_and_legends_cover_no_line(monkeypatch, tmp_path):
    """Issue 33.6: panel (d) ran past the last block (it shared the residual axis) and a legend
    covered a line."""
    import matplotlib.pyplot as plt

    from reasondiff.scan.plots import scan_figure

    closed = []
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig))
    n_layers = 4
    rows = []
    for text in ("general", "reasoning"):
        for layer in range(n_layers + 1):
            rows.append({"text": text, "site": "resid", "layer": layer, "closed_tuned_into_base": layer / 4,
                         "closed_base_into_tuned": layer / 5, "relative_change": 0.1 * layer, "cka": 1 - 0.1 * layer,
                         "cosine": 1 - 0.05 * layer})
        for layer in range(n_layers):
            for site in ("attn_out", "mlp_out"):
                rows.append({"text": text, "site": site, "layer": layer, "relative_change": 2.0 - 0.1 * layer})
    scan_figure(rows, tmp_path / "scan.png", n_layers=n_layers, threshold=0.5, recommended_layer=1)
    fig = closed[0]
    ax_kl, ax_rel, ax_cka, ax_comp = fig.axes[:4]
    assert ax_comp.get_xlim() == (-0.5, n_layers - 0.5) and ax_kl.get_xlim() == (-0.5, n_layers + 0.5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in (ax_kl, ax_rel, ax_cka, ax_comp):
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.y1 <= ax.get_window_extent(renderer).y0  # below the axes, over none of its lines
    monkeypatch.undo()
    plt.close(fig)
