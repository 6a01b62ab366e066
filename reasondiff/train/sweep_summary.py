"""Sweep summary: one row per finished train run of an experiment — L0, FVU and, once the run is
analysed, CE recovered — and the sparsity / fidelity trade-off plots (L0 vs FVU, L0 vs CE recovered:
the Pareto plot SAEBench and SAELens draw).

`python -m reasondiff.train -m +exp=tiny +sweep=l1_coeff` writes each job beside the main run
(`outputs/<exp>/train@l1_coeff=4/`, with a `summary.json`); `python -m reasondiff.analyze +exp=tiny
run=l1_coeff=4` analyses one into `analyze@l1_coeff=4/`. This collects them into
`outputs/<exp>/sweep_summary.csv` and `.png`. The main run (`train/`) is labelled `main` and drawn
apart from the sweep's curve, so a λ it shares with a sweep job is not a duplicate point; fields
that do not apply to a run are left empty (k for an L1 run, λ for a BatchTopK one). CE recovered
needs the model forwards analyze runs, so a run not analysed yet has an empty CE column: the CE
panel names those runs and the summary prints the analyze command that fills each one (the
overrides the train job was made with, from runs.json, plus its `run=`).

    python -m reasondiff.train.sweep_summary outputs/tiny            # or: make sweep-summary EXP=tiny
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

from reasondiff.core import artifacts
from reasondiff.core.runs import RUNS_FILE, dir_name, split_dir_name

log = logging.getLogger(__name__)

MAIN = "main"
CE_CONVENTION, CE_TEXT = "paper", "general"
"""Which ce_recovery.csv rows the sweep reads: the paper's convention (Kissane & Nanda's code, the one
comparable with published numbers) on held-out general text (docs/analyze.md has both conventions)."""
COLUMNS = ("run", "data", "variant", "l1_coeff", "k", "n_latents", "l0", "fvu", "ce_recovered_base",
           "ce_recovered_tuned", "explained_variance_base", "explained_variance_tuned", "frac_dead", "steps")


def experiment_dir(path: str | Path) -> Path:
    """Accepts the experiment dir (outputs/tiny) or, as before, a train run dir (outputs/tiny/train)."""
    path = Path(path)
    return path.parent if split_dir_name(path.name)[0] == "train" else path


def _ce_recovered(exp_dir: Path, run: str) -> dict[str, float]:
    """CE recovered per model (convention CE_CONVENTION, text CE_TEXT) from the analyze run of the same
    name (empty when not analysed, or analysed before ce_recovery.csv had a convention column)."""
    analyze = exp_dir / dir_name("analyze", run)
    table = analyze / "ce_recovery.csv"
    if not artifacts.is_complete(analyze) or not table.is_file():
        return {}
    out: dict[str, float] = {}
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "convention" not in rows[0]:
        log.warning("%s predates the CE conventions (no `convention` column): re-run analyze for its CE recovered", table)
        return {}
    for row in rows:
        model = row.get("model")
        if row["convention"] == CE_CONVENTION and row.get("text", CE_TEXT) == CE_TEXT and model in ("base", "tuned") \
                and row.get("ce_recovered"):
            out[f"ce_recovered_{model}"] = float(row["ce_recovered"])
    return out


def analyze_command(exp_dir: Path, run: str) -> str:
    """The command that writes `analyze@<run>/ce_recovery.csv` for the train run `run`: the overrides
    its train job was made with (runs.json) and its run name; without a record, the experiment's
    name and output root."""
    import shlex

    record = {}
    with_record = exp_dir / RUNS_FILE
    if with_record.is_file():
        record = artifacts.read_json(with_record).get(dir_name("train", run), {})
    overrides = [o for o in record.get("overrides", []) if not o.lstrip("+~").startswith(("run=", "hydra", "sweep"))]
    if not overrides:
        overrides = [f"exp_name={exp_dir.name}", f"output_root={exp_dir.parent}"]
    return " ".join(["python -m reasondiff.analyze", *map(shlex.quote, overrides), shlex.quote(f"run={run}")]) \
        if run != MAIN else " ".join(["python -m reasondiff.analyze", *map(shlex.quote, overrides)])


def not_analysed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("ce_recovered_base") is None and r.get("ce_recovered_tuned") is None]


def collect_runs(path: str | Path) -> list[dict[str, Any]]:
    """Every COMPLETED train run of the experiment (`train/` and its siblings `train@*/`), sorted by L0."""
    exp_dir = experiment_dir(path)
    rows = []
    for run_dir in sorted(exp_dir.glob("train*")):
        stage, run = split_dir_name(run_dir.name)
        summary = run_dir / "summary.json"
        if stage != "train" or not summary.is_file() or not artifacts.is_complete(run_dir):
            continue
        data = artifacts.read_json(summary)
        config = artifacts.read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        row = {k: data.get(k) for k in COLUMNS}
        row.update(run=run or MAIN, data=config.get("data") or ("synthetic" if run.startswith("synthetic") else "store"),
                   **_ce_recovered(exp_dir, run))
        if row["variant"] == "l1":
            row["k"] = None  # not an L1 crosscoder's setting
        elif row["variant"] == "batchtopk":
            row["l1_coeff"] = None
        rows.append(row)
    return sorted(rows, key=lambda row: (row["l0"] is None, row["l0"]))


def write_sweep_summary(path: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write sweep_summary.csv + sweep_summary.png into `out_dir` (default: the experiment dir)."""
    rows = collect_runs(path)
    if not rows:
        raise FileNotFoundError(f"no finished train runs (summary.json + COMPLETED) in {experiment_dir(path)}/train*")
    out_dir = Path(out_dir or experiment_dir(path))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    csv_path = out_dir / "sweep_summary.csv"
    artifacts.write_text(csv_path, buffer.getvalue())
    png_path = out_dir / "sweep_summary.png"
    _plot(rows, png_path)
    missing = not_analysed(rows)
    if missing:
        log.info("CE recovered is empty for %d of %d runs (not analysed yet); these commands fill it, then run "
                 "the summary again:", len(missing), len(rows))
        for row in missing:
            log.info("  %s", analyze_command(experiment_dir(path), row["run"] if row["run"] != MAIN else MAIN))
    return csv_path, png_path


def _label(row: dict[str, Any]) -> str:
    if row["variant"] == "l1" and row.get("l1_coeff") is not None:
        return f"λ={row['l1_coeff']:g}"
    return f"k={row['k']}" if row.get("k") is not None else str(row["run"])


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # the CE panel is always drawn: the runs it lacks are named in it, not left out silently
    panels = [("fvu", "fraction of variance unexplained"),
              ("ce_recovered", f"CE loss recovered\n({CE_CONVENTION} convention, {CE_TEXT} text)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False, sharex=True,
                             layout="constrained")
    l0s = [r["l0"] for r in rows if r.get("l0")]
    for ax, (metric, ylabel) in zip(axes[0], panels, strict=True):
        for data in dict.fromkeys(r["data"] for r in rows):
            for variant, marker in (("l1", "o"), ("batchtopk", "s")):
                sweep = [r for r in rows if r["variant"] == variant and r["data"] == data and r["run"] != MAIN
                         and not (data == "synthetic" and r["run"] == "synthetic")]
                main = [r for r in rows if r["variant"] == variant and r["data"] == data and r not in sweep]
                for model, style in ((("base", "-"), ("tuned", "--")) if metric == "ce_recovered" else ((None, "-"),)):
                    key = f"ce_recovered_{model}" if model else metric
                    points = [r for r in sweep if r.get(key) is not None]
                    suffix = f" {model}" if model else ""
                    if points:
                        ax.plot([r["l0"] for r in points], [r[key] for r in points], marker=marker, linestyle=style,
                                label=f"{variant} sweep ({data}){suffix}")
                        for r in points:
                            ax.annotate(_label(r), (r["l0"], r[key]), textcoords="offset points", xytext=(4, 4),
                                        fontsize=8)
                    for r in (r for r in main if r.get(key) is not None):
                        ax.scatter([r["l0"]], [r[key]], marker="*", s=160, zorder=3, edgecolor="black",
                                   label=f"main run {_label(r)} ({data}){suffix}")
        ax.set_xscale("log")
        if l0s:  # room for the rightmost point's label inside the axes (it was cut: "λ=0.")
            ax.set_xlim(min(l0s) / 1.4, max(l0s) * 1.8)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        if metric == "ce_recovered":
            missing = not_analysed(rows)
            if missing:
                names = ", ".join(_label(r) if r["run"] != MAIN else MAIN for r in missing)
                ax.set_title(f"not analysed yet: {names}\n(the summary prints the analyze command for each)",
                             fontsize=8, color="#555555")
    fig.suptitle("crosscoder sweep: sparsity vs fidelity")
    artifacts.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_dir", nargs="?", default="outputs/tiny",
                        help="an experiment directory (outputs/<exp>) holding train/ and its train@*/ runs")
    parser.add_argument("--out", default=None, help="where to write the csv/png (default: exp_dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        csv_path, png_path = write_sweep_summary(args.exp_dir, args.out)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from err
    log.info("wrote %s and %s", csv_path, png_path)
    print(Path(csv_path).read_text(), end="")


if __name__ == "__main__":
    main()
