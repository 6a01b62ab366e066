"""Copy what the write-up cites from a finished run into this folder (figures/, results/).

    python experiments/qwen05b_cpu/collect.py outputs/qwen05b_cpu [OUT_DIR]   (default: this folder)

The run's own directory is the source of truth (every number here is a file there); this keeps the
small, citable part under version control: the PNGs, the result tables and each stage's wall time.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("finetune", "bench", "harvest", "train", "analyze")
FIGURES = {
    "finetune": ["loss_curve.png"],
    "bench": ["accuracy_vs_limit.png", "time_vs_limit.png"],
    "analyze": ["relative_norm_hist.png", "cosine_hist.png", "latent_scaling.png"],
}
TABLES = {
    "finetune": ["metrics.csv", "samples.json", "length_report.json"],
    "bench": ["summary.csv", "results.csv"],
    "train": ["metrics.csv"],
    "analyze": ["ce_recovery.csv", "reconstruction.csv", "class_counts.csv", "class_frequency.csv",
                "latent_scaling_summary.csv"],
}


def collect(run_dir: Path, out_dir: Path = HERE) -> list[Path]:
    missing = [s for s in STAGES if not (run_dir / s / "COMPLETED").is_file()]
    if missing:
        sys.exit(f"{run_dir}: stages not finished: {', '.join(missing)}")
    written = []
    for kind, table in (("figures", FIGURES), ("results", TABLES)):
        for stage, names in table.items():
            for name in names:
                source = run_dir / stage / name
                if not source.is_file():  # e.g. no Latent Scaling plot when no latent is model-specific
                    print(f"not in this run: {source}", file=sys.stderr)
                    continue
                target = out_dir / kind / (name if kind == "figures" else f"{stage}_{name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                written.append(target)
    # latents.csv has a row per latent (~1 MB); keep the model-specific ones, the ones the write-up reads
    with open(run_dir / "analyze" / "latents.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        specific = [row for row in reader if row["class"] in ("base_only", "tuned_only")]
        columns = reader.fieldnames
    target = out_dir / "results" / "analyze_model_specific_latents.csv"
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(specific)
    written.append(target)
    rows = []
    for stage in STAGES:
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        rows.append({"stage": stage, "wall_seconds": round(manifest["wall_seconds"], 1),
                     "finished_at": manifest["finished_at"], "git_commit": manifest.get("git_commit")})
    target = out_dir / "results" / "stage_times.csv"
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    for path in collect(Path(sys.argv[1]), Path(sys.argv[2]).resolve() if len(sys.argv) == 3 else HERE):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
