"""intervene's figures (theme, colours and the PNG + PDF save from reasondiff.core.figures).

- kl_closed.png: per selection rule, the fraction of KL(base ‖ tuned) closed by patch_set against the set
  size N (log axis), the selected set with its 95% interval, the band of its frequency-matched random sets
  (min to max over the sets, their mean dashed), the whole residual patched at the hook (the ceiling) and
  every latent patched; the lower row the same for ablate_set's KL(tuned ‖ ablated tuned), the "rise" (every
  latent ablated is in intervene.csv, not drawn: it would flatten the panel).
- steering.png: per steering direction, KL closed on reasoning text and ΔCE on general text against α, with
  the band (min to max) of its random directions of the same norm in its colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasondiff.core import figures


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _pick(rows, **where) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def kl_closed_figure(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    texts = {r["text"] for r in rows}
    text = "reasoning" if "reasoning" in texts else "general"
    rules = list(dict.fromkeys(r["selection"] for r in rows if r["kind"] == "patch_set" and r["set_index"] == 0
                               and r["selection"] not in ("all", "random")))
    if not rules:
        return None
    panels = (("patch_set", "kl_closed", "KL(base ‖ tuned) closed"),
              ("ablate_set", "kl_self", "KL(tuned ‖ ablated), nats"))
    ceiling = _pick(rows, text=text, kind="patch_residual", measure="kl_closed")
    with figures.themed() as plt:
        fig, axes = plt.subplots(2, len(rules), figsize=(3.2 * len(rules), 5.6), squeeze=False, sharex="col")
        for col, rule in enumerate(rules):
            for row_index, (kind, measure, label) in enumerate(panels):
                ax = axes[row_index][col]
                own = sorted(_pick(rows, text=text, kind=kind, selection=rule, set_index=0, measure=measure),
                             key=lambda r: r["size"])
                sizes = [r["size"] for r in own]
                randoms = _pick(rows, text=text, kind=kind, selection="random", matched_to=rule, measure=measure)
                low, high, mean = [], [], []
                for n in sizes:
                    values = [_num(r["value"]) for r in randoms if r["size"] == n]
                    values = [v for v in values if v == v]
                    low.append(min(values) if values else float("nan"))
                    high.append(max(values) if values else float("nan"))
                    mean.append(sum(values) / len(values) if values else float("nan"))
                ax.fill_between(sizes, low, high, color="#999999", alpha=0.3, label="random sets (min-max)")
                ax.plot(sizes, mean, color="#777777", linestyle="--", linewidth=1, label="random mean")
                values = [_num(r["value"]) for r in own]
                err = [[v - _num(r["ci_low"]) for v, r in zip(values, own, strict=True)],
                       [_num(r["ci_high"]) - v for v, r in zip(values, own, strict=True)]]
                ax.errorbar(sizes, values, yerr=err, marker="o", color=figures.CLASS_COLORS["tuned_only"], capsize=3,
                            label="selected set (95% CI)")
                if kind == "patch_set" and ceiling:
                    c = ceiling[0]
                    ax.axhline(_num(c["value"]), color="black", linewidth=1, label="whole residual (ceiling)")
                    ax.axhspan(_num(c["ci_low"]), _num(c["ci_high"]), color="black", alpha=0.08)
                # every latent ablated moves the tuned model far more than any set: it would flatten the panel
                every = _pick(rows, text=text, kind=kind, selection="all", measure=measure) if kind == "patch_set" else []
                if every:
                    ax.axhline(_num(every[0]["value"]), color="#7b3fa0", linestyle=":", linewidth=1,
                               label="every latent")
                ax.set_xscale("log", base=2)
                if sizes:
                    ax.set_xticks(sizes)
                    ax.set_xticklabels([str(n) for n in sizes])
                    ax.minorticks_off()
                ax.set_title(f"{kind}: {rule}")
                if col == 0:
                    ax.set_ylabel(label)
                if row_index == 1:
                    ax.set_xlabel("latents in the set (N)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), bbox_to_anchor=(0.5, -0.02))
        fig.suptitle(f"Latent sets against frequency-matched random sets ({text} text)")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        return figures.save(fig, path)


def steering_figure(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    steer = [r for r in rows if r["kind"] == "steer"]
    directions = list(dict.fromkeys(r["selection"] for r in steer if r["selection"] != "random"))
    if not directions:
        return None
    texts = {r["text"] for r in rows}
    kl_text = "reasoning" if "reasoning" in texts else "general"
    panels = ((kl_text, "kl_closed", f"KL(base ‖ tuned) closed ({kl_text})"), ("general", "delta_ce", "ΔCE on general text, nats"))
    with figures.themed() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.2), squeeze=False)
        for ax, (text, measure, label) in zip(axes[0], panels, strict=True):
            for index, direction in enumerate(directions):
                points = sorted(_pick(steer, text=text, selection=direction, measure=measure), key=lambda r: _num(r["alpha"]))
                alphas = [_num(r["alpha"]) for r in points]
                values = [_num(r["value"]) for r in points]
                err = [[v - _num(r["ci_low"]) for v, r in zip(values, points, strict=True)],
                       [_num(r["ci_high"]) - v for v, r in zip(values, points, strict=True)]]
                style = figures.model_style(direction, index)
                randoms = [[v for x in _pick(steer, text=text, selection="random", matched_to=direction, measure=measure,
                                             alpha=r["alpha"]) if (v := _num(x["value"])) == v] for r in points]
                if any(randoms):
                    ax.fill_between(alphas, [min(v, default=float("nan")) for v in randoms],
                                    [max(v, default=float("nan")) for v in randoms], color=style["color"], alpha=0.15,
                                    label=f"{direction}: random directions")
                ax.errorbar(alphas, values, yerr=err, capsize=3, label=direction, color=style["color"],
                            marker=style["marker"], linestyle=style["linestyle"])
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel("α (× the direction's typical norm)")
            ax.set_ylabel(label)
        axes[0][0].legend()
        fig.suptitle("Steering the base model")
        fig.tight_layout()
        return figures.save(fig, path)
