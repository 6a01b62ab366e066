"""Text the project generates itself for the offline demo: a small world where thinking pays,
written out in the schemas of the real datasets (s1K-1.1, gsm8k, MATH-500, boolq, a Pile-like
`text` corpus) so every stage's real loading code runs on it.

Every task is a running count changed a few times by one-digit amounts: word problems (gsm8k),
bare expressions (MATH-500) and yes/no questions whose answer needs the count computed from the
passage and compared (boolq). Written out, each change is one small fact the tiny model has seen
many times (`6+1=7.`); answered at once, the result of two to five changes in one forward pass
is beyond a model of the tiny size, so it guesses from what it can see (docs/tiny.md).

- The base model's corpus holds prose, worked solutions written as text ("Solution: Start: 6.
  Monday: 6+1=7. ..."; half of them after the bench's instruction) and chat turns on easy questions
  in which the assistant answers *directly* (an instruct model before reasoning fine-tuning): it can
  work a problem out as text, but in a chat it answers at once.
- The s1K-style rows put the same worked solutions in the s1 layout as the assistant's thinking, so
  the fine-tune teaches the model to think in a chat before it answers. A problem takes one to five
  steps, so longer token limits let more traces reach their answer (the paper's scaling shape).
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

from reasondiff.core.progress import Progress

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "marbles", "cards", "eggs", "cups"]
PLACES = ["the market", "the school", "the park", "the library", "the station", "the farm", "the shop"]
ADJECTIVES = ["small", "red", "quiet", "old", "bright", "heavy", "round", "busy", "cold", "green"]
NOUNS = ["river", "house", "tree", "road", "cat", "train", "garden", "window", "bridge", "lamp"]
VERBS = ["sees", "finds", "passes", "likes", "follows", "paints", "moves", "opens", "watches", "fixes"]
GAINS = ["buys {n} more", "finds {n} more", "gets {n} more"]
LOSSES = ["gives away {n}", "sells {n}", "loses {n}"]

MIN_COUNT, MAX_COUNT = 1, 9
"""Every count, start and intermediate, is one digit: one token under Qwen's digit split, so a step
`3+4=7.` always has the same shape and its fact is one of a few dozen the model sees many times."""
MIN_AMOUNT, MAX_AMOUNT = 1, 8
"""Each change is one digit too, distinct within a problem, so the question names it once."""

GSM8K_STEPS = (1, 2, 3, 4, 5)
GSM8K_STEP_WEIGHTS = (0.1, 0.25, 0.3, 0.2, 0.15)
MATH_STEPS = (2, 3, 4)
BOOLQ_STEPS = (1, 2)


# --- the one skill every task needs ---------------------------------------------------------------

def apply(x: int, op: str, y: int) -> int:
    if op not in "+-":
        raise ValueError(f"unknown operation {op!r}")
    return x + y if op == "+" else x - y


def step_text(x: int, op: str, y: int) -> str:
    """One change written out: `6+1=7.` Written without spaces around the signs: Qwen's tokenizer
    makes a space before a digit a token of its own."""
    return f"{x}{op}{y}={apply(x, op, y)}."


@dataclass(frozen=True)
class Chain:
    """A start count and the changes applied in order: 6, (+, 1), (-, 5) -> 2."""

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
        return [step_text(x, op, y) for x, (op, y) in zip(self.values, self.ops, strict=False)]

    @property
    def expression(self) -> str:
        return f"{self.start}" + "".join(f"{op}{y}" for op, y in self.ops)


def random_chain(rng: random.Random, n_ops: int) -> Chain:
    """Distinct one-digit changes; every count stays in [MIN_COUNT, MAX_COUNT]."""
    while True:
        value = start = rng.randint(MIN_COUNT, MAX_COUNT)
        unused = list(range(MIN_AMOUNT, MAX_AMOUNT + 1))
        ops: list[tuple[str, int]] = []
        while len(ops) < n_ops:
            moves = [(op, y) for y in unused for op in "+-" if MIN_COUNT <= apply(value, op, y) <= MAX_COUNT]
            if not moves:
                break
            op, y = rng.choice(moves)
            unused.remove(y)
            ops.append((op, y))
            value = apply(value, op, y)
        if len(ops) == n_ops:
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


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
"""Each change happens on a day of its own: the trace names the day, then looks up what happened on
it (the change a step needs is found by its day, not by counting changes)."""


def _events(chain: Chain, name: str) -> str:
    return " ".join(f"On {day} {name} {(GAINS if op == '+' else LOSSES)[y % 3].format(n=y)}."
                    for day, (op, y) in zip(DAYS, chain.ops, strict=False))


def _trace(chain: Chain) -> str:
    return f"Start: {chain.start}. " + " ".join(f"{day}: {step}" for day, step in zip(DAYS, chain.steps(), strict=False))


def word_problem(rng: random.Random, n_ops: int | None = None) -> Problem:
    """gsm8k-shaped: someone's count of things, changed on one to five days."""
    chain = random_chain(rng, n_ops or rng.choices(GSM8K_STEPS, GSM8K_STEP_WEIGHTS)[0])
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    last = DAYS[len(chain.ops) - 1]
    question = f"{name} has {chain.start} {item}. {_events(chain, name)} How many {item} does {name} have after {last}?"
    return Problem("gsm8k", question, _trace(chain), chain.result)


def expression_problem(rng: random.Random, n_ops: int | None = None) -> Problem:
    """MATH-shaped: a bare expression, worked left to right."""
    chain = random_chain(rng, n_ops or rng.choice(MATH_STEPS))
    return Problem("math500", f"Compute ${chain.expression}$.", " ".join(chain.steps()), chain.result)


def passage_question(rng: random.Random, n_ops: int | None = None) -> Problem:
    """boolq-shaped: a passage and a yes/no question that needs the count worked out, then compared.

    The other person's count lies within 3 of the result, on either side: neither the start count
    nor the direction of the changes gives the answer away."""
    chain = random_chain(rng, n_ops or rng.choice(BOOLQ_STEPS))
    result = chain.result
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    other_count = result
    while other_count == result or not MIN_COUNT <= other_count <= MAX_COUNT:
        other_count = result + rng.choice([-1, 1]) * rng.randint(1, 3)
    passage = f"{name} has {chain.start} {item} and {other} has {other_count} {item}. {_events(chain, name)}"
    more = rng.random() < 0.5
    last = DAYS[len(chain.ops) - 1]
    question = f"does {name} have {'more' if more else 'fewer'} {item} than {other} after {last}"
    answer = result > other_count if more else result < other_count
    thinking = f"{_trace(chain)} {other}: {other_count}. {comparison(result, 'more' if more else 'fewer', other_count)}"
    return Problem("boolq", question, thinking, answer, passage=passage)


def comparison(x: int, relation: str, y: int) -> str:
    """The yes/no step in the question's own words (`Is 6 more than 4? yes.`): the relation is copied
    from the question, the verdict is a fact the drills teach."""
    holds = x > y if relation == "more" else x < y
    return f"Is {x} {relation} than {y}? {'yes' if holds else 'no'}."


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
    """The s1K `attempt`: the final answer after the thinking, first as the worked solutions in the
    base's corpus end (`Answer: 4.`), then boxed. Straight after the thinking, `$\\boxed{` is where the
    base answers at once from the question; with the number written first the box copies it."""
    return problem.answer_text if problem.task == "boolq" else f"{problem.answer}. $\\boxed{{{problem.answer}}}$"


# --- the base model's corpus -----------------------------------------------------------------------

def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."
    if kind == 1:
        return f"{rng.choice(NAMES)} went to {rng.choice(PLACES)} with {rng.randint(2, 9)} {rng.choice(ITEMS)}."
    a, b = rng.randint(MIN_COUNT, MAX_COUNT), rng.randint(MIN_COUNT, MAX_COUNT)
    relation = "more than" if a > b else "fewer than" if a < b else "as many as"
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

    def draw(self, task: str | None = None, max_steps: int | None = None) -> Problem:
        """A problem of `task` (any task when None); of one to `max_steps` changes when given."""
        while True:
            n_ops = self.rng.randint(1, max_steps) if max_steps else None
            problem = GENERATORS[task or self.rng.choice(list(GENERATORS))](self.rng, n_ops)
            if question_key(problem.user_text) not in self.held_out:
                return problem


CHAT_SHARE = 0.3
"""Share of corpus documents that are chat turns answered directly."""
CHAT_MAX_STEPS = 2
"""The chat turns ask easy problems: one to this many changes (None: the tasks' own mix)."""
INSTRUCTED_SHARE = 0.5
"""Share of the worked solutions written after the question as the bench asks it (instruction included)."""
DRILL_SHARE = 0.1
"""Share of corpus documents that are drills of the one-step facts (`6+1=7.`, comparisons): the
facts every written step uses, seen often enough that a model of the tiny size knows them."""


def drill_text(rng: random.Random, n_facts: int) -> str:
    """One-step facts in the traces' own spelling, and comparisons of two counts."""
    facts = []
    for _ in range(n_facts):
        if rng.random() < 0.8:
            chain = random_chain(rng, 1)
            facts.append(chain.steps()[0])
        else:
            x, y = rng.sample(range(MIN_COUNT, MAX_COUNT + 1), 2)
            facts.append(comparison(x, rng.choice(["more", "fewer"]), y))
    return " ".join(facts)


def base_training_text(rng: random.Random, source: ProblemSource, *, chat_share: float = CHAT_SHARE,
                       chat_max_steps: int | None = CHAT_MAX_STEPS, instructed_share: float = INSTRUCTED_SHARE) -> str:
    """A pretraining document for the base model: prose, worked solutions written as text, and chat
    turns answered directly (so the base follows the bench prompts, without thinking). With
    `chat_max_steps` the chat turns ask easy questions only (one to that many changes): the ones an
    instruct model is shown answering at once. `instructed_share` of the worked solutions follow the
    question as the bench asks it, its instruction included: a model that only ever saw the solution
    right after the question loses its place in the question when an instruction comes between."""
    kind = rng.random()
    if kind < DRILL_SHARE:
        return drill_text(rng, rng.randint(8, 16))
    if kind < DRILL_SHARE + chat_share:
        problems = [source.draw(max_steps=chat_max_steps) for _ in range(rng.randint(1, 3))]
        return "".join(chat_turn(user_turn(p), direct_answer(p)) for p in problems)
    parts = [general_text(rng, rng.randint(0, 1))]
    for _ in range(rng.randint(2, 3)):
        p = source.draw()
        question = user_turn(p) if rng.random() < instructed_share else p.user_text
        parts.append(f"Question: {question} Solution: {p.thinking} Answer: {p.answer_text}.")
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


def control_row(problem: Problem) -> dict:
    """A row of the control fine-tune (+null=control, docs/null.md): an easy chat question answered at
    once, in the s1K-1.1 columns with the thinking left empty, so SFT writes the same chat layout (think
    and answer delimiters included) with nothing to think."""
    return {**s1k_row(problem), "gemini_thinking_trajectory": "", "deepseek_thinking_trajectory": "",
            "cot_type": "chat", "source_type": f"reasondiff/tiny/control/{problem.task}"}


def write_control_dataset(path: str | Path, seed: int = 0, *, n_rows: int = 400,
                          chat_max_steps: int | None = CHAT_MAX_STEPS, n_eval: int = 100) -> Path:
    """The control fine-tune's data: as many rows as s1k.jsonl, easy questions (one to
    `chat_max_steps` changes, as the corpus's chat turns) of every task, none a bench question."""
    held = held_out_problems(seed, n_eval)
    source = ProblemSource(random.Random(f"tiny-control-{seed}"),
                           {question_key(p.user_text) for problems in held.values() for p in problems})
    tasks = list(GENERATORS)
    path = Path(path)
    _write_jsonl(path, [control_row(source.draw(tasks[i % len(tasks)], max_steps=chat_max_steps))
                        for i in range(n_rows)])
    return path


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
    from reasondiff.core.artifacts import atomic_write

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
                        n_eval: int = 100, chat_share: float = CHAT_SHARE,
                        chat_max_steps: int | None = CHAT_MAX_STEPS,
                        instructed_share: float = INSTRUCTED_SHARE) -> dict[str, Path]:
    """Write every dataset the tiny experiment reads; returns name -> path."""
    directory = Path(directory)
    held = held_out_problems(seed, n_eval)
    source = ProblemSource(random.Random(f"tiny-train-{seed}"),
                           {question_key(p.user_text) for problems in held.values() for p in problems})
    rng = random.Random(f"tiny-corpus-{seed}")
    paths = {name: directory / f"{name}.jsonl" for name in ("corpus", "s1k", "gsm8k", "math500", "boolq")}
    documents = (base_training_text(rng, source, chat_share=chat_share, chat_max_steps=chat_max_steps,
                                    instructed_share=instructed_share)
                 for _ in Progress(range(n_corpus), desc="tiny world corpus", unit="doc", dynamic_ncols=True,
                                   disable=n_corpus < 5000))
    _write_jsonl(paths["corpus"], [{"text": text} for text in documents])
    tasks = list(GENERATORS)
    _write_jsonl(paths["s1k"], [s1k_row(source.draw(tasks[i % len(tasks)])) for i in range(n_s1k)])
    for task, problems in held.items():
        _write_jsonl(paths[task], [eval_row(p, i) for i, p in enumerate(problems)])
    return paths
