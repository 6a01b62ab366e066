"""Config schemas shared by every stage: models, hardware profile, logging, reasoning format."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """OmegaConf 2.3 has no Literal types: choices are checked here, with the key in the message."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(choices)}")



REASONING_TEXTS = ("heldout_rows", "on_policy", "file")
"""Where scan / analyze (and intervene) take their reasoning text (docs/finetune.md, held-out rows):
heldout_rows = rows of finetune.dataset the fine-tune never trained on (finetune.holdout, as its
manifest recorded them); on_policy = the tuned model's own bench generations on held-out questions,
in the chat layout; file = an s1K-style corpus named by `<stage>.reasoning_corpus`."""


def check_reasoning_text(stage: str, reasoning_text: str, reasoning_corpus: str | None) -> None:
    check_choice(f"{stage}.reasoning_text", reasoning_text, REASONING_TEXTS)
    if reasoning_text == "file" and not reasoning_corpus:
        raise ValueError(f"{stage}.reasoning_text=file needs {stage}.reasoning_corpus")
    if reasoning_corpus and reasoning_text != "file":
        raise ValueError(f"{stage}.reasoning_corpus={reasoning_corpus} is read only with {stage}.reasoning_text=file "
                         f"(it is {reasoning_text})")


@dataclass
class ModelConfig:
    """The base model. `path` is a hub id (Qwen/Qwen2.5-0.5B-Instruct) or a local HF directory."""

    name: str = "tiny"
    """Short label used in tables and figures ("base" model's display name)."""
    path: str = "???"
    """Hub id or local directory. Change with `model.path=/dir/of/hf/model`."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local paths."""
    build_tiny: bool = False
    """Build the embedded tiny model at `path` when it does not exist yet (offline demo)."""
    trust_remote_code: bool = False
    """Allow model code from the hub repo (only for architectures transformers lacks)."""


@dataclass
class HardwareConfig:
    """What the machine can do: precision and memory knobs. Science lives in the stage configs."""

    name: str = "cpu"
    """Label of the hardware profile (hardware=NAME selects one)."""
    device: str = "auto"
    """"auto" picks cuda when available, else cpu."""
    dtype: str = "float32"
    """Weights/compute precision for every model the stages load (T4 has no bfloat16: use float16).
    auto = bfloat16 on a GPU that has it (else float16), and on a CPU with native bf16 (avx512_bf16 /
    AMX), else float32: emulated bf16 matmuls are ~100x slower than fp32 on an AVX2-only CPU."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa (default), eager, or flash_attention_2 (GPU, optional package)."""
    gradient_checkpointing: bool = False
    """Recompute activations in SFT's backward pass: less memory, ~30% more time, same result."""
    memory_gb: float = 16.0
    """Accelerator (or RAM, on cpu) memory; used to warn up front when a setting cannot fit."""
    finetune_micro_batch: int = 2
    """Per-device SFT batch; gradient accumulation makes up the experiment's effective batch."""
    bench_batch_size: int = 16
    """Questions generated at once (left-padded, masked batches: equal results up to float rounding)."""
    harvest_batch_size: int = 8
    """Contexts run through both models at once."""
    analyze_batch_size: int = 8
    """Held-out contexts per batch of the analysis passes."""
    dataloader_workers: int = 0
    """DataLoader worker processes for SFT (0 = load in the main process)."""
    cpu_threads: int | None = None
    """torch intra-op threads on CPU (None = torch's default, one per core); set it when other jobs
    share the cores: on a 2-core machine with one core busy, 1 thread ran a decode-shaped forward of
    the 0.5B in 0.35 s against 2.9 s with the default 2 (threads waiting on a busy core stall the op)."""
    malloc_mmap_threshold_kb: int | None = 64
    """glibc only: allocations above this many KiB are mmap'ed and given back to the system when freed
    (reasondiff/core/memory.py). null keeps glibc's dynamic threshold, under which a CPU fine-tune of the
    0.5B model grew from 12 to 21 GB resident and was OOM-killed; 64 held it at 11-13 GB."""
    progress_log_seconds: float = 60.0
    """Where stderr is not a terminal (nohup, Slurm, torchrun into a file), each progress bar becomes an
    INFO log line at most every this many seconds (done/total, elapsed, time left; reasondiff/core/progress.py).
    On a terminal tqdm's bar is drawn as before. 0 = a line after every step."""

    def __post_init__(self) -> None:
        check_choice("hardware.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        if self.dtype == "auto":  # resolved here, so manifests and fingerprints record the real dtype
            self.dtype = auto_dtype(self.device)
        check_choice("hardware.attn_implementation", self.attn_implementation, ("sdpa", "eager", "flash_attention_2"))
        if self.malloc_mmap_threshold_kb is not None and not 0 < self.malloc_mmap_threshold_kb <= 32768:
            raise ValueError(f"hardware.malloc_mmap_threshold_kb must be in 1..32768 (glibc's maximum is 32 MiB) or "
                             f"null, got {self.malloc_mmap_threshold_kb}")
        if self.progress_log_seconds < 0:
            raise ValueError(f"hardware.progress_log_seconds must be >= 0, got {self.progress_log_seconds}")
        for key in ("finetune_micro_batch", "bench_batch_size", "harvest_batch_size", "analyze_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"hardware.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class WandbConfig:
    mode: str = "disabled"
    """`online` logs to wandb.ai, `offline` writes runs to disk for `wandb sync`; never prompts."""
    project: str = "reasondiff"
    """W&B project."""
    entity: str | None = None
    """W&B team or user (None = your default)."""
    group: str | None = None
    """W&B group (None = exp_name, so one experiment's stages group together)."""

    def __post_init__(self) -> None:
        check_choice("wandb.mode", self.mode, ("online", "offline", "disabled"))


LAYOUTS = ("s1", "think", "none")
"""Reasoning layouts (reasondiff/lm/layouts.py): s1's <|im_start|>think/<|im_start|>answer, the
R1/Qwen3/OpenThinker <think>...</think>, and none (a plain chat model)."""


@dataclass
class ReasoningFormat:
    """Each model's reasoning layout, and the strings of the s1 layout (SFT writes it; bench,
    scan, analyze and intervene read every layout through reasondiff.lm.layouts.layout_for)."""

    layout: str = "s1"
    """The tuned model's layout: s1 (<|im_start|>think ... <|im_start|>answer, this project's SFT and
    s1/s1.1), think (<think> ... </think>: DeepSeek-R1 distills, Qwen3, OpenThinker2/3) or none."""
    base_layout: str = "none"
    """The base model's layout (none: a plain model whose whole turn is its answer)."""

    think_delimiter: str = "<|im_start|>think"
    """s1 layout: what opens the thinking in an assistant turn (s1: <|im_start|>think)."""
    answer_delimiter: str = "<|im_start|>answer"
    """s1 layout: what closes the thinking and opens the answer (s1: <|im_start|>answer)."""
    answer_prefix: str = "Answer: "
    """s1 layout: written after the answer delimiter, before the final answer."""
    final_answer_prompt: str = "Final Answer:"
    """What budget forcing appends after closing the thinking at the token limit."""

    def __post_init__(self) -> None:
        check_choice("format.layout", self.layout, LAYOUTS)
        check_choice("format.base_layout", self.base_layout, LAYOUTS)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (avx512_bf16 or AMX); unknown platforms count as no."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def auto_dtype(device: str) -> str:
    """The fastest precision that is numerically safe for `device` ("auto", "cpu", "cuda[:n]")."""
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"

