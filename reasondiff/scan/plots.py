"""The scan figure: per-layer curves on every text, saved as PNG and PDF (matplotlib, Agg backend).

(a) causal effect: fraction of KL(base || tuned) closed by patching each residual layer, per text and
direction, with its 95% bootstrap band over the patched contexts, the threshold and the recommended
layer; (b) relative change of the residual stream;
(c) linear CKA and cosine of the residual stream; (d) relative change of each block's attention and
MLP outputs. Built from the rows of scan.csv, so it can be redrawn from the CSV alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from reasondiff.core import artifacts

TEXT_COLORS = {"general": "#1f5fa8", "reasoning": "#b8460b", "reasoning_answer": "#2b7a2b"}
TEXT_LABELS = {"general": "general text", "reasoning": "reasoning (all tokens)", "reasoning_answer": "reasoning (answer tokens)"}
DIRECTION_STYLES = {"tuned_into_base": ("-", "tuned → base"), "base_into_tuned": ("--", "base → tuned")}


def _series(rows: Sequence[dict], text: str, site: str, column: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["layer"]), _float(r.get(column))) for r in rows if r["text"] == text and r["site"] == site]
    pts = [(x, y) for x, y in sorted(pts) if math.isfinite(y)]
    return [x for x, _ in pts], [y for _, y in pts]


def _band(rows: Sequence[dict], text: str, column: str) -> tuple[list[int], list[float], list[float]]:
    """(layers, low, high) of a residual column's interval where both bounds are finite."""
    low = dict(zip(*_series(rows, text, "resid", f"{column}_low"), strict=True))
    high = dict(zip(*_series(rows, text, "resid", f"{column}_high"), strict=True))
    layers = sorted(set(low) & set(high))
    return layers, [low[x] for x in layers], [high[x] for x in layers]


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def scan_figure(rows: Sequence[dict], path_png: Path, *, n_layers: int, threshold: float,
                recommended_layer: int | None, title: str = "") -> list[Path]:
    """Draw the four panels; write `path_png` and the same figure as .pdf next to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = [t for t in TEXT_COLORS if any(r["text"] == t for r in rows)]
    # the residual panels share layers 0..n_layers; (d) has its own axis, blocks 0..n_layers-1
    fig, axes = plt.subplots(2, 2, figsize=(12, 10.5), layout="constrained")
    (ax_kl, ax_rel), (ax_cka, ax_comp) = axes
    for text in texts:
        color = TEXT_COLORS[text]
        for direction, (style, label) in DIRECTION_STYLES.items():
            x, y = _series(rows, text, "resid", f"closed_{direction}")
            if x:
                ax_kl.plot(x, y, style, marker="o", ms=3, color=color, label=f"{TEXT_LABELS[text]}, {label}")
            band = _band(rows, text, f"closed_{direction}")
            if band[0]:
                ax_kl.fill_between(*band, color=color, alpha=0.10 if style == "-" else 0.06, lw=0)
        x, y = _series(rows, text, "resid", "relative_change")
        ax_rel.plot(x, y, "-", marker="o", ms=3, color=color, label=TEXT_LABELS[text])
        x, y = _series(rows, text, "resid", "cka")
        ax_cka.plot(x, y, "-", marker="o", ms=3, color=color, label=f"{TEXT_LABELS[text]}, CKA")
        x, y = _series(rows, text, "resid", "cosine")
        ax_cka.plot(x, y, ":", color=color, label=f"{TEXT_LABELS[text]}, cosine")
        for site, style in (("attn_out", "--"), ("mlp_out", "-")):
            x, y = _series(rows, text, site, "relative_change")
            if x:
                ax_comp.plot(x, y, style, marker=".", color=color, label=f"{TEXT_LABELS[text]}, {site}")

    ax_kl.axhline(threshold, color="#888888", lw=0.8, ls=":")
    ax_kl.text(0, threshold, f" large = {threshold:.0%}", va="bottom", fontsize=8, color="#555555")
    if recommended_layer is not None:
        for ax in (ax_kl, ax_rel, ax_cka):
            ax.axvline(recommended_layer, color="#aa0000", lw=0.8, alpha=0.6)

    ax_kl.set_ylim(-0.05, 1.05)
    ax_kl.set_ylabel("fraction of KL(base ‖ tuned) closed")
    recommended = f"; recommended: {recommended_layer}" if recommended_layer is not None else ""
    ax_kl.set_title(f"(a) causal effect: residual stream patched at layer L (95% bands{recommended})")
    ax_rel.set_ylabel("mean ‖h_tuned − h_base‖ / ‖h_base‖")
    ax_rel.set_title("(b) residual stream: relative change")
    ax_cka.set_ylabel("similarity")
    ax_cka.set_title("(c) residual stream: linear CKA (solid), cosine (dotted)")
    ax_comp.set_ylabel("mean ‖o_tuned − o_base‖ / ‖o_base‖")
    ax_comp.set_title("(d) block outputs: MLP (solid), attention (dashed)")
    for ax in (ax_kl, ax_rel, ax_cka):
        ax.set_xlabel(f"residual layer (0 = embeddings … {n_layers} = final)")
        ax.set_xlim(-0.5, n_layers + 0.5)
    ax_comp.set_xlabel(f"block (0 … {n_layers - 1})")
    ax_comp.set_xlim(-0.5, n_layers - 0.5)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    empty = {ax_kl: "no fraction to show: patching off, or KL(base ‖ tuned) ≈ 0 (identical models)",
             ax_comp: "block outputs not compared (scan.component_sites=false)"}
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # below the axes: a legend never covers a line
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        elif ax in empty:
            ax.text(0.5, 0.5, empty[ax], transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#555555")
    if title:
        fig.suptitle(title)
    out = []
    for path, fmt in ((path_png, "png"), (path_png.with_suffix(".pdf"), "pdf")):
        artifacts.atomic_save(path, lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=130, bbox_inches="tight", format=fmt))
        out.append(path)
    plt.close(fig)
    return out
