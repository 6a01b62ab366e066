"""Sweep summary: L0 vs fraction of variance unexplained, one point per finished train run.

`python -m reasondiff.train -m +exp=tiny +sweep=l1_coeff` writes each job to
`outputs/<exp>/train/<override-dirname>/` with a `summary.json`; this collects them into
`sweep_summary.csv` and `sweep_summary.png` (the sparsity / reconstruction trade-off curve):

    python -m reasondiff.train.sweep_summary outputs/tiny/train        # or: make sweep-summary EXP=tiny
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

from reasondiff import artifacts

log = logging.getLogger(__name__)

COLUMNS = ("run", "variant", "l1_coeff", "k", "n_latents", "l0", "fvu", "explained_variance_base",
           "explained_variance_tuned", "frac_dead", "steps")


def collect_runs(train_dir: str | Path) -> list[dict[str, Any]]:
    """Every COMPLETED run under `train_dir` (any depth) with its summary.json, sorted by L0."""
    train_dir = Path(train_dir)
    rows = []
    for summary in sorted(train_dir.rglob("summary.json")):
        run_dir = summary.parent
        if not artifacts.is_complete(run_dir):
            continue
        data = artifacts.read_json(summary)
        run = str(run_dir.relative_to(train_dir)) if run_dir != train_dir else "."
        rows.append({"run": run, **{k: data.get(k) for k in COLUMNS if k != "run"}})
    return sorted(rows, key=lambda row: (row["l0"] is None, row["l0"]))


def write_sweep_summary(train_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write sweep_summary.csv + sweep_summary.png (log-L0 vs FVU) into `out_dir` (default: train_dir)."""
    rows = collect_runs(train_dir)
    if not rows:
        raise FileNotFoundError(f"no finished train runs (summary.json + COMPLETED) under {train_dir}")
    out_dir = Path(out_dir or train_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "sweep_summary.csv"
    artifacts.write_text(csv_path, buffer.getvalue())
    png_path = out_dir / "sweep_summary.png"
    _plot(rows, png_path)
    return csv_path, png_path


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, marker in (("l1", "o"), ("batchtopk", "s")):
        points = [r for r in rows if r["variant"] == variant]
        if not points:
            continue
        ax.plot([r["l0"] for r in points], [r["fvu"] for r in points], marker=marker, linestyle="-", label=variant)
        for r in points:
            label = f"λ={r['l1_coeff']:g}" if variant == "l1" else f"k={r['k']}"
            ax.annotate(label, (r["l0"], r["fvu"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("fraction of variance unexplained")
    ax.set_title("crosscoder sweep: sparsity vs reconstruction")
    ax.grid(alpha=0.3)
    ax.legend()
    artifacts.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train_dir", nargs="?", default="outputs/tiny/train",
                        help="a train stage directory holding one sub-directory per sweep job")
    parser.add_argument("--out", default=None, help="where to write the csv/png (default: train_dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        csv_path, png_path = write_sweep_summary(args.train_dir, args.out)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from err
    log.info("wrote %s and %s", csv_path, png_path)
    print(Path(csv_path).read_text(), end="")


if __name__ == "__main__":
    main()
