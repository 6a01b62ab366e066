"""Schema of the bench stage (token-budget sweeps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondiff.config.common import check_choice

TASKS = ("gsm8k", "math500", "boolq")

_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_BOOLQ_INSTRUCTION = ("Think it through, then give your final answer as yes or no on its own line, "
                      "in the form \"Answer: yes\" or \"Answer: no\".")


@dataclass
class TaskData:
    """Where a task's rows come from: a hub dataset or a local .jsonl file."""

    path: str = "???"
    """Hub id (openai/gsm8k) or a local .jsonl/.json/.parquet/.csv file."""
    config_name: str | None = None
    """Hub dataset config (gsm8k: main); ignored for local files."""
    split: str = "test"
    """Hub split; ignored for local files (a local file is one split)."""


def _default_tasks() -> dict[str, TaskData]:
    return {
        "gsm8k": TaskData(path="openai/gsm8k", config_name="main", split="test"),
        "math500": TaskData(path="HuggingFaceH4/MATH-500", split="test"),
        "boolq": TaskData(path="google/boolq", split="validation"),
    }


@dataclass
class PromptTemplates:
    """The user turn per task, rendered through the model's chat template.

    Placeholders `{question}` (gsm8k, boolq), `{problem}` (math500), `{passage}` (boolq) are
    replaced literally, so LaTeX braces such as `\\boxed{}` need no escaping."""

    gsm8k: str = "{question}\n\n" + _MATH_INSTRUCTION
    """gsm8k rows ({question})."""
    math500: str = "{problem}\n\n" + _MATH_INSTRUCTION
    """MATH-500 rows ({problem})."""
    boolq: str = "{passage}\n\nQuestion: {question}?\n\n" + _BOOLQ_INSTRUCTION
    """boolq rows with a passage (hub google/boolq)."""
    boolq_no_passage: str = "Question: {question}?\n\n" + _BOOLQ_INSTRUCTION
    """boolq rows without one (the question-only slice in ../shared/data)."""

    def __post_init__(self) -> None:
        required = {"gsm8k": "{question}", "math500": "{problem}", "boolq": "{passage}",
                    "boolq_no_passage": "{question}"}
        for key, placeholder in required.items():
            if placeholder not in getattr(self, key):
                raise ValueError(f"bench.prompts.{key} must contain {placeholder}")


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["base", "tuned"])
    """Which models to sweep: "base" (model.path), "tuned" (tuned_model), or any hub id / local path."""
    tasks: list[str] = field(default_factory=lambda: ["gsm8k", "math500", "boolq"])
    """Which tasks to sweep: gsm8k, math500, boolq."""
    data: dict[str, TaskData] = field(default_factory=_default_tasks)
    """Per task: where its rows come from (bench.data.gsm8k.path=/file.jsonl works offline)."""
    prompts: PromptTemplates = field(default_factory=PromptTemplates)
    """Per task: the user turn template."""
    token_limits: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048])
    """Budgets of generated tokens. One greedy generation at the largest serves every limit."""
    limit: int | None = None
    """Questions per task (a seeded random subset, the same for every model); None = all."""
    seed: int = 0
    """Seed of the `limit` subset."""
    mode: str = "prefix"
    """prefix: score each limit on the prefix of one greedy generation; forced: s1 budget forcing
    (at the limit, close the thinking and let the model write a short final answer)."""
    forced_answer_tokens: int = 32
    """Budget forcing: most tokens of final answer after the limit (so the limit still bounds the total)."""
    start_thinking: bool = False
    """Append format.think_delimiter to every prompt (s1's evaluation does this for the tuned model;
    our SFT trains the model to open its thinking itself, so it is off by default)."""
    backend: str = "hf"
    """hf: batched transformers generate (CPU/GPU). vllm: the optional `vllm` extra, GPU only."""
    system_prompt: str | None = None
    """System turn for every prompt; None keeps the chat template's default."""
    vllm_gpu_memory_utilization: float = 0.85
    """bench.backend=vllm: fraction of GPU memory vLLM may take."""

    def __post_init__(self) -> None:
        check_choice("bench.mode", self.mode, ("prefix", "forced"))
        check_choice("bench.backend", self.backend, ("hf", "vllm"))
        if not self.token_limits or any(t < 1 for t in self.token_limits):
            raise ValueError(f"bench.token_limits must be positive integers, got {self.token_limits}")
        if len(set(self.token_limits)) != len(self.token_limits):
            raise ValueError(f"bench.token_limits has duplicates: {self.token_limits}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"bench.limit must be >= 1 or null (all questions), got {self.limit}")
        if self.forced_answer_tokens < 1:
            raise ValueError(f"bench.forced_answer_tokens must be >= 1, got {self.forced_answer_tokens}")
        if not self.models:
            raise ValueError("bench.models is empty; e.g. bench.models=[base,tuned]")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"bench.tasks has unknown task(s) {unknown}; choose from gsm8k, math500, boolq")
        missing = [t for t in self.tasks if t not in self.data]
        if missing:
            raise ValueError(f"bench.data has no entry for task(s) {missing}")
