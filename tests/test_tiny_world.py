"""The tiny world: its generated data holds the bench questions out of every training text, its
worked solutions are right and vary in length; on the cached trained pair it has the paper's shape
(the base answers at once and is often wrong but not constant, the tuned model thinks and gains
with the token limit); the README's demo numbers are rendered from a run's own files."""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from reasondiff.tiny import data as tiny_data

STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)\.")


def _jsonl(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def _bench_keys(directory: Path) -> set[tuple[int, ...]]:
    keys = set()
    for row in _jsonl(directory / "gsm8k.jsonl"):
        keys.add(tiny_data.question_key(row["question"]))
    for row in _jsonl(directory / "math500.jsonl"):
        keys.add(tiny_data.question_key(row["problem"]))
    for row in _jsonl(directory / "boolq.jsonl"):
        keys.add(tiny_data.question_key(f"{row['passage']}\n\nQuestion: {row['question']}?"))
    return keys


def _training_questions(directory: Path) -> list[str]:
    """Every question a training text asks: the SFT rows' user turns, the corpus's worked solutions
    and its chat turns."""
    questions = [row["question"] for row in _jsonl(directory / "s1k.jsonl")]
    for row in _jsonl(directory / "corpus.jsonl"):
        questions += re.findall(r"Question: (.*?) Solution:", row["text"], re.DOTALL)
        questions += re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", row["text"], re.DOTALL)
    return questions


def test_bench_questions_are_held_out_of_every_training_text(tiny_world):
    bench = _bench_keys(tiny_world)
    training = _training_questions(tiny_world)
    assert len(training) > 300
    # the instructions of the bench's prompts carry no digits, so a key is the problem's numbers alone
    shared = [q for q in training if tiny_data.question_key(q) in bench]
    assert not shared, shared[:3]


def test_the_held_out_check_would_catch_a_leak(tiny_world):
    """A training question with a bench question's numbers is found by the same check."""
    row = _jsonl(tiny_world / "gsm8k.jsonl")[0]
    assert tiny_data.question_key(row["question"]) in _bench_keys(tiny_world)


def test_worked_solutions_are_right_and_counts_stay_one_digit():
    held = tiny_data.held_out_problems(seed=0, n_eval=60)
    for task, problems in held.items():
        assert len({tiny_data.question_key(p.user_text) for p in problems}) == len(problems), task
        for p in problems:
            steps = STEP.findall(p.thinking)
            assert steps, p.thinking
            for x, op, y, z in steps:
                assert int(z) == (int(x) + int(y) if op == "+" else int(x) - int(y))
                assert all(tiny_data.MIN_COUNT <= int(v) <= tiny_data.MAX_COUNT for v in (x, z))
            amounts = [int(y) for _, _, y, _ in steps]
            assert len(set(amounts)) == len(amounts)  # each change is named once in the question
            for (_, _, _, z), (x, _, _, _) in zip(steps, steps[1:], strict=False):
                assert z == x  # each step starts from the last one's result
            if task == "boolq":
                assert p.thinking.endswith(f"? {p.answer_text}.")
                assert ("more" in p.question) == (" more than " in p.thinking)  # the question's relation
            else:
                assert int(steps[-1][3]) == p.answer


def test_gsm8k_traces_take_one_to_five_steps_so_longer_limits_finish_more():
    problems = tiny_data.held_out_problems(seed=0, n_eval=100)["gsm8k"]
    counts = Counter(len(STEP.findall(p.thinking)) for p in problems)
    assert set(counts) == set(tiny_data.GSM8K_STEPS)
    assert max(counts.values()) < 0.5 * len(problems)


def test_boolq_answers_are_balanced_and_need_the_computation():
    problems = tiny_data.held_out_problems(seed=0, n_eval=100)["boolq"]
    yes = sum(p.answer for p in problems)
    assert 30 <= yes <= 70
    # the start count alone does not decide it: it agrees with the answer no more often than chance allows
    by_start = sum((int(STEP.findall(p.thinking)[0][0]) > int(re.search(r"has (\d+) \w+\.", p.passage).group(1)))
                   == (("more" in p.question) == p.answer) for p in problems)
    assert by_start < 80


def test_the_datasets_are_reproducible(tmp_path):
    a = tiny_data.write_tiny_datasets(tmp_path / "a", seed=3, n_corpus=20, n_s1k=9, n_eval=5)
    b = tiny_data.write_tiny_datasets(tmp_path / "b", seed=3, n_corpus=20, n_s1k=9, n_eval=5)
    for name in a:
        assert a[name].read_text() == b[name].read_text(), name
    assert len(_jsonl(a["s1k"])) == 9 and len(_jsonl(a["gsm8k"])) == 5


def test_s1k_rows_are_the_bench_prompt_with_the_worked_solution():
    problem = tiny_data.ProblemSource(random.Random(0), set()).draw("gsm8k")
    row = tiny_data.s1k_row(problem)
    assert row["question"] == tiny_data.user_turn(problem)
    assert "Please reason step by step" in row["question"]
    assert row["deepseek_thinking_trajectory"] == problem.thinking
    assert row["deepseek_attempt"] == f"{problem.answer}. $\\boxed{{{problem.answer}}}$"


# --- the shipped base model --------------------------------------------------------------------------

def test_the_shipped_base_model_is_built_from_the_current_recipe():
    """A recipe (or generator, with its version bump) changed without `python -m reasondiff.tiny.build`
    would leave the demo on a model the code no longer makes: fail here instead."""
    from reasondiff.core import artifacts
    from reasondiff.tiny.model import BUILD_FILE, SHIPPED_BASE, TinyRecipe

    assert artifacts.is_complete(SHIPPED_BASE), "reasondiff/tiny/base_model/ is missing or unfinished"
    build = artifacts.read_json(SHIPPED_BASE / BUILD_FILE)
    assert build["fingerprint"] == TinyRecipe().fingerprint(), \
        "TinyRecipe changed: rebuild the shipped tiny base with `make tiny-base`"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "pretraining.json"):
        assert (SHIPPED_BASE / name).is_file(), name


def test_the_shipped_tokenizer_is_the_one_the_recipe_trains():
    """The tokenizer is trained on the generator's text: a generator change without a version bump
    shows up here as a different vocabulary."""
    from transformers import AutoTokenizer

    from reasondiff.tiny.model import SHIPPED_BASE, TinyRecipe, make_tokenizer, tokenizer_training_texts

    recipe = TinyRecipe()
    fresh = make_tokenizer(tokenizer_training_texts(recipe.seed), vocab_size=recipe.vocab_size)
    assert AutoTokenizer.from_pretrained(SHIPPED_BASE).get_vocab() == fresh.get_vocab()


def test_ensure_tiny_world_copies_the_shipped_base_and_rebuilds_for_another_recipe(tmp_path, monkeypatch):
    from reasondiff.tiny import model as tiny_model

    built = []
    monkeypatch.setattr(tiny_model, "build_base_model", lambda directory, *_: built.append(directory))
    monkeypatch.setattr(tiny_model, "write_recipe_datasets", lambda directory, recipe: None)
    target = tmp_path / "_tiny" / "base_model"
    tiny_model.ensure_tiny_world(target)
    assert not built and (target / "model.safetensors").read_bytes() == \
        (tiny_model.SHIPPED_BASE / "model.safetensors").read_bytes()
    other = tiny_model.TinyRecipe(seed=1)
    tiny_model.ensure_tiny_world(tmp_path / "other" / "base_model", recipe=other)
    assert built == [tmp_path / "other" / "base_model"]


# --- the README's demo numbers ----------------------------------------------------------------------

def _fake_demo_run(root: Path) -> Path:
    """A finished demo run's files, as the stages write them, with known numbers."""
    from reasondiff.core import artifacts
    from reasondiff.tiny import demo_numbers

    run = root / "tiny"
    for i, stage in enumerate(demo_numbers.STAGES):
        artifacts.write_json(run / stage / "manifest.json", {"wall_seconds": 10.0 + i})
        artifacts.mark_complete(run / stage)
    artifacts.write_json(root / "_tiny" / "base_model" / "pretraining.json", {"seconds": 61.0})
    rows = [("base", 16, 10.0), ("base", 80, 10.0), ("tuned", 16, 0.0), ("tuned", 80, 62.5)]
    with open(run / "bench" / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "task", "limit", "accuracy", "n"])
        writer.writerows([(m, "gsm8k", b, a, 40) for m, b, a in rows])
    with open(run / "bench" / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "task", "performance", "scaling", "mcnemar_p"])
        writer.writerows([("base", "gsm8k", 10.0, 0.0, ""), ("tuned", "gsm8k", 62.5, 0.976, 0.00012)])
    with open(run / "bench" / "generations.jsonl", "w") as handle:
        for i in range(40):
            for limit in (16, 80):
                handle.write(json.dumps({"model": "base", "task": "gsm8k", "limit": limit, "answer": str(i % 4)}) + "\n")
    with open(run / "analyze" / "ce_recovery.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "convention", "model", "ce_recovered"])
        writer.writerows([("general", "paper", "base", 0.99), ("general", "sink_preserving", "base", 0.5),
                          ("reasoning", "paper", "base", 0.1), ("general", "paper", "tuned", 0.95)])
    return run


def test_demo_numbers_come_from_the_run_files_and_replace_only_their_block(tmp_path):
    from reasondiff.tiny import demo_numbers

    run = _fake_demo_run(tmp_path)
    block = demo_numbers.render(run, wall=185, machine="a test machine")
    assert "3 min 05 s in all" in block and "it took 61 s to build" in block and "analyze 15 s" in block
    # without --wall: the stages' own times (10..16 s), never the base model's build the text leaves out
    assert "1 min 31 s in the stages" in demo_numbers.render(run) and "intervene 16 s" in block
    assert "| gsm8k-like (40) | tuned | 0.0 | 62.5 | +0.976 |" in block
    assert "4 different final answers to the 40" in block and "× 10" in block
    assert "scores 62.5% at its best limit against 10.0% (McNemar exact p = 0.00012)" in block
    assert "base 0.990, tuned 0.950" in block  # held-out general text, paper convention only
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{demo_numbers.BEGIN}\nold numbers\n{demo_numbers.END}\nafter\n")
    demo_numbers.patch_readme(readme, block)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old numbers" not in text
    demo_numbers.patch_readme(readme, block)  # idempotent
    assert readme.read_text() == text


def test_demo_numbers_refuse_an_unfinished_run_and_a_readme_without_the_block(tmp_path):
    from reasondiff.core import artifacts
    from reasondiff.core.errors import UserError
    from reasondiff.tiny import demo_numbers

    run = _fake_demo_run(tmp_path)
    artifacts.clear_complete(run / "train")
    with pytest.raises(UserError, match="stages not finished: train"):
        demo_numbers.render(run)
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    with pytest.raises(UserError, match="no demo-numbers block"):
        demo_numbers.patch_readme(readme, "x")


# --- the paper's shape, on the cached trained pair ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bench(trained_tiny_pair, tmp_path_factory) -> Path:
    """The demo's bench (its prompts, token limits and held-out gsm8k-like questions) on the trained pair."""
    from conftest import make_config

    from reasondiff.app.stage import run_stage

    base, tuned = trained_tiny_pair
    data = base.parent / "data" / "gsm8k.jsonl"
    out = tmp_path_factory.mktemp("tiny_bench")
    cfg = make_config("+exp=tiny", f"output_root={out}", f"model.path={base}", "model.build_tiny=false",
                      f"tuned_model={tuned}", "bench.tasks=[gsm8k]", f"bench.data.gsm8k.path={data}",
                      "bench.limit=40", config_name="bench")
    return run_stage(cfg)


def _accuracy(bench_dir: Path) -> dict[str, dict[int, float]]:
    with open(bench_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        out.setdefault(row["model"], {})[int(row["limit"])] = float(row["accuracy"])
    return out


def test_the_tiny_base_answers_at_once(tiny_bench):
    """Nearly always within 16 tokens (`The answer is $\\boxed{7}$.`); now and then it loses the thread
    after `\\boxed{` and writes worked solutions instead, as a base model does."""
    rows = [json.loads(line) for line in open(tiny_bench / "generations.jsonl")]
    base = [r for r in rows if r["model"] == "base"]
    at_once = [r for r in base if r["finished"] and r["tokens"] <= 16 and r["answer"] is not None]
    assert base and len(at_once) >= 0.9 * len(base)


def test_the_tiny_base_is_often_wrong_and_not_one_constant(tiny_bench):
    rows = [json.loads(line) for line in open(tiny_bench / "generations.jsonl")]
    base = [r for r in rows if r["model"] == "base" and r["limit"] == max(r["limit"] for r in rows)]
    answers = Counter(r["answer"] for r in base if r["answer"] is not None)
    assert len(answers) >= 4 and answers.most_common(1)[0][1] <= 0.5 * len(base), answers
    assert sum(r["correct"] for r in base) <= 0.5 * len(base)


def test_the_tiny_tuned_model_thinks_and_gains_with_the_limit(tiny_bench):
    """More of its traces finish, and are scored, as the limit grows; the base's direct answers are flat."""
    rows = [json.loads(line) for line in open(tiny_bench / "generations.jsonl")]
    tuned = [r for r in rows if r["model"] == "tuned"]
    assert all(r["completion"].startswith("<|im_start|>think\n") for r in tuned)
    finished = Counter(r["limit"] for r in tuned if r["finished"])
    limits = sorted({r["limit"] for r in tuned})
    assert [finished[b] for b in limits] == sorted(finished[b] for b in limits) and finished[limits[0]] == 0
    accuracy = _accuracy(tiny_bench)
    assert accuracy["tuned"][limits[-1]] > accuracy["tuned"][limits[0]], accuracy
    assert len(set(accuracy["base"].values())) == 1, accuracy
    with open(tiny_bench / "summary.csv", newline="") as handle:
        scaling = {r["model"]: float(r["scaling"]) for r in csv.DictReader(handle) if r["task"] == "gsm8k"}
    assert scaling["tuned"] > 0 and scaling["tuned"] > scaling["base"], scaling


def test_the_tiny_tuned_model_beats_the_base_at_the_top_limit(tiny_bench):
    accuracy = _accuracy(tiny_bench)
    top = max(accuracy["tuned"])
    assert accuracy["tuned"][top] > accuracy["base"][top] + 10, accuracy
