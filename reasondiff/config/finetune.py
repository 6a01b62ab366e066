"""Schema of the finetune stage (SFT on s1K-1.1 with trl)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondiff.config.common import check_choice


@dataclass
class HoldoutConfig:
    """Rows of finetune.dataset never trained on: the held-out reasoning text of scan, analyze and
    intervene. Chosen by a seeded rule on each row's question (reasondiff/lm/holdout.py) and
    recorded in the finetune manifest (which rows were held out and which trained, with hashes)."""

    fraction: float = 0.1
    """Share of the dataset's distinct questions held out (ignored when n_rows is set)."""
    n_rows: int | None = None
    """Exactly this many distinct questions held out (null = use fraction); 0 trains on every row."""
    seed: int = 0
    """Seed of the split (its own, so the global seed can change without moving the split)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"finetune.holdout.fraction must be in [0, 1), got {self.fraction}")
        if self.n_rows is not None and self.n_rows < 0:
            raise ValueError(f"finetune.holdout.n_rows must be >= 0 or null, got {self.n_rows}")


@dataclass
class FinetuneConfig:
    dataset: str = "simplescaling/s1K-1.1"
    """Hub id, or a local .jsonl/.json/.parquet file with the s1K-1.1 columns."""
    split: str = "train"
    """Hub split (ignored for local files)."""
    trace_source: str = "deepseek"
    """Which s1K-1.1 trace/attempt pair becomes the assistant turn."""
    require_thinking: bool = True
    """Refuse a row whose thinking is empty. False for the control fine-tune (+null=control): chat
    rows answered at once, in the same layout with nothing between the think delimiters."""
    limit_rows: int | None = None
    """Train only on the first N rows that are not held out (debug, CPU runs)."""
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    """Rows never trained on (held-out reasoning text for scan / analyze / intervene)."""
    max_length: int = 2048
    """Tokens per SFT example (paper: 2048); longer rows follow overlong_policy."""
    overlong_policy: str = "truncate"
    """truncate = paper (cuts the answer away); drop the row; keep_answer trims the thinking's middle."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW (paper: 1e-5)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (paper: 1e-4)."""
    num_epochs: float = 5.0
    """Passes over the data (paper: 5)."""
    max_steps: int = -1
    """> 0 overrides num_epochs (smoke runs, benchmarks)."""
    warmup_ratio: float = 0.05
    """Fraction of the steps with linear warm-up (paper: 0.05)."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name after warm-up (paper: cosine)."""
    adam_beta1: float = 0.9
    """AdamW beta1 (paper: 0.9)."""
    adam_beta2: float = 0.95
    """AdamW beta2 (paper: 0.95)."""
    effective_batch_size: int = 8
    """Sequences per optimizer step (paper: 2 per device x 4 accumulation); hardware sets the micro batch."""
    logging_steps: int = 1
    """Log the loss every this many optimizer steps (metrics.csv, Fig. 2)."""
    save_steps: int = 50
    """Save a resumable trainer checkpoint every this many optimizer steps."""
    save_total_limit: int = 2
    """Trainer checkpoints kept while training (older ones are deleted)."""
    keep_checkpoints: bool = False
    """Keep the trainer checkpoints after a finished run (weights + Adam state in fp32: ~7 GB each for
    Qwen2.5-0.5B); by default only model/ stays, since a finished stage never resumes."""
    pad_token: str = "<|fim_pad|>"
    """Padding token for SFT batches; never the EOS token (s1 uses <|fim_pad|>), saved with the tokenizer."""
    save_dtype: str = "auto"
    """dtype of the saved model: auto = the base checkpoint's dtype (training keeps fp32 master weights)."""
    sample_generations: int = 2
    """After training, greedily answer this many bench questions (held out from SFT, round-robin over
    bench.tasks, in the bench's prompt) and record whether each follows the think/answer layout
    (samples.json); 0 skips it."""
    sample_max_new_tokens: int = 256
    """Most tokens of each layout sample."""
    push_to_hub: bool = False
    """Upload model/ to the Hugging Face Hub when done (needs hub_model_id and a login)."""
    hub_model_id: str | None = None
    """Hub repo for push_to_hub (user/name)."""

    def __post_init__(self) -> None:
        check_choice("finetune.trace_source", self.trace_source, ("deepseek", "gemini"))
        check_choice("finetune.overlong_policy", self.overlong_policy, ("truncate", "drop", "keep_answer"))
        if self.max_length < 16:
            raise ValueError(f"finetune.max_length must be >= 16, got {self.max_length}")
        check_choice("finetune.save_dtype", self.save_dtype, ("auto", "float32", "bfloat16", "float16"))
        if self.limit_rows is not None and self.limit_rows < 1:
            raise ValueError(f"finetune.limit_rows must be >= 1 or null, got {self.limit_rows}")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ValueError("finetune.num_epochs must be > 0 (or set finetune.max_steps > 0)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"finetune.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ValueError("finetune.save_steps and finetune.logging_steps must be >= 1")
        if self.effective_batch_size < 1:
            raise ValueError("finetune.effective_batch_size must be >= 1")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("finetune.push_to_hub=true needs finetune.hub_model_id")
