"""The bench's figures against the token limit, one panel per task and one series per model.

- Fig. 4, accuracy: y fixed to [0, 100] % so runs compare at a glance, Wilson intervals as error
  bars, n in each panel's title, one legend for the figure. The models' points are dodged
  sideways (a few percent of a log2 step) and differ in colour, marker and line style, so base and
  tuned stay readable where they overlap.
- Fig. 3, time: the wall-clock seconds per question (what exactly is measured, the batch size and
  the device are written on the figure) beside the tokens generated per question, which explain
  most of the time and, unlike it, do not depend on how busy the machine was.

Theme, colours and the PNG + PDF save come from reasondiff.core.figures (shared with analyze).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasondiff.core import figures

ACCURACY_LIMITS = (0.0, 100.0)
DODGE = 0.06
"""Horizontal offset between models' points, in log2 units of the token limit."""


def _tasks(results: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in results))


def _models(results: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in results))


def dodged(limits: Sequence[float], index: int, n_models: int) -> list[float]:
    """The limits shifted for the index-th of n models, symmetric around the true limit on a log2 axis."""
    shift = (index - (n_models - 1) / 2) * DODGE
    return [float(x) * 2.0 ** shift for x in limits]


def _n_label(rows: Sequence[dict[str, Any]]) -> str:
    ns = sorted({int(r["n"]) for r in rows})
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"


def _limit_axis(ax, limits: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(limits)))
    ax.set_xticklabels([str(x) for x in sorted(set(limits))])
    ax.minorticks_off()
    ax.set_xlabel("token limit")


def accuracy_figure(results: Sequence[dict[str, Any]], path: Path, *, confidence_level: float = 0.95) -> Path:
    """Fig. 4: accuracy (%) vs token limit per task, Wilson intervals as error bars; PNG + PDF."""
    tasks, models = _tasks(results), _models(results)
    with figures.themed() as plt:
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.3), squeeze=False, sharey=True)
        for ax, task in zip(axes[0], tasks, strict=True):
            task_rows = [r for r in results if r["task"] == task]
            for index, model in enumerate(models):
                rows = sorted((r for r in task_rows if r["model"] == model), key=lambda r: r["limit"])
                if not rows:
                    continue
                y = [float(r["accuracy"]) for r in rows]
                low = [float(r.get("accuracy_low", math.nan)) for r in rows]
                high = [float(r.get("accuracy_high", math.nan)) for r in rows]
                errors = None
                if all(math.isfinite(v) for v in low + high):
                    errors = [[max(0.0, v - lo) for v, lo in zip(y, low, strict=True)],
                              [max(0.0, hi - v) for v, hi in zip(y, high, strict=True)]]
                style = figures.model_style(model, index)
                ax.errorbar(dodged([r["limit"] for r in rows], index, len(models)), y, yerr=errors, capsize=2.5,
                            markersize=5, linewidth=1.4, elinewidth=0.9, label=model, clip_on=False, **style)
            _limit_axis(ax, [r["limit"] for r in task_rows])
            ax.set_ylim(*ACCURACY_LIMITS)
            ax.set_yticks(range(0, 101, 20))
            ax.set_title(f"{task} ({_n_label(task_rows)} questions)")
        axes[0][0].set_ylabel("accuracy (%)")
        fig.suptitle(f"Accuracy vs token limit; error bars: Wilson {confidence_level:.0%} interval")
        _figure_legend(fig, axes)
        return figures.save(fig, path)


def time_caption(*, batch_size: int | None, device: str | None, backend: str | None = None) -> str:
    """What Fig. 3's seconds are, in one line written under the figure."""
    where = ", ".join(part for part in (f"batches of {batch_size} questions" if batch_size else "",
                                        f"on {device}" if device else "", f"{backend} backend" if backend else "")
                      if part)
    return ("Seconds per question: wall clock from the start of a question's generation batch until its answer "
            f"reached the limit or ended, mean over questions ({where}). Measured per token; noisy on shared CPUs.")


def time_figure(results: Sequence[dict[str, Any]], path: Path, *, batch_size: int | None = None,
                device: str | None = None, backend: str | None = None) -> Path:
    """Fig. 3: seconds per question (top) and tokens generated per question (bottom) vs token limit."""
    tasks, models = _tasks(results), _models(results)
    with figures.themed() as plt:
        fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 5.6), squeeze=False, sharex="col")
        for col, task in enumerate(tasks):
            task_rows = [r for r in results if r["task"] == task]
            for index, model in enumerate(models):
                rows = sorted((r for r in task_rows if r["model"] == model), key=lambda r: r["limit"])
                if not rows:
                    continue
                x = dodged([r["limit"] for r in rows], index, len(models))
                style = figures.model_style(model, index)
                axes[0][col].plot(x, [float(r["seconds_per_question"]) for r in rows], label=model, markersize=5,
                                  linewidth=1.4, **style)
                axes[1][col].plot(x, [float(r["mean_tokens"]) for r in rows], label=model, markersize=5,
                                  linewidth=1.4, **style)
            limits = [r["limit"] for r in task_rows]
            for ax in axes[:, col]:
                _limit_axis(ax, limits)
                ax.set_ylim(bottom=0)
            axes[1][col].plot(sorted(set(limits)), sorted(set(limits)), color="0.6", linewidth=0.8, linestyle=":",
                              label="= limit")
            axes[1][col].set_ylim(0, max(limits) * 1.05)
            axes[0][col].set_title(f"{task} ({_n_label(task_rows)} questions)")
            axes[0][col].set_xlabel("")
        axes[0][0].set_ylabel("wall seconds per question")
        axes[1][0].set_ylabel("tokens generated per question")
        fig.suptitle("Generation time and tokens vs token limit")
        _figure_legend(fig, axes[1:])
        fig.text(0.5, -0.045, time_caption(batch_size=batch_size, device=device, backend=backend), ha="center",
                 va="top", fontsize=7.5, wrap=True)
        return figures.save(fig, path)


def _figure_legend(fig, axes) -> None:
    """One legend for the whole figure, under the panels (never repeated per panel)."""
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.tight_layout()
    fig.legend([handles[label] for label in labels], labels, loc="upper center", ncol=max(1, len(labels)),
               bbox_to_anchor=(0.5, 0.0), frameon=False)
