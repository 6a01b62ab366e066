"""The README's `make demo` numbers, written from a finished demo run's own files, never by hand.

    python -m reasondiff.tiny.demo_numbers [outputs/tiny] [--wall SECONDS] [--machine TEXT] [--readme README.md]

Reads each stage's manifest (wall time), the tiny base model's build record, the bench's
results.csv / summary.csv / generations.jsonl and analyze's ce_recovery.csv, and prints a Markdown
block; with --readme it replaces the block between the `demo-numbers` markers there (atomically).
`--wall` is the whole run's wall time as measured outside (e.g. `/usr/bin/time -v make demo`); the
stages' own times do not include start-up and imports.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path

from reasondiff.config import STAGES
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError

BEGIN = "<!-- demo-numbers:begin (written by `python -m reasondiff.tiny.demo_numbers`; do not edit by hand) -->"
END = "<!-- demo-numbers:end -->"
_BLOCK = re.compile(re.escape(BEGIN.split(" (")[0]) + r".*?" + re.escape(END), re.DOTALL)
TASK_NAMES = {"gsm8k": "gsm8k-like", "math500": "MATH-like", "boolq": "boolq-like"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Each stage's wall time from its manifest; a stage that has not finished is a UserError."""
    missing = [s for s in STAGES if not artifacts.is_complete(run_dir / s)]
    if missing:
        raise UserError(f"{run_dir}: stages not finished: {', '.join(missing)} (run `make demo` first)")
    return {s: float(artifacts.read_json(run_dir / s / "manifest.json")["wall_seconds"]) for s in STAGES}


def build_seconds(run_dir: Path) -> float | None:
    """How long the tiny base model took to build (None when its record is not there)."""
    record = run_dir.parent / "_tiny" / "base_model" / "pretraining.json"
    return float(artifacts.read_json(record)["seconds"]) if record.is_file() else None


def accuracy_table(run_dir: Path) -> str:
    """Accuracy (%) per task, model and token limit, with the scaling slope (Table 1's two numbers)."""
    results = _rows(run_dir / "bench" / "results.csv")
    summary = {(r["model"], r["task"]): r for r in _rows(run_dir / "bench" / "summary.csv")}
    limits = sorted({int(r["limit"]) for r in results})
    cells = {(r["model"], r["task"], int(r["limit"])): r for r in results}
    tasks = list(dict.fromkeys(r["task"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    n = {r["task"]: r["n"] for r in results}
    head = "| task (n) | model | " + " | ".join(f"limit {b}" for b in limits) + " | scaling (%/token) |"
    lines = [head, "|" + "---|" * (len(limits) + 3)]
    for task in tasks:
        for model in models:
            row = [f"{float(cells[model, task, b]['accuracy']):.1f}" if (model, task, b) in cells else "" for b in limits]
            slope = summary.get((model, task), {}).get("scaling", "")
            slope = f"{float(slope):+.3f}" if slope not in ("", "nan") else "n/a"
            lines.append(f"| {TASK_NAMES.get(task, task)} ({n[task]}) | {model} | " + " | ".join(row) + f" | {slope} |")
    return "\n".join(lines)


def base_answers(run_dir: Path, model: str = "base", task: str = "gsm8k") -> tuple[int, int, str, int]:
    """(questions, distinct final answers, most common answer, its count) of `model` on `task` at
    the largest limit: a base model that answers one constant is visible here."""
    rows = []
    with open(run_dir / "bench" / "generations.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            if row["model"] == model and row["task"] == task:
                rows.append(row)
    if not rows:
        return 0, 0, "", 0
    top = max(int(r["limit"]) for r in rows)
    answers = Counter(str(r["answer"]) for r in rows if int(r["limit"]) == top)
    common, count = answers.most_common(1)[0]
    return sum(answers.values()), len(answers), common, count


def paired_test(run_dir: Path, task: str = "gsm8k") -> str:
    """The tuned model against the base on `task`, each at its best limit, with McNemar's exact p
    (summary.csv); empty when the run has no paired comparison."""
    rows = {r["model"]: r for r in _rows(run_dir / "bench" / "summary.csv") if r["task"] == task}
    tuned, base = rows.get("tuned", {}), rows.get("base", {})
    if not tuned.get("mcnemar_p") or "performance" not in base:
        return ""
    return (f" On them the tuned model scores {float(tuned['performance']):.1f}% at its best limit against "
            f"{float(base['performance']):.1f}% (McNemar exact p = {float(tuned['mcnemar_p']):.2g}).")


def ce_recovered(run_dir: Path, text: str = "general", convention: str = "paper") -> dict[str, float]:
    """CE recovered per model on held-out `text` under `convention` (the paper's, for Table 2)."""
    rows = _rows(run_dir / "analyze" / "ce_recovery.csv")
    return {r["model"]: float(r["ce_recovered"]) for r in rows
            if r.get("text", text) == text and r.get("convention", convention) == convention}


def causal_test(run_dir: Path, task: str = "gsm8k") -> str:
    """intervene's headline in the demo's words: the best latent set ablated from the tuned model and patched
    into the base model, against a frequency-matched random set of the same size ("" before intervene ran)."""
    out = run_dir / "intervene"
    if not (out / "bench_intervened" / "format.csv").is_file():
        return ""
    best = artifacts.read_json(out / "manifest.json")["outputs"].get("best_selection") or {}
    fmt = {r["model"]: r for r in _rows(out / "bench_intervened" / "format.csv") if r["task"] == task}
    vs = {r["model"]: r for r in _rows(out / "bench_intervened" / "vs_clean.csv") if r["task"] == task}

    def said(model: str) -> str:
        f, v = fmt[model], vs.get(model, {})
        p = f", McNemar p = {float(v['mcnemar_p']):.2g}" if v.get("mcnemar_p") else ""
        return (f"opens the thinking on {float(f['opens_thinking']):.0f}% [{float(f['opens_thinking_low']):.0f}, "
                f"{float(f['opens_thinking_high']):.0f}] and scores {float(f['accuracy']):.1f}% "
                f"[{float(f['accuracy_low']):.1f}, {float(f['accuracy_high']):.1f}]{p}")

    if not {"tuned", "base", "tuned+ablate_set", "base+patch_set"} <= set(fmt):
        return ""
    text = (f" Causal test (`outputs/tiny/intervene/`, {fmt['tuned']['n']} {task}-like questions at limit "
            f"{fmt['tuned']['limit']}): the {best.get('size')} latents chosen by `{best.get('selection')}` close "
            f"{100 * float(best.get('value', float('nan'))):.1f}% [{100 * float(best.get('ci_low', float('nan'))):.1f}, "
            f"{100 * float(best.get('ci_high', float('nan'))):.1f}] of KL(base ‖ tuned) on reasoning text when "
            f"patched into the base model. Ablated from the tuned model, they leave a model that "
            f"{said('tuned+ablate_set')} (un-intervened: {said('tuned')})")
    if "tuned+ablate_random" in fmt:
        text += f"; a frequency-matched random set of the same size ablated instead: {said('tuned+ablate_random')}"
    text += f". Patched into the base model, the base {said('base+patch_set')} (un-intervened: {said('base')})"
    if "base+patch_random" in fmt:
        text += f"; the random set patched: {said('base+patch_random')}"
    return text + "."


def render(run_dir: Path, *, wall: float | None = None, machine: str | None = None) -> str:
    """The README block for the finished demo run in `run_dir`."""
    stages = stage_seconds(run_dir)
    build = build_seconds(run_dir)
    parts = [f"{s} {stages[s]:.0f} s" for s in STAGES]
    built = f" The tiny base model is not in these times: the demo copies the build shipped with the package " \
            f"(it took {build:.0f} s to build; `make tiny-base`)." if build is not None else ""
    where = f" on {machine}" if machine else ""
    total = f"{_minutes(wall)} in all" if wall is not None else \
        f"{_minutes(sum(stages.values()))} in the stages (start-up not counted)"
    n, distinct, common, count = base_answers(run_dir)
    ce = ce_recovered(run_dir)
    ce_text = ", ".join(f"{m} {v:.3f}" for m, v in ce.items())
    return "\n".join([
        BEGIN,
        f"Measured{where}: {total} ({'; '.join(parts)}).{built}",
        "Bench accuracy (%) per token limit, prefix scoring of one greedy generation (`outputs/tiny/bench/results.csv`):",
        "",
        accuracy_table(run_dir),
        "",
        f"The base model gives {distinct} different final answers to the {n} gsm8k-like questions (most "
        f"common: {common!s} × {count}).{paired_test(run_dir)} The crosscoder recovers {ce_text} of the CE loss on "
        f"held-out general text (the paper's convention).{causal_test(run_dir)}",
        END,
    ])


def patch_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    if not _BLOCK.search(text):
        raise UserError(f"{readme}: no demo-numbers block ({BEGIN.split(' (')[0]} ... {END}) to replace")
    artifacts.write_text(readme, _BLOCK.sub(lambda _: block, text, count=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default="outputs/tiny", type=Path)
    parser.add_argument("--wall", type=float, help="the whole run's wall time in seconds, measured outside")
    parser.add_argument("--machine", help="where it ran, e.g. 'a 2-core CPU shared with one other job'")
    parser.add_argument("--readme", type=Path, help="replace the demo-numbers block in this file")
    args = parser.parse_args(argv)
    try:
        block = render(args.run_dir, wall=args.wall, machine=args.machine)
        if args.readme:
            patch_readme(args.readme, block)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    print(block)


if __name__ == "__main__":
    main()
