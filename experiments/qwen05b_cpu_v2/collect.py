"""Copy what the write-up cites from a finished v2 run into this folder (figures/, results/).

    python experiments/qwen05b_cpu_v2/collect.py outputs/qwen05b_cpu_v2 [OUT_DIR]   (default: this folder)

The run's own directory is the source of truth: every number in README.md is a file there, copied
here unchanged (the stages write their tables as CSV and Markdown and their figures as PNG/PDF). Runs
are the stage directories and their siblings (`train@shared`, `analyze@shared`, `bench@forced`, see
README.md). Besides copying, this script
- regrades the bench's generations with the frozen pre-issue-13 grader (`reasondiff.bench.regrade`)
  and keeps its report, the count of verdicts the new grader changed;
- writes stage_times.csv from each run's manifest.json (wall seconds, commit);
- writes results/tables.md: the README's tables (Table 1 over both bench runs, Table 2 of each
  crosscoder, the plain vs designated-shared comparison), generated from the copied CSVs.
Large per-row files (generations.jsonl, latents.csv) stay in the run; the model-specific rows of
latents.csv are kept.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SMALL = (".csv", ".md", ".json", ".png", ".pdf")
SKIP = {"latents.csv", "fingerprint.json", "manifest.json", "store.json", "metrics.csv.bak"}
MAX_BYTES = 2_000_000


def runs(run_dir: Path) -> list[Path]:
    """Every finished stage directory of the experiment, main runs and siblings, in pipeline order."""
    order = ("finetune", "bench", "harvest", "scan", "train", "analyze")
    found = [d for d in run_dir.iterdir() if d.is_dir() and (d / "COMPLETED").is_file()]
    return sorted(found, key=lambda d: (order.index(d.name.split("@")[0]) if d.name.split("@")[0] in order else 99,
                                        d.name))


def copy_small_files(run: Path, out_dir: Path) -> list[Path]:
    written = []
    for source in sorted(run.iterdir()):
        if not source.is_file() or source.suffix not in SMALL or source.name in SKIP:
            continue
        if source.stat().st_size > MAX_BYTES:
            print(f"too large to keep here, stays in the run: {source}", file=sys.stderr)
            continue
        kind = "figures" if source.suffix in (".png", ".pdf") else "results"
        target = out_dir / kind / f"{run.name}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    return written


def model_specific_latents(run: Path, out_dir: Path) -> list[Path]:
    source = run / "latents.csv"
    if not source.is_file():
        return []
    with open(source, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row.get("class") in ("base_only", "tuned_only")]
        columns = reader.fieldnames or []
    target = out_dir / "results" / f"{run.name}_model_specific_latents.csv"
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return [target]


def regrade(run: Path, out_dir: Path) -> list[Path]:
    """The old grader vs the new one on this bench run's generations (its printed report, kept)."""
    from reasondiff.bench import regrade as regrade_module

    report, summary = out_dir / "results" / f"{run.name}_regrade.txt", out_dir / "results" / f"{run.name}_regrade.json"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        regrade_module.main([str(run), "--examples", "3", "--root", str(REPO), "--json", str(summary)])
    report.write_text(buffer.getvalue(), encoding="utf-8")
    return [report, summary]


def stage_times(found: list[Path], out_dir: Path) -> Path:
    rows = []
    for run in found:
        manifest = json.loads((run / "manifest.json").read_text())
        rows.append({"run": run.name, "wall_seconds": round(manifest.get("wall_seconds", float("nan")), 1),
                     "finished_at": manifest.get("finished_at"), "git_commit": manifest.get("git_commit")})
    target = out_dir / "results" / "stage_times.csv"
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["run", "wall_seconds", "finished_at", "git_commit"])
        writer.writeheader()
        writer.writerows(rows)
    return target


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _f(value: str, digits: int = 1, scale: float = 1.0) -> str:
    return "—" if value in ("", None) else f"{float(value) * scale:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) if rows else ""


def table1(run_dir: Path) -> str:
    """Accuracy per limit with Wilson intervals, performance and scaling with bootstrap intervals,
    the paired test: every bench run of the experiment."""
    out = []
    for bench in sorted(run_dir.glob("bench*")):
        results, summary = _read(bench / "results.csv"), _read(bench / "summary.csv")
        if not results:
            continue
        limits = sorted({int(r["limit"]) for r in results})
        rows = []
        for s in summary:
            cells = {int(r["limit"]): r for r in results if r["model"] == s["model"] and r["task"] == s["task"]}
            acc = [f"{_f(cells[k]['accuracy'])} [{_f(cells[k]['accuracy_low'], 0)}, {_f(cells[k]['accuracy_high'], 0)}]"
                   for k in limits]
            paired = (f"{float(s['performance_diff']):+.1f} pts, McNemar p = {float(s['mcnemar_p']):.2f} "
                      f"({s['only_this']} vs {s['only_other']} discordant)") if s.get("mcnemar_p") else ""
            rows.append([s["model"], s["task"], s["n"], *acc,
                         f"{_f(s['performance'])} [{_f(s['performance_low'])}, {_f(s['performance_high'])}]",
                         f"{_f(s['scaling'], 3)} [{_f(s['scaling_low'], 3)}, {_f(s['scaling_high'], 3)}]",
                         cells[limits[-1]]["no_answer"], paired])
        out.append(f"**{bench.name}** (accuracy % [95% Wilson]; performance [95% bootstrap]; scaling in %/token "
                   f"[95% bootstrap] over the limits {'/'.join(map(str, limits))})\n\n" + _table(
                       ["model", "task", "n", *[f"@{k}" for k in limits], "performance", "scaling",
                        f"no answer @{limits[-1]}", "tuned − base (paired)"], rows))
    return "\n\n".join(out)


def table2(run_dir: Path) -> str:
    """CE recovered, ΔCE and KL under both conventions, general and reasoning text, every analyze run."""
    out = []
    for analyze in sorted(run_dir.glob("analyze*")):
        rows = []
        for r in _read(analyze / "ce_recovery.csv"):
            rows.append([r["text"], r["convention"], r["model"],
                         f"{_f(r['ce_recovered'], 1, 100)}% [{_f(r['ce_recovered_ci_low'], 1, 100)}, "
                         f"{_f(r['ce_recovered_ci_high'], 1, 100)}]",
                         _f(r["ce_clean"], 3), _f(r["ce_zero_ablation"], 2), _f(r["ce_spliced"], 3),
                         f"{_f(r['delta_ce'], 3)} [{_f(r['delta_ce_ci_low'], 3)}, {_f(r['delta_ce_ci_high'], 3)}]",
                         f"{_f(r['kl_spliced'], 3)} [{_f(r['kl_spliced_ci_low'], 3)}, {_f(r['kl_spliced_ci_high'], 3)}]",
                         _f(r["kl_zero_ablation"], 2), r["n_tokens"], r["n_contexts"]])
        if rows:
            out.append(f"**{analyze.name}**\n\n" + _table(
                ["text", "convention", "model", "CE recovered [95% CI]", "CE clean", "CE zero-abl.", "CE spliced",
                 "ΔCE (nats) [95% CI]", "KL spliced (nats) [95% CI]", "KL zero-abl.", "predictions", "contexts"], rows))
    return "\n\n".join(out)


def _count(counts: dict[str, dict[str, str]], name: str, column: str = "n_latents") -> str:
    return counts[name][column] if name in counts and counts[name].get(column) not in (None, "") else "—"


def crosscoders(run_dir: Path) -> str:
    """Each crosscoder's fit (train's held-out summary, analyze's reconstruction) and latent classes."""
    rows = []
    for train in sorted(run_dir.glob("train*")):
        summary_path = train / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        config = json.loads((train / "config.json").read_text()) if (train / "config.json").is_file() else {}
        analyze = run_dir / train.name.replace("train", "analyze", 1)
        counts = {r["class"]: r for r in _read(analyze / "class_counts.csv")}

        recon = {(r["text"], r["model"]): r for r in _read(analyze / "reconstruction.csv")}
        ev = "/".join(_f(recon[(t, m)]["explained_variance"], 3) for t in ("general",) for m in ("base", "tuned")
                      if (t, m) in recon) or "—"
        rows.append([train.name, str(len(config.get("designated_shared_latents", []) or [])),
                     _f(summary.get("l0"), 1), f"{summary['explained_variance_base']:.3f}/{summary['explained_variance_tuned']:.3f}",
                     ev, _f(summary.get("frac_dead"), 2, 100) + "%",
                     _count(counts, "base_only"), _count(counts, "tuned_only"), _count(counts, "shared"), _count(counts, "other"),
                     _count(counts, "designated_shared"), _count(counts, "base_only", "n_latents_delta"), _count(counts, "tuned_only", "n_latents_delta")])
    return _table(["crosscoder", "designated shared", "L0 (held-out shard)", "EV base/tuned (held-out shard)",
                   "EV base/tuned (analyze, wiki)", "dead", "base-only (r)", "tuned-only (r)", "shared (r)", "other (r)",
                   "designated", "base-only (Δ)", "tuned-only (Δ)"], rows)


def tables(run_dir: Path, out_dir: Path) -> Path:
    text = ("# Tables of the v2 run (generated by collect.py from outputs/qwen05b_cpu_v2)\n\n"
            "## Table 1 analogue\n\n" + table1(run_dir) + "\n\n## Table 2 analogue\n\n" + table2(run_dir)
            + "\n\n## Crosscoders\n\n" + crosscoders(run_dir) + "\n")
    target = out_dir / "results" / "tables.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def regrade_bench(run: Path, out_dir: Path) -> list[Path]:
    """v2's step for each run: a bench run's generations regraded (`regrade`); nothing for other runs."""
    if run.name.split("@")[0] == "bench" and (run / "generations.jsonl").is_file():
        return regrade(run, out_dir)
    return []


Step = Callable[[Path, Path], list[Path]]
"""What an edition does with one finished run (`run`, `out_dir`) besides copying it; returns what it wrote."""


def collect(run_dir: Path, out_dir: Path = HERE, steps: Sequence[Step] = (regrade_bench,),
            write_tables: Callable[[Path, Path], Path] = tables) -> list[Path]:
    """Every finished run's small files and model-specific latents, then each of `steps` on the run, then
    stage_times.csv and `write_tables` (tables.md). Another edition passes its own steps and tables."""
    found = runs(run_dir)
    if not found:
        sys.exit(f"{run_dir}: no finished stage")
    written = []
    for run in found:
        written += copy_small_files(run, out_dir)
        written += model_specific_latents(run, out_dir)
        for step in steps:
            written += step(run, out_dir)
    written.append(stage_times(found, out_dir))
    written.append(write_tables(run_dir, out_dir))
    return written


def main(argv: list[str], usage: str = __doc__, default_out: Path = HERE, **editions) -> None:
    """`collect.py RUN_DIR [OUT_DIR]`: collect (with an edition's `steps` and `write_tables`) and print what it
    wrote; the usage (`usage`, the script's docstring) on wrong arguments."""
    if len(argv) not in (2, 3):
        sys.exit(usage)
    sys.path.insert(0, str(REPO))
    for path in collect(Path(argv[1]), Path(argv[2]).resolve() if len(argv) == 3 else default_out, **editions):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    main(sys.argv)
