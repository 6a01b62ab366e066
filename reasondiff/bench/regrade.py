"""How many verdicts the current grader changes on an existing bench run, per model and task.

    python -m reasondiff.bench.regrade outputs/<exp>/bench [--examples 3] [--json out.json]

Every row of the run's generations.jsonl (one per question × limit) is graded twice: once by the
frozen grader from before issue 13 (legacy_grading.py) and once by the current one (grading.py
through scoring.py, told whether each prefix finished). For each model and task the script prints
how many rows changed verdict and in which direction, the accuracy under each grader, and examples
of changed rows. Nothing is written into the run.

Rows written before rows recorded `finished`, `thinking_opened` and `reference` are handled as
follows. `finished` is inferred from the token counts (scoring.infer_finished), and is exact except
for a prefix of exactly the largest limit, which is taken as unfinished. `thinking_opened` is taken
as false: prefix runs did not open the thinking unless `bench.start_thinking` was set. The gold
answers are reloaded from the datasets in the run's `.hydra/config.yaml`; relative paths are
resolved against `--root`, the directory the run was started from. Old forced-mode rows came from
a different procedure, so a changed verdict there also reflects that procedure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reasondiff.bench import legacy_grading, scoring
from reasondiff.bench.grading import DEFAULT_ANSWER_DELIMITER, DEFAULT_THINK_DELIMITER
from reasondiff.core.errors import UserError


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The run's rows, the last one winning per (model, task, id, limit) as in a resumed sweep."""
    latest: dict[tuple, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                latest[(row["model"], row["task"], row["id"], row["limit"])] = row
    return list(latest.values())


def references_from_run(run_dir: Path, root: Path, tasks: Iterable[str]) -> dict[tuple[str, str], Any]:
    """{(task, id): gold} reloaded with the run's own data settings (path, split, limit, seed)."""
    from omegaconf import OmegaConf

    from reasondiff.bench.prompts import load_questions
    from reasondiff.config.bench import BenchConfig, TaskData

    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir}: rows carry no gold answers and there is no .hydra/config.yaml to reload them from")
    node = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)["bench"]
    tasks = sorted(set(tasks))
    data = {}
    for task in tasks:
        entry = dict(node["data"][task])
        path = Path(entry["path"])
        if not path.is_absolute() and (root / path).exists():
            entry["path"] = str(root / path)
        data[task] = TaskData(path=entry["path"], config_name=entry.get("config_name"), split=entry.get("split", "test"))
    bench = BenchConfig(tasks=tasks, data=data, limit=node.get("limit"), seed=node.get("seed", 0))
    return {(task, q.id): q.reference for task in tasks for q in load_questions(task, bench)}


def compare(rows: Sequence[dict[str, Any]], references: dict[tuple[str, str], Any], *,
            think_delimiter: str = DEFAULT_THINK_DELIMITER,
            answer_delimiter: str = DEFAULT_ANSWER_DELIMITER) -> list[dict[str, Any]]:
    """Per row: the old and the new answer and verdict."""
    inferred = scoring.infer_finished([r for r in rows if "finished" not in r])
    out = []
    for row in rows:
        reference = row["reference"] if "reference" in row else references.get((row["task"], row["id"]))
        finished = row["finished"] if "finished" in row else inferred[(row["model"], row["task"], row["id"], row["limit"])]
        new = scoring.score(row["task"], row["completion"], reference, finished=finished,
                            thinking_opened=bool(row.get("thinking_opened", False)), protocol=row.get("protocol", "chat"),
                            think_delimiter=think_delimiter, answer_delimiter=answer_delimiter)
        out.append({"model": row["model"], "task": row["task"], "id": row["id"], "limit": row["limit"],
                    "finished": finished, "completion": row["completion"], "reference": reference,
                    "old_answer": legacy_grading.extract_answer(row["task"], row["completion"],
                                                                answer_delimiter=answer_delimiter),
                    "old_correct": legacy_grading.grade(row["task"], row["completion"], reference,
                                                        answer_delimiter=answer_delimiter),
                    "new_answer": new["answer"], "new_source": new["answer_source"], "new_correct": new["correct"]})
    return out


def summarize(compared: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, task): rows, changed verdicts (each direction), accuracy under each grader."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in compared:
        groups[(row["model"], row["task"])].append(row)
    table = []
    for (model, task), members in sorted(groups.items()):
        changed = [r for r in members if r["old_correct"] != r["new_correct"]]
        table.append({
            "model": model, "task": task, "rows": len(members),
            "questions": len({r["id"] for r in members}),
            "changed": len(changed),
            "wrong_to_right": sum(r["new_correct"] for r in changed),
            "right_to_wrong": sum(r["old_correct"] for r in changed),
            "questions_changed": len({r["id"] for r in changed}),
            "answer_changed": sum(str(r["old_answer"]) != str(r["new_answer"]) for r in members),
            "old_accuracy": round(100.0 * sum(r["old_correct"] for r in members) / len(members), 2),
            "new_accuracy": round(100.0 * sum(r["new_correct"] for r in members) / len(members), 2),
        })
    return table


def report(compared: Sequence[dict[str, Any]], *, examples: int = 3, tail: int = 220) -> str:
    table = summarize(compared)
    lines = ["| model | task | rows (questions) | verdicts changed | wrong→right | right→wrong | questions changed | "
             "old acc. (%) | new acc. (%) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        lines.append(f"| {t['model']} | {t['task']} | {t['rows']} ({t['questions']}) | {t['changed']} | "
                     f"{t['wrong_to_right']} | {t['right_to_wrong']} | {t['questions_changed']} | "
                     f"{t['old_accuracy']:.1f} | {t['new_accuracy']:.1f} |")
    for t in table:
        changed = [r for r in compared if (r["model"], r["task"]) == (t["model"], t["task"])
                   and r["old_correct"] != r["new_correct"]]
        if not changed or examples <= 0:
            continue
        lines += ["", f"### {t['model']} / {t['task']}: {len(changed)} changed, e.g."]
        for r in changed[:examples]:
            text = r["completion"][-tail:].replace("\n", "⏎")
            lines.append(f"- id {r['id']} @ {r['limit']} ({'finished' if r['finished'] else 'cut off'}): old "
                         f"{r['old_answer']!r} {'✓' if r['old_correct'] else '✗'} → new {r['new_answer']!r} "
                         f"({r['new_source']}) {'✓' if r['new_correct'] else '✗'}; …{text}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reasondiff.bench.regrade", description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a bench output directory (or its generations.jsonl)")
    parser.add_argument("--examples", type=int, default=3, help="changed rows shown per model and task")
    parser.add_argument("--root", type=Path, default=Path.cwd(),
                        help="where the run was started from (relative dataset paths in its config)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-row comparison here")
    parser.add_argument("--answer-delimiter", default=DEFAULT_ANSWER_DELIMITER)
    parser.add_argument("--think-delimiter", default=DEFAULT_THINK_DELIMITER)
    args = parser.parse_args(argv)
    path = args.run / "generations.jsonl" if args.run.is_dir() else args.run
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    rows = read_rows(path)
    try:
        references = ({} if all("reference" in r for r in rows)
                      else references_from_run(path.parent, args.root, {r["task"] for r in rows}))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    compared = compare(rows, references, think_delimiter=args.think_delimiter, answer_delimiter=args.answer_delimiter)
    print(report(compared, examples=args.examples), end="")
    if args.json:
        args.json.write_text(json.dumps({"summary": summarize(compared), "rows": compared}, ensure_ascii=False,
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
