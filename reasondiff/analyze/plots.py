"""Figures of the analyze stage, each saved as PNG and PDF (reasondiff.core.figures: one theme for the
whole pipeline, atomic saves).

Fig. 5: relative decoder norm histogram; Fig. 6: cosine of shared latents' decoder pairs;
plus the Latent Scaling scatter (ν_error vs ν_reconstruction of model-specific latents), what a
crosscoder researcher looks at first — ‖d_base‖ vs ‖d_tuned‖ per latent, the firing-frequency
histogram per class — and the training curves from train's metrics.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reasondiff.core import figures

CLASS_COLORS = figures.CLASS_COLORS
LATENT_SCALING_LINEAR = (-2.0, 4.0)
"""ν outside this range switches the Latent Scaling axes to symlog, so no point is ever clipped."""


def _pyplot():
    return figures.pyplot()


def _save(fig, path: Path) -> Path:
    return figures.save(fig, path)


RELATIVE_NORM_BIN = 0.02
"""Fig. 5's bin width in r (50 bins over [0, 1]); the y axis counts latents per bin."""


def relative_norm_histogram(relative_norm: Sequence[float], path: Path, *, shared_min: float, shared_max: float,
                            base_only_max: float, tuned_only_min: float, title: str = "") -> Path:
    """Fig. 5: r = ||d_tuned|| / (||d_base|| + ||d_tuned||) over live latents (0 = base-only, 1 = tuned-only).
    Every zone of r is shaded and named in the legend, the two unclassified gaps between the classes
    as "other", so no part of the axis is left unexplained."""
    plt = _pyplot()
    values = np.asarray(relative_norm, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.hist(values, bins=np.linspace(0, 1, round(1 / RELATIVE_NORM_BIN) + 1), color="#555555")
    ax.axvspan(0, base_only_max, color=CLASS_COLORS["base_only"], alpha=0.15,
               label=f"base-only (r ≤ {base_only_max:g})")
    ax.axvspan(shared_min, shared_max, color=CLASS_COLORS["shared"], alpha=0.12,
               label=f"shared ({shared_min:g} ≤ r ≤ {shared_max:g})")
    ax.axvspan(tuned_only_min, 1, color=CLASS_COLORS["tuned_only"], alpha=0.15,
               label=f"tuned-only (r ≥ {tuned_only_min:g})")
    gaps = [(lo, hi) for lo, hi in ((base_only_max, shared_min), (shared_max, tuned_only_min)) if hi > lo]
    for i, (lo, hi) in enumerate(gaps):
        ax.axvspan(lo, hi, color=CLASS_COLORS["other"], alpha=0.12,
                   label="other (between the classes)" if i == 0 else None)
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative decoder norm  r = ||d_tuned|| / (||d_base|| + ||d_tuned||)")
    ax.set_ylabel(f"live latents per bin\n(bin width {RELATIVE_NORM_BIN:g} in r)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)  # a bin of one latent stays visible on the log axis
    ax.set_title(title or f"Relative decoder norms ({len(values)} live latents)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return _save(fig, path)


def cosine_histogram(cosine: Sequence[float], path: Path, *, title: str = "") -> Path:
    """Fig. 6: cosine similarity between base and tuned decoder vectors of shared latents."""
    plt = _pyplot()
    values = np.asarray(cosine, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.hist(values, bins=np.linspace(-1, 1, 81), color=CLASS_COLORS["shared"])
    ax.set_xlabel("cosine(d_base, d_tuned)")
    ax.set_ylabel("shared latents")
    ax.set_yscale("log")
    ax.set_title(title or f"Decoder cosine of shared latents ({len(values)})")
    return _save(fig, path)


def latent_scaling_scale(nu_error: Sequence[float], nu_reconstruction: Sequence[float]) -> str:
    """"linear" when every finite ν lies in LATENT_SCALING_LINEAR, else "symlog" (linear within ±1,
    logarithmic beyond): a few latents that barely fire give huge ratios, and they are shown, not clipped."""
    values = np.r_[np.asarray(nu_error, dtype=float), np.asarray(nu_reconstruction, dtype=float)]
    values = values[np.isfinite(values)]
    lo, hi = LATENT_SCALING_LINEAR
    return "linear" if values.size == 0 or (values.min() >= lo and values.max() <= hi) else "symlog"


def latent_scaling_scatter(nu_error: Sequence[float], nu_reconstruction: Sequence[float], classes: Sequence[str],
                           path: Path, *, specific_ratio_max: float) -> Path:
    """ν_error (x) against ν_reconstruction (y): near the origin = truly model-specific latents.
    Every finite point is inside the axes (symlog when needed); latents without a finite ν are
    counted in the title."""
    x, y = np.asarray(nu_error, dtype=float), np.asarray(nu_reconstruction, dtype=float)
    classes = np.asarray(classes)
    finite = np.isfinite(x) & np.isfinite(y)
    scale = latent_scaling_scale(x[finite], y[finite])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for cls in ("base_only", "tuned_only"):
        keep = (classes == cls) & finite
        ax.scatter(x[keep], y[keep], s=12, alpha=0.75, color=CLASS_COLORS[cls], label=f"{cls} ({keep.sum()})",
                   edgecolors="none")
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("symlog", linthresh=1.0)
    if finite.any():
        lo = min(x[finite].min(), y[finite].min(), -0.1)
        hi = max(x[finite].max(), y[finite].max(), 1.1)
        pad = 0.05 * (hi - lo)  # lo <= -0.1 < 1.1 <= hi, so on symlog a factor widens both ends
        limits = (lo - pad, hi + pad) if scale == "linear" else (1.5 * lo, 1.5 * hi)
        ax.set_xlim(*limits)
        ax.set_ylim(*limits)
        if scale == "symlog":  # readable ticks: 0, ±0.5, ±1, then powers of ten
            decades = [10.0 ** k for k in range(1, int(np.ceil(np.log10(max(abs(limits[0]), limits[1])))) + 1)]
            ticks = [t for t in (*(-d for d in decades[::-1]), -1.0, -0.5, 0.0, 0.5, 1.0, *decades)
                     if limits[0] <= t <= limits[1]]
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_ticks(ticks)
                axis.set_ticklabels([f"{t:g}" for t in ticks])
    ax.axvline(specific_ratio_max, color="k", lw=0.8, ls="--", label=f"ν_error = {specific_ratio_max:g}")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.axvline(0, color="0.5", lw=0.5)
    ax.set_xlabel("ν_error = β_error(other model) / β_error(own model)" + (" (symlog)" if scale == "symlog" else ""))
    ax.set_ylabel("ν_reconstruction" + (" (symlog)" if scale == "symlog" else ""))
    missing = int((~finite).sum())
    ax.set_title("Latent Scaling of model-specific latents"
                 + (f"\n{missing} latent(s) without a finite ν not shown (no β: never fired on general text)"
                    if missing else ""))
    ax.legend(fontsize=8)
    return _save(fig, path)


def decoder_norm_scatter(norm_base: Sequence[float], norm_tuned: Sequence[float], classes: Sequence[str], path: Path, *,
                         shared_min: float, shared_max: float, base_only_max: float, tuned_only_min: float) -> Path:
    """‖d_base‖ vs ‖d_tuned‖ per latent on log axes, coloured by class; the diagonal lines are the
    class boundaries of r (‖d_tuned‖ / ‖d_base‖ = r / (1 − r))."""
    plt = _pyplot()
    x, y, classes = np.asarray(norm_base, dtype=float), np.asarray(norm_tuned, dtype=float), np.asarray(classes)
    positive = np.r_[x[x > 0], y[y > 0]]
    floor = positive.min() / 2 if len(positive) else 1e-6  # a zero norm (fully model-specific) sits on the axis
    x, y = np.maximum(x, floor), np.maximum(y, floor)
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    for cls in (*CLASS_COLORS, *sorted(set(classes) - set(CLASS_COLORS))):
        keep = classes == cls
        if keep.any():
            ax.scatter(x[keep], y[keep], s=6, alpha=0.6, color=CLASS_COLORS.get(cls, "#000000"), label=f"{cls} ({keep.sum()})",
                       rasterized=True)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    span = np.array([lo, hi])
    for r, style in ((base_only_max, ":"), (shared_min, "--"), (0.5, "-"), (shared_max, "--"), (tuned_only_min, ":")):
        ax.plot(span, span * r / (1 - r), color="k", lw=0.6, ls=style, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.set_ylim(lo / 1.5, hi * 1.5)
    ax.set_xlabel("||d_base||  (decoder norm, normalised space)")
    ax.set_ylabel("||d_tuned||")
    ax.set_title("Decoder norms per latent (lines: r = 0.1, 0.3, 0.5, 0.7, 0.9)")
    ax.legend(fontsize=7, markerscale=2)
    return _save(fig, path)


def frequency_histogram(frequency: Sequence[float], classes: Sequence[str], path: Path, *, title: str = "") -> Path:
    """log10 of each live latent's firing frequency, one histogram per class (dead latents never fire)."""
    plt = _pyplot()
    freq, classes = np.asarray(frequency, dtype=float), np.asarray(classes)
    live = freq > 0
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if live.any():
        logf = np.log10(freq[live])
        bins = np.linspace(np.floor(logf.min()), 0, 41)
        for cls in (c for c in CLASS_COLORS if c != "dead"):
            keep = (classes[live] == cls)
            if keep.any():
                ax.hist(logf[keep], bins=bins, histtype="step", lw=1.5, color=CLASS_COLORS[cls],
                        label=f"{cls} ({keep.sum()})")
        ax.legend(fontsize=8)
    ax.set_xlabel("log10 firing frequency (fraction of held-out general-text tokens)")
    ax.set_ylabel("latents")
    ax.set_title(title or f"Latent firing frequency per class ({int((~live).sum())} never fired on this text)")
    return _save(fig, path)


TRAINING_PANELS = (("l2", "L2 (reconstruction loss)", True), ("l1", "L1 (sparsity penalty)", True),
                   ("l0", "L0 (active latents per token)", True), ("explained_variance", "explained variance", False),
                   ("frac_dead", "fraction of dead latents", False))


def training_curves(rows: Sequence[dict], path: Path, *, title: str = "") -> Path | None:
    """L2, L1, L0, explained variance per model and dead fraction against the training step, from
    train's metrics.csv rows (None when there is nothing to draw)."""
    import pandas as pd

    frame = pd.DataFrame(list(rows)).apply(pd.to_numeric, errors="coerce")
    if frame.empty or "step" not in frame:
        return None
    frame = frame.dropna(subset=["step"]).sort_values("step")
    panels = [p for p in TRAINING_PANELS if p[0] in frame or any(c.startswith(p[0] + "_") for c in frame)]
    if not panels:
        return None
    plt = _pyplot()
    n_cols = min(3, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 2.9 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (key, label, log_y) in zip(axes.flat, panels, strict=False):
        columns = [key] if key in frame else sorted(c for c in frame if c.startswith(key + "_"))
        for column in columns:
            ax.plot(frame["step"], frame[column], lw=1.2, label=column.removeprefix(key + "_") if column != key else None)
        if log_y and (frame[columns] > 0).all().all():
            ax.set_yscale("log")
        if len(columns) > 1:
            ax.legend(fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "crosscoder training (train/metrics.csv, on training batches)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
