"""Figures of the analyze stage (matplotlib, Agg backend: no display needed), each saved atomically.

Fig. 5: relative decoder norm histogram; Fig. 6: cosine of shared latents' decoder pairs;
plus the Latent Scaling scatter (ν_error vs ν_reconstruction of model-specific latents).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reasondiff import artifacts

CLASS_COLORS = {"base_only": "#1f5fa8", "tuned_only": "#b8460b", "shared": "#2b7a2b", "other": "#888888"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    artifacts.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
    _pyplot().close(fig)
    return path


def relative_norm_histogram(relative_norm: Sequence[float], path: Path, *, shared_min: float, shared_max: float,
                            base_only_max: float, tuned_only_min: float, title: str = "") -> Path:
    """Fig. 5: r = ||d_tuned|| / (||d_base|| + ||d_tuned||) over live latents (0 = base-only, 1 = tuned-only)."""
    plt = _pyplot()
    values = np.asarray(relative_norm, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.hist(values, bins=np.linspace(0, 1, 51), color="#555555")
    ax.axvspan(shared_min, shared_max, color=CLASS_COLORS["shared"], alpha=0.12, label="shared")
    ax.axvspan(0, base_only_max, color=CLASS_COLORS["base_only"], alpha=0.15, label="base-only")
    ax.axvspan(tuned_only_min, 1, color=CLASS_COLORS["tuned_only"], alpha=0.15, label="tuned-only")
    ax.set_xlabel("relative decoder norm  ||d_tuned|| / (||d_base|| + ||d_tuned||)")
    ax.set_ylabel("live latents")
    ax.set_yscale("log")
    ax.set_title(title or f"Relative decoder norms ({len(values)} live latents)")
    ax.legend(fontsize=8)
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


def latent_scaling_scatter(nu_error: Sequence[float], nu_reconstruction: Sequence[float], classes: Sequence[str],
                           path: Path, *, specific_ratio_max: float) -> Path:
    """ν_error (x) against ν_reconstruction (y): near the origin = truly model-specific latents."""
    plt = _pyplot()
    x, y = np.asarray(nu_error, dtype=float), np.asarray(nu_reconstruction, dtype=float)
    classes = np.asarray(classes)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for cls in ("base_only", "tuned_only"):
        keep = (classes == cls) & np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[keep], y[keep], s=10, alpha=0.7, color=CLASS_COLORS[cls], label=f"{cls} ({keep.sum()})")
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() > 10:  # a few latents that barely fire give huge ratios: keep the bulk in view
        lo, hi = np.percentile(np.r_[x[finite], y[finite]], [2, 98])
        pad = 0.1 * (hi - lo + 1e-9)
        ax.set_xlim(min(lo, -0.1) - pad, max(hi, 1.1) + pad)
        ax.set_ylim(min(lo, -0.1) - pad, max(hi, 1.1) + pad)
    ax.axvline(specific_ratio_max, color="k", lw=0.8, ls="--")
    ax.set_xlabel("ν_error = β_error(other model) / β_error(own model)")
    ax.set_ylabel("ν_reconstruction")
    ax.set_title("Latent Scaling of model-specific latents")
    ax.legend(fontsize=8)
    return _save(fig, path)
