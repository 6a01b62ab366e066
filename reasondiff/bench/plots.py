"""The bench's figures: accuracy (Fig. 4, with Wilson 95% bands) and wall time (Fig. 3) against the
token limit, one panel per task and one line per model. All of the bench's plotting lives here, so
a restyle only touches this file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasondiff import artifacts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_task(results: Sequence[dict[str, Any]], path: Path, *, value: str, ylabel: str, title: str,
                 interval: tuple[str, str] | None = None, note: str | None = None) -> Path:
    """One panel per task, one line per model, against the token limit (log2 axis). `interval`
    names the low/high columns drawn as a shaded band and error bars around each point."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for model in dict.fromkeys(r["model"] for r in results):
            rows = sorted((r for r in results if r["task"] == task and r["model"] == model), key=lambda r: r["limit"])
            if not rows:
                continue
            x = [r["limit"] for r in rows]
            y = [r[value] for r in rows]
            if interval is None:
                ax.plot(x, y, marker="o", label=model)
                continue
            low = [r[interval[0]] for r in rows]
            high = [r[interval[1]] for r in rows]
            finite = all(math.isfinite(v) for v in low + high)
            errors = [[max(0.0, v - lo) for v, lo in zip(y, low, strict=True)],
                      [max(0.0, hi - v) for v, hi in zip(y, high, strict=True)]] if finite else None
            line = ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=model)
            if finite:
                ax.fill_between(x, low, high, alpha=0.15, color=line[0].get_color(), linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("token limit")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    if note:
        fig.text(0.5, -0.02, note, ha="center", va="top", fontsize=8)
    fig.tight_layout()
    artifacts.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def accuracy_figure(results: Sequence[dict[str, Any]], path: Path, *, confidence_level: float = 0.95) -> Path:
    """Fig. 4: accuracy (%) vs token limit with the Wilson interval of each point."""
    return plot_by_task(results, path, value="accuracy", ylabel="accuracy (%)", title="Accuracy vs token limit (Fig. 4)",
                        interval=("accuracy_low", "accuracy_high"),
                        note=f"bands and bars: Wilson {confidence_level:.0%} interval of each accuracy")


def time_figure(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 3: wall seconds per question vs token limit (measured per token, see generation.py)."""
    return plot_by_task(results, path, value="seconds_per_question", ylabel="seconds per question",
                        title="Wall time vs token limit (Fig. 3)")
