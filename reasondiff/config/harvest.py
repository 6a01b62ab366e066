"""Schema of the harvest stage (paired residual activations)."""

from __future__ import annotations

from dataclasses import dataclass

from reasondiff.config.common import check_choice


@dataclass
class HarvestConfig:
    corpus: str = "jbrinkma/pile-500k"
    """Hub dataset id (streamed) or local .jsonl/.json/.parquet/.csv/.txt."""
    corpus_split: str = "train"
    """Hub split of the corpus (ignored for local files)."""
    corpus_config: str | None = None
    """Hub dataset config name (ignored for local files)."""
    text_column: str = "text"
    """Field holding each document's text."""
    reasoning_corpus: str | None = None
    """Optional s1K-style dataset mixed in (question + thinking trace + attempt), by `reasoning_fraction` of contexts."""
    reasoning_split: str = "train"
    """Hub split of the reasoning corpus."""
    reasoning_fraction: float = 0.0
    """Fraction of contexts taken from reasoning_corpus (0 = none)."""
    context_length: int = 1024
    """Tokens per context: documents are joined by <|endoftext|> and cut into windows of this length."""
    n_tokens: int = 50_000_000
    """Paired activations to store (after dropping the first position / massive-activation tokens)."""
    hook: str = "blocks.14.hook_resid_pre"
    """TransformerLens hook name: blocks.L.hook_resid_pre | hook_resid_mid | hook_resid_post."""
    drop_first_position: bool = True
    """Qwen's first position is an attention sink with a norm far above the rest."""
    max_norm_ratio: float | None = None
    """Drop tokens whose activation norm, in either model, exceeds this multiple of the batch median
    (massive activations; dictionary_learning uses 10). None keeps every token."""
    store_dtype: str = "bfloat16"
    """dtype of the stored activations: bfloat16 (half the disk), float16 or float32."""
    shard_tokens: int = 1_048_576
    """Tokens per shard (a shard holds whole contexts, so it may exceed this by one batch)."""
    stats_sample_tokens: int = 100_000
    """Random stored tokens used to estimate each model's mean activation norm (stats.json)."""
    backend: str = "hf"
    """hf = forward hooks that stop after layer L (fast); bridge = TransformerBridge run_with_cache."""
    reuse_base: bool = True
    """A named run (a null pair, docs/null.md) copies the base model's rows from the main run's finished
    store instead of running the base model again, when that store was made with the same settings
    (reasondiff/app/reuse.py; every row's token id is checked). Same rows either way."""
    live_buffer_tokens: int = 262_144
    """train.data=live: tokens generated per refill; each refill is shuffled and served once, then
    replaced by activations of the next, never-seen contexts."""

    def __post_init__(self) -> None:
        check_choice("harvest.store_dtype", self.store_dtype, ("bfloat16", "float16", "float32"))
        check_choice("harvest.backend", self.backend, ("hf", "bridge"))
        if not 0.0 <= self.reasoning_fraction <= 1.0:
            raise ValueError(f"harvest.reasoning_fraction must be in [0, 1], got {self.reasoning_fraction}")
        if self.reasoning_fraction > 0 and not self.reasoning_corpus:
            raise ValueError("harvest.reasoning_fraction > 0 needs harvest.reasoning_corpus")
        if self.context_length < 2:
            raise ValueError("harvest.context_length must be >= 2")
        for key in ("n_tokens", "shard_tokens", "stats_sample_tokens", "live_buffer_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"harvest.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_norm_ratio is not None and self.max_norm_ratio <= 1.0:
            raise ValueError(f"harvest.max_norm_ratio must be > 1 (a multiple of the median norm) or null, "
                             f"got {self.max_norm_ratio}")
