"""Paper Fig. 2: SFT training loss per optimizer step, from the trainer's log history."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def loss_points(log_history: Iterable[Mapping[str, Any]]) -> tuple[list[int], list[float]]:
    """(steps, losses) of the training-loss entries, one per step (a resumed run may log a step twice: last wins)."""
    by_step: dict[int, float] = {}
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            by_step[int(entry["step"])] = float(entry["loss"])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (same length as `values`)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | Path, *, title: str) -> Path:
    """Write the loss curve (Fig. 2) as PNG and PDF in the project's theme, atomically; a smoothed
    line is drawn when there are enough points. Returns the PNG's path."""
    from reasondiff.core import figures
    with figures.themed() as plt:
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        ax.plot(steps, losses, color="#9bb7d4", linewidth=1.0, label="training loss")
        if len(losses) >= 50:  # a real run logs every step; the tiny demo logs too few points to smooth
            window = max(2, len(losses) // 20)
            ax.plot(steps, moving_average(losses, window), color="#1f4e79", linewidth=1.8,
                    label=f"moving average ({window} logs)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (assistant tokens)")
        ax.set_title(title)
        ax.legend(frameon=False)
        fig.tight_layout()
        return figures.save(fig, Path(path))
