"""Text the project generates itself for the offline demo: a small world of arithmetic, comparisons
and everyday sentences, written out in the schemas of the real datasets (s1K-1.1, gsm8k,
MATH-500, boolq, a Pile-like `text` corpus) so every stage's real loading code runs on it.

The base model sees questions followed by short, direct answers; the s1K-style rows add a
step-by-step thinking trace. Fine-tuning therefore changes something visible: the tuned model
starts to think before it answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "marbles", "cards", "eggs", "cups"]
PLACES = ["the market", "the school", "the park", "the library", "the station", "the farm", "the shop"]
ADJECTIVES = ["small", "red", "quiet", "old", "bright", "heavy", "round", "busy", "cold", "green"]
NOUNS = ["river", "house", "tree", "road", "cat", "train", "garden", "window", "bridge", "lamp"]
VERBS = ["sees", "finds", "passes", "likes", "follows", "paints", "moves", "opens", "watches", "fixes"]


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."
    if kind == 1:
        return f"{rng.choice(NAMES)} went to {rng.choice(PLACES)} with {rng.randint(2, 9)} {rng.choice(ITEMS)}."
    if kind == 2:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return f"{a} plus {b} is {a + b}."
    a, b = rng.randint(1, 30), rng.randint(1, 30)
    word = "greater than" if a > b else ("less than" if a < b else "equal to")
    return f"{a} is {word} {b}."


def general_text(rng: random.Random, n_sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(n_sentences))


def word_problem(rng: random.Random) -> dict:
    """A gsm8k-shaped problem with its worked answer and thinking steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 15), rng.randint(2, 15), rng.randint(1, 9)
    total = a + b - c if a + b > c else a + b + c
    op = "gives away" if a + b > c else "finds"
    question = (f"{name} has {a} {item}. {name} buys {b} more {item} and then {op} {c}. "
                f"How many {item} does {name} have now?")
    sign = "-" if op == "gives away" else "+"
    steps = [f"{name} starts with {a} {item}.", f"After buying {b} more: {a} + {b} = {a + b}.",
             f"Then {name} {op} {c}: {a + b} {sign} {c} = {total}."]
    return {"question": question, "steps": steps, "answer": total}


def expression_problem(rng: random.Random) -> dict:
    a, b, c = rng.randint(2, 12), rng.randint(2, 9), rng.randint(2, 9)
    value = a + b * c
    return {"problem": f"Compute ${a} + {b} \\times {c}$.", "steps": [f"First {b} \\times {c} = {b * c}.",
            f"Then {a} + {b * c} = {value}."], "answer": value}


def comparison_question(rng: random.Random) -> dict:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    while a == b:
        b = rng.randint(1, 50)
    return {"question": f"is {a} greater than {b}", "answer": a > b,
            "passage": f"The number {a} and the number {b} are compared. {a} is {'greater' if a > b else 'less'} than {b}."}


def chat_exchange(rng: random.Random) -> str:
    """A ChatML turn pair in which the assistant answers *directly* (no thinking), with the bench
    prompts' wording: what an instruct base model does before reasoning fine-tuning."""
    from reasondiff.config.bench import PromptTemplates

    prompts = PromptTemplates()
    kind = rng.randrange(3)
    if kind == 0:
        p = word_problem(rng)
        user, answer = prompts.gsm8k.replace("{question}", p["question"]), f"The answer is $\\boxed{{{p['answer']}}}$."
    elif kind == 1:
        p = expression_problem(rng)
        user, answer = prompts.math500.replace("{problem}", p["problem"]), f"The answer is $\\boxed{{{p['answer']}}}$."
    else:
        q = comparison_question(rng)
        template = prompts.boolq if rng.random() < 0.5 else prompts.boolq_no_passage
        user = template.replace("{passage}", q["passage"]).replace("{question}", q["question"])
        answer = f"Answer: {'yes' if q['answer'] else 'no'}"
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"


def base_training_text(rng: random.Random) -> str:
    """Pretraining document for the tiny base model: prose, direct question/answer pairs, and
    chat turns answered directly (so the base model follows the bench prompts, without thinking)."""
    if rng.random() < 0.3:
        return "".join(chat_exchange(rng) for _ in range(rng.randint(1, 3)))
    parts = [general_text(rng, rng.randint(3, 8))]
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(3)
        if kind == 0:
            p = word_problem(rng)
            parts.append(f"Question: {p['question']} Answer: {p['answer']}.")
        elif kind == 1:
            p = expression_problem(rng)
            parts.append(f"Question: {p['problem']} Answer: ${p['answer']}$.")
        else:
            q = comparison_question(rng)
            parts.append(f"Question: {q['question']}? Answer: {'yes' if q['answer'] else 'no'}.")
        parts.append(general_text(rng, rng.randint(1, 4)))
    return " ".join(parts)


def s1k_row(rng: random.Random) -> dict:
    """One row in the s1K-1.1 schema: question, thinking trace, attempt (both trace sources)."""
    if rng.random() < 0.5:
        p = word_problem(rng)
        question, steps, answer = p["question"], p["steps"], p["answer"]
    else:
        p = expression_problem(rng)
        question, steps, answer = p["problem"], p["steps"], p["answer"]
    thinking = "Let me think step by step. " + " ".join(steps) + f" So the answer is {answer}."
    attempt = f"The answer is $\\boxed{{{answer}}}$."
    return {"question": question, "solution": str(answer), "cot_type": "math", "source_type": "reasondiff/tiny",
            "metadata": "{}", "gemini_thinking_trajectory": thinking, "gemini_attempt": attempt,
            "deepseek_thinking_trajectory": thinking, "deepseek_attempt": attempt,
            "gemini_grade": "Yes", "deepseek_grade": "Yes"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from reasondiff.artifacts import atomic_write

    with atomic_write(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def write_tiny_datasets(directory: str | Path, seed: int = 0, *, n_corpus: int = 3000, n_s1k: int = 400,
                        n_eval: int = 60) -> dict[str, Path]:
    """Write every dataset the tiny experiment reads; returns name -> path."""
    directory = Path(directory)
    rng = random.Random(seed)
    paths = {name: directory / f"{name}.jsonl" for name in ("corpus", "s1k", "gsm8k", "math500", "boolq")}
    _write_jsonl(paths["corpus"], [{"text": base_training_text(rng)} for _ in range(n_corpus)])
    _write_jsonl(paths["s1k"], [s1k_row(rng) for _ in range(n_s1k)])
    gsm = []
    for _ in range(n_eval):
        p = word_problem(rng)
        gsm.append({"question": p["question"], "answer": " ".join(p["steps"]) + f"\n#### {p['answer']}"})
    _write_jsonl(paths["gsm8k"], gsm)
    math_rows = []
    for i in range(n_eval):
        p = expression_problem(rng)
        math_rows.append({"problem": p["problem"], "solution": " ".join(p["steps"]) + f" $\\boxed{{{p['answer']}}}$",
                          "answer": str(p["answer"]), "subject": "Prealgebra", "level": 1,
                          "unique_id": f"tiny/{i}.json"})
    _write_jsonl(paths["math500"], math_rows)
    _write_jsonl(paths["boolq"], [comparison_question(rng) for _ in range(n_eval)])
    return paths
