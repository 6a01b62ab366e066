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

    def user_turn(self, task: str, row: dict) -> str:
        """The task's template with the row's fields put in (literal replace: LaTeX braces stay).
        boolq is asked with its passage when the row has one and without when it does not."""
        if task == "boolq":
            passage = row.get("passage")
            template = self.boolq if passage else self.boolq_no_passage
            text = template.replace("{passage}", str(passage or "").strip())
            return text.replace("{question}", str(row["question"]).strip().rstrip("?"))
        if task == "math500":
            return self.math500.replace("{problem}", str(row["problem"]).strip())
        return self.gsm8k.replace("{question}", str(row["question"]).strip())

    def __post_init__(self) -> None:
        required = {"gsm8k": "{question}", "math500": "{problem}", "boolq": "{passage}",
                    "boolq_no_passage": "{question}"}
        for key, placeholder in required.items():
            if placeholder not in getattr(self, key):
                raise ValueError(f"bench.prompts.{key} must contain {placeholder}")


@dataclass
class ForcingConfig:
    """s1's budget forcing (`bench.mode=forced`), knob for knob after simplescaling/s1's evaluation
    harness (eval/lm-evaluation-harness/lm_eval/models/vllm_causallms.py). Its `max_tokens_thinking`
    is each limit of `bench.token_limits`; its `thinking_start` / `thinking_end` are
    `format.think_delimiter` / `format.answer_delimiter`, and the "Final Answer:" it appends at the
    budget is `format.final_answer_prompt`."""

    thinking_n_ignore: int = 0
    """s1's extrapolation: how many times the end of thinking is suppressed and `thinking_n_ignore_str`
    appended instead (s1.1 runs 1 or 2 with "Wait"); 0 = off."""
    thinking_n_ignore_str: str = "Wait"
    """What replaces a suppressed end of thinking; appended as is, no space or newline (as in s1)."""
    until_thinking: str = "<|im_start|>"
    """Where thinking stops besides the end of turn (s1's until_thinking); must be one token."""
    max_tokens_answer: int = 1024
    """The answer phase's own cap, not counted in the limit (s1 gives it max_gen_toks=32768)."""

    def __post_init__(self) -> None:
        if self.thinking_n_ignore < 0:
            raise ValueError(f"bench.forcing.thinking_n_ignore must be >= 0, got {self.thinking_n_ignore}")
        if self.max_tokens_answer < 1:
            raise ValueError(f"bench.forcing.max_tokens_answer must be >= 1, got {self.max_tokens_answer}")
        if not self.until_thinking:
            raise ValueError("bench.forcing.until_thinking is empty; s1 uses <|im_start|>")
        if self.thinking_n_ignore and not self.thinking_n_ignore_str:
            raise ValueError("bench.forcing.thinking_n_ignore_str is empty; s1 appends \"Wait\"")


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
    """Budgets of generated tokens. One greedy generation at the largest serves every limit. In
    bench.mode=forced each limit is s1's max_tokens_thinking (the thinking budget)."""
    limit: int | None = None
    """Questions per task (a seeded random subset, the same for every model); None = all."""
    seed: int = 0
    """Seed of the `limit` subset and of the bootstrap."""
    mode: str = "prefix"
    """prefix (the paper's Table 1): score each limit on the prefix of one greedy generation.
    forced: s1's budget forcing (bench.forcing): thinking capped at the limit, the answer delimiter
    inserted, then an answer of its own cap."""
    forcing: ForcingConfig = field(default_factory=ForcingConfig)
    """bench.mode=forced: s1's knobs ("Wait" extrapolation, the answer phase's cap)."""
    thinking_models: list[str] = field(default_factory=lambda: ["tuned"])
    """Models (entries of bench.models) whose prompt opens the thinking (format.think_delimiter),
    as s1's evaluation does for its own model: always in forced mode, with start_thinking in prefix mode."""
    start_thinking: bool = False
    """Prefix mode: open the thinking in the prompts of thinking_models too (our SFT teaches the
    model to open it itself, so off by default; forced mode always opens it, as s1 does)."""
    protocol: str = "chat"
    """chat: this bench (chat template, instruction prompts, explicit-answer grading). lm_eval:
    lm-evaluation-harness's own protocol where it has the task, for numbers set beside published
    lm-eval ones: gsm8k 5-shot "Question:/Answer:" without chat template (strict-match and
    flexible-extract), boolq as log-likelihood of " yes"/" no" (no generation, so flat across
    limits); math500 keeps the chat protocol."""
    plain_prompt_models: list[str] = field(default_factory=list)
    """Models (entries of bench.models) prompted with the bare user turn, no chat template (base
    models that have none)."""
    fewshot_data: TaskData = field(default_factory=lambda: TaskData(path="openai/gsm8k", config_name="main",
                                                                    split="train"))
    """protocol=lm_eval: where gsm8k's few-shot examples come from (lm-eval: the train split)."""
    num_fewshot: int = 5
    """protocol=lm_eval: gsm8k shots per question (lm-eval: 5)."""
    fewshot_seed: int = 1234
    """protocol=lm_eval: seed of the shots (lm-eval's default fewshot_random_seed); each question
    gets the draw lm-eval would give it on the full test set."""
    bootstrap_resamples: int = 2000
    """Resamples of the questions for the bootstrap intervals in summary.csv (seeded by bench.seed)."""
    confidence_level: float = 0.95
    """Level of every interval (Wilson per limit, bootstrap in the summary)."""
    backend: str = "hf"
    """hf: batched transformers generate (CPU/GPU). vllm: the optional `vllm` extra, GPU only."""
    system_prompt: str | None = None
    """System turn for every prompt; None keeps the chat template's default."""
    vllm_gpu_memory_utilization: float = 0.85
    """bench.backend=vllm: fraction of GPU memory vLLM may take."""
    vllm_tensor_parallel_size: int = 1
    """bench.backend=vllm: GPUs each model is split over (vLLM's tensor parallelism; one process, not
    torchrun: docs/distributed.md)."""

    def __post_init__(self) -> None:
        check_choice("bench.mode", self.mode, ("prefix", "forced"))
        check_choice("bench.backend", self.backend, ("hf", "vllm"))
        check_choice("bench.protocol", self.protocol, ("chat", "lm_eval"))
        if not self.token_limits or any(t < 1 for t in self.token_limits):
            raise ValueError(f"bench.token_limits must be positive integers, got {self.token_limits}")
        if len(set(self.token_limits)) != len(self.token_limits):
            raise ValueError(f"bench.token_limits has duplicates: {self.token_limits}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"bench.limit must be >= 1 or null (all questions), got {self.limit}")
        if not self.models:
            raise ValueError("bench.models is empty; e.g. bench.models=[base,tuned]")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"bench.tasks has unknown task(s) {unknown}; choose from gsm8k, math500, boolq")
        missing = [t for t in self.tasks if t not in self.data]
        if missing:
            raise ValueError(f"bench.data has no entry for task(s) {missing}")
        # thinking_models may name a model this run does not sweep (its default names tuned, also
        # when bench.models=[base]); a plain prompt for an unswept model is a typo
        stray = [m for m in self.plain_prompt_models if m not in self.models]
        if stray:
            raise ValueError(f"bench.plain_prompt_models names {stray}, which bench.models={self.models} "
                             "does not sweep")
        if self.protocol == "lm_eval" and self.mode == "forced":
            raise ValueError("bench.protocol=lm_eval scores lm-evaluation-harness's way, which has no budget "
                             "forcing; use bench.mode=prefix with it")
        if self.num_fewshot < 0:
            raise ValueError(f"bench.num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bench.bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")
        if not 0.5 <= self.confidence_level < 1:
            raise ValueError(f"bench.confidence_level must be in [0.5, 1), got {self.confidence_level}")
