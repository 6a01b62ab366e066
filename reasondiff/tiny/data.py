"""Text the project generates itself for the offline demo: a small world where thinking pays,
written out in the schemas of the real datasets (s1K-1.1, gsm8k, MATH-500, boolq, a Pile-like
`text` corpus) so every stage's real loading code runs on it.

The tasks are two-digit arithmetic in two or three steps, with carries and borrows: word problems
(gsm8k), bare expressions (MATH-500) and yes/no questions whose answer needs one computation from
the passage (boolq). A model of the tiny size cannot produce such an answer in one forward pass
with any reliability, but it can by writing the column method down, one digit fact per step
(`47+38: 7+8=15, 4+3+1=8, so 85.`), each step a fact it has seen many times.

- The base model's corpus holds prose, worked solutions written as text ("Solution: ...") and chat
  turns in which the assistant answers *directly* (an instruct model before reasoning fine-tuning):
  it can work a problem out, but in a chat it answers at once, and is often wrong.
- The s1K-style rows put the same worked solutions in the s1 layout as the assistant's thinking,
  so the fine-tune teaches the model to think before it answers in a chat.
- The bench questions are held out: no question of the corpus or the SFT rows has the same numbers
  (in order) as a bench question of any task (`question_key`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "marbles", "cards", "eggs", "cups"]
PLACES = ["the market", "the school", "the park", "the library", "the station", "the farm", "the shop"]
ADJECTIVES = ["small", "red", "quiet", "old", "bright", "heavy", "round", "busy", "cold", "green"]
NOUNS = ["river", "house", "tree", "road", "cat", "train", "garden", "window", "bridge", "lamp"]
VERBS = ["sees", "finds", "passes", "likes", "follows", "paints", "moves", "opens", "watches", "fixes"]
GAINS = ["buys {n} more", "finds {n} more", "gets {n} more"]
LOSSES = ["gives away {n}", "sells {n}", "loses {n}"]

MIN_VALUE, MAX_VALUE = 10, 299
"""Every number in a problem, and every intermediate result, stays in this range: the column
method's steps then always have a units digit and a tens part (x // 10), and no result loses a digit."""

GSM8K_STEPS = (1, 2, 3)
GSM8K_STEP_WEIGHTS = (0.2, 0.5, 0.3)
MATH_STEPS = (2, 3)


# --- the column method: the one skill every task needs --------------------------------------------

def column_step(x: int, op: str, y: int) -> str:
    """One operation worked in columns: units first, then the tens part with the carry or borrow.

    `47+38: 7+8=15, 4+3+1=8, so 85.` — every step is a one-digit fact (or the tens part, at most 29,
    with one digit), so a tiny model that knows the facts gets the sum right. Written without spaces
    around the signs: Qwen's tokenizer makes a space before a digit a token of its own."""
    xu, xt, yu, yt = x % 10, x // 10, y % 10, y // 10
    if op == "+":
        units = xu + yu
        carry = units >= 10
        tens = f"{xt}+{yt}+1={xt + yt + 1}" if carry else f"{xt}+{yt}={xt + yt}"
        return f"{x}+{y}: {xu}+{yu}={units}, {tens}, so {x + y}."
    if op != "-":
        raise ValueError(f"unknown operation {op!r}")
    borrow = xu < yu
    units = f"{xu + 10}-{yu}={xu + 10 - yu}" if borrow else f"{xu}-{yu}={xu - yu}"
    tens = f"{xt}-{yt}-1={xt - yt - 1}" if borrow else f"{xt}-{yt}={xt - yt}"
    return f"{x}-{y}: {units}, {tens}, so {x - y}."


def apply(x: int, op: str, y: int) -> int:
    return x + y if op == "+" else x - y


@dataclass(frozen=True)
class Chain:
    """A start value and operations applied in order: 47, (+, 38), (-, 19) -> 66."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def values(self) -> list[int]:
        values = [self.start]
        for op, y in self.ops:
            values.append(apply(values[-1], op, y))
        return values

    @property
    def result(self) -> int:
        return self.values[-1]

    def steps(self) -> list[str]:
        return [column_step(x, op, y) for x, (op, y) in zip(self.values, self.ops, strict=False)]


def random_chain(rng: random.Random, n_ops: int) -> Chain:
    """Two-digit operands; every intermediate value stays in [MIN_VALUE, MAX_VALUE]."""
    start, ops, value = rng.randint(MIN_VALUE, 99), [], None
    value = start
    for _ in range(n_ops):
        choices = [op for op, ok in (("+", value + MIN_VALUE <= MAX_VALUE), ("-", value - MIN_VALUE >= MIN_VALUE)) if ok]
        op = rng.choice(choices)
        high = min(99, MAX_VALUE - value) if op == "+" else min(99, value - MIN_VALUE)
        y = rng.randint(MIN_VALUE, high)
        ops.append((op, y))
        value = apply(value, op, y)
    return Chain(start, tuple(ops))


# --- the three tasks -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """A question with its worked solution (thinking) and its final answer."""

    task: str
    """gsm8k, math500 or boolq: the benchmark whose schema the problem is written in."""
    question: str
    """What the user asks (a boolq problem: the question, without its passage)."""
    thinking: str
    answer: int | bool
    passage: str = ""

    @property
    def user_text(self) -> str:
        """The question as one text, with the passage first where there is one."""
        return f"{self.passage}\n\nQuestion: {self.question}?" if self.passage else self.question

    @property
    def answer_text(self) -> str:
        if isinstance(self.answer, bool):
            return "yes" if self.answer else "no"
        return str(self.answer)


def question_key(text: str) -> tuple[int, ...]:
    """The numbers of a question in order: two problems with the same key share every computation."""
    return tuple(int(n) for n in re.findall(r"\d+", text))


def word_problem(rng: random.Random, n_ops: int | None = None) -> Problem:
    """gsm8k-shaped: someone's count of things, changed one to three times."""
    n_ops = n_ops or rng.choices(GSM8K_STEPS, GSM8K_STEP_WEIGHTS)[0]
    chain = random_chain(rng, n_ops)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    events = [rng.choice(GAINS if op == "+" else LOSSES).format(n=y) for op, y in chain.ops]
    story = events[0] if len(events) == 1 else ", then ".join(events[:-1]) + " and then " + events[-1]
    question = f"{name} has {chain.start} {item}. {name} {story}. How many {item} does {name} have now?"
    thinking = " ".join(chain.steps())
    return Problem("gsm8k", question, thinking, chain.result)


def expression_problem(rng: random.Random, n_ops: int | None = None) -> Problem:
    """MATH-shaped: a bare expression, worked left to right."""
    chain = random_chain(rng, n_ops or rng.choice(MATH_STEPS))
    expression = f"{chain.start} " + " ".join(f"{op} {y}" for op, y in chain.ops)
    thinking = " ".join(chain.steps())
    return Problem("math500", f"Compute ${expression}$.", thinking, chain.result)


def passage_question(rng: random.Random) -> Problem:
    """boolq-shaped: a passage and a yes/no question that needs one computation from it.

    The other person's count lies within 9 of the answer, so size alone does not give it away."""
    chain = random_chain(rng, 1)
    (op, y), result = chain.ops[0], chain.result
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    other_count = result
    while other_count == result or not MIN_VALUE <= other_count <= MAX_VALUE:
        other_count = result + rng.choice([-1, 1]) * rng.randint(1, 9)
    event = rng.choice(GAINS if op == "+" else LOSSES).format(n=y)
    passage = f"{name} has {chain.start} {item} and {other} has {other_count} {item}. Then {name} {event}."
    more = rng.random() < 0.5
    question = f"does {name} have {'more' if more else 'fewer'} {item} than {other} now"
    answer = result > other_count if more else result < other_count
    thinking = f"{chain.steps()[0]} Is {result} {'greater' if more else 'less'} than {other_count}? " \
               f"{'Yes' if answer else 'No'}."
    return Problem("boolq", question, thinking, answer, passage=passage)


GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "gsm8k": word_problem, "math500": expression_problem, "boolq": passage_question}


def user_turn(problem: Problem) -> str:
    """The user turn the bench sends for `problem` (the default prompt templates)."""
    from reasondiff.config.bench import PromptTemplates

    return PromptTemplates().user_turn(problem.task, {"question": problem.question, "problem": problem.question,
                                                       "passage": problem.passage})


def direct_answer(problem: Problem) -> str:
    """What an instruct model without reasoning training replies: the answer at once."""
    if problem.task == "boolq":
        return f"Answer: {problem.answer_text}"
    return f"The answer is $\\boxed{{{problem.answer}}}$."


def attempt(problem: Problem) -> str:
    """The s1K `attempt`: the final answer after the thinking."""
    return problem.answer_text if problem.task == "boolq" else f"$\\boxed{{{problem.answer}}}$"


# --- the base model's corpus -----------------------------------------------------------------------

def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."
    if kind == 1:
        return f"{rng.choice(NAMES)} went to {rng.choice(PLACES)} with {rng.randint(2, 9)} {rng.choice(ITEMS)}."
    a, b = rng.randint(MIN_VALUE, MAX_VALUE), rng.randint(MIN_VALUE, MAX_VALUE)
    relation = "greater than" if a > b else "less than" if a < b else "equal to"
    return f"{a} is {relation} {b}."


def general_text(rng: random.Random, n_sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(n_sentences))


def chat_turn(user: str, assistant: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


class ProblemSource:
    """Problems of every task for training text, never one that shares its numbers with a held-out
    (bench) question of any task."""

    def __init__(self, rng: random.Random, held_out: set[tuple[int, ...]]):
        self.rng, self.held_out = rng, held_out

    def draw(self, task: str | None = None) -> Problem:
        while True:
            problem = GENERATORS[task or self.rng.choice(list(GENERATORS))](self.rng)
            if question_key(problem.user_text) not in self.held_out:
                return problem


def base_training_text(rng: random.Random, source: ProblemSource) -> str:
    """A pretraining document for the base model: prose, worked solutions written as text, and chat
    turns answered directly (so the base follows the bench prompts, without thinking)."""
    kind = rng.random()
    if kind < 0.35:
        problems = [source.draw() for _ in range(rng.randint(1, 3))]
        return "".join(chat_turn(user_turn(p), direct_answer(p)) for p in problems)
    parts = [general_text(rng, rng.randint(1, 4))]
    for _ in range(rng.randint(1, 3)):
        p = source.draw()
        parts.append(f"Question: {p.user_text} Solution: {p.thinking} Answer: {p.answer_text}.")
    parts.append(general_text(rng, rng.randint(0, 2)))
    return " ".join(part for part in parts if part)


def s1k_row(problem: Problem) -> dict:
    """One row in the s1K-1.1 schema: question, thinking trace, attempt (both trace sources).

    The question is the bench's user turn for the problem: s1K's own questions carry no
    instruction, but a tiny model does not carry a layout over to a prompt worded otherwise."""
    attempt_text = attempt(problem)
    return {"question": user_turn(problem), "solution": problem.answer_text, "cot_type": "math",
            "source_type": f"reasondiff/tiny/{problem.task}", "metadata": "{}",
            "gemini_thinking_trajectory": problem.thinking, "gemini_attempt": attempt_text,
            "deepseek_thinking_trajectory": problem.thinking, "deepseek_attempt": attempt_text,
            "gemini_grade": "Yes", "deepseek_grade": "Yes"}


def eval_row(problem: Problem, index: int) -> dict:
    """The problem in its benchmark's schema."""
    if problem.task == "gsm8k":
        return {"question": problem.question, "answer": f"{problem.thinking}\n#### {problem.answer}"}
    if problem.task == "math500":
        return {"problem": problem.question, "solution": f"{problem.thinking} $\\boxed{{{problem.answer}}}$",
                "answer": str(problem.answer), "subject": "Prealgebra", "level": 1,
                "unique_id": f"tiny/{index}.json"}
    return {"question": problem.question, "answer": problem.answer, "passage": problem.passage}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from reasondiff.artifacts import atomic_write

    with atomic_write(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def held_out_problems(seed: int, n_eval: int) -> dict[str, list[Problem]]:
    """The bench questions of every task, distinct within a task, from their own random stream."""
    rng = random.Random(f"tiny-eval-{seed}")
    out = {}
    for task, generate in GENERATORS.items():
        seen, problems = set(), []
        while len(problems) < n_eval:
            problem = generate(rng)
            if question_key(problem.user_text) not in seen:
                seen.add(question_key(problem.user_text))
                problems.append(problem)
        out[task] = problems
    return out


def write_tiny_datasets(directory: str | Path, seed: int = 0, *, n_corpus: int = 3000, n_s1k: int = 400,
                        n_eval: int = 100) -> dict[str, Path]:
    """Write every dataset the tiny experiment reads; returns name -> path."""
    directory = Path(directory)
    held = held_out_problems(seed, n_eval)
    source = ProblemSource(random.Random(f"tiny-train-{seed}"),
                           {question_key(p.user_text) for problems in held.values() for p in problems})
    rng = random.Random(f"tiny-corpus-{seed}")
    paths = {name: directory / f"{name}.jsonl" for name in ("corpus", "s1k", "gsm8k", "math500", "boolq")}
    _write_jsonl(paths["corpus"], [{"text": base_training_text(rng, source)} for _ in range(n_corpus)])
    tasks = list(GENERATORS)
    _write_jsonl(paths["s1k"], [s1k_row(source.draw(tasks[i % len(tasks)])) for i in range(n_s1k)])
    for task, problems in held.items():
        _write_jsonl(paths[task], [eval_row(p, i) for i, p in enumerate(problems)])
    return paths
