"""Schema of the scan stage (where in the network the fine-tune changed the model, layer by layer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondiff.config.common import check_choice, check_reasoning_text

DIRECTIONS = ("tuned_into_base", "base_into_tuned")
RECOMMEND_ON = ("reasoning", "reasoning_answer", "general")


@dataclass
class ScanConfig:
    general_corpus: str | None = None
    """General text. None = `harvest.corpus`, from the first document the finished harvest did not use
    (held-out text, packed exactly like harvest); any other hub id / local file (column
    `harvest.text_column`) is read from its start."""
    reasoning_text: str = "heldout_rows"
    """Reasoning text, in the fine-tune's chat layout (tokenized exactly as SFT tokenized it):
    heldout_rows (rows of finetune.dataset never trained on, per the finetune manifest), on_policy
    (the tuned model's own bench generations on held-out questions) or file (scan.reasoning_corpus)."""
    reasoning_corpus: str | None = None
    """reasoning_text=file: s1K-style rows (question, thinking trace, attempt; fields follow
    `finetune.trace_source`)."""
    reasoning_split: str = "train"
    """Split of a hub `scan.reasoning_corpus` (ignored for local files)."""
    allow_trained_text: bool = False
    """Accept a reasoning_corpus that shares questions with the rows the fine-tune trained on (refused
    by default: it measures memorised rows); scan.csv then labels its rows "trained rows"."""
    n_general_contexts: int = 16
    """General-text contexts of `context_length` tokens (representation metrics and clean KL on all)."""
    n_reasoning_contexts: int = 16
    """Reasoning conversations (0 = general text only)."""
    context_length: int = 256
    """Tokens per general context; a longer conversation loses the middle of its thinking so that
    the question, the end of the thinking and the whole answer fit (finetune's `keep_answer`)."""
    patch_contexts: int = 4
    """Contexts per text (the first ones) on which every layer is activation-patched in each of
    `directions`: the expensive part of the scan (about N/2 forwards plus N+1 unembeddings per
    context and direction for an N-layer model). 0 = representation metrics only. The fractions'
    intervals are over these contexts: two give an interval, but a wide and rough one."""
    patch_batch_size: int = 1
    """Contexts per patching batch. The batch is replicated once per patched layer (N+1 copies), so
    1 already gives (N+1) x context_length rows per forward."""
    directions: list[str] = field(default_factory=lambda: list(DIRECTIONS))
    """tuned_into_base: the base model continues from the tuned model's residual at layer L;
    base_into_tuned: the reverse. Both report the fraction of KL(base || tuned) the patch closes."""
    component_sites: bool = True
    """Also compare attention and MLP outputs of every block (blocks.L.hook_attn_out / hook_mlp_out),
    read in the same forward as the residual stream; the residual stream is always compared."""
    exclude_first_position: bool | None = None
    """Leave position 0 (Qwen's attention sink, norm far above the rest) out of every statistic.
    None = follow `harvest.drop_first_position`. Massive-activation tokens are left out of the
    representation metrics exactly when `harvest.max_norm_ratio` is set, by the same rule."""
    large_effect: float = 0.5
    """A layer's causal effect is large when patching the tuned model's residual stream at that
    layer into the base model closes at least this fraction of KL(base || tuned)."""
    recommend_on: str = "reasoning"
    """Which text's tuned_into_base curve the recommendation reads: reasoning (every token of the
    conversations), reasoning_answer (only the tokens of the s1 answer block) or general. Falls back
    to general text when no reasoning text is scanned."""
    min_kl: float = 1e-6
    """Mean KL(base || tuned) in nats per token below which the two models count as identical on that
    text: the fractions are undefined (empty cells) and nothing is recommended."""
    checkpoint_every: int = 4
    """Save the streamed sums every this many batches (a killed scan resumes from there)."""
    checkpoint_minutes: float = 10.0
    """Also save them when this many minutes have passed since the last save (0 = only every
    checkpoint_every batches): one batch can take minutes, and a pass of fewer batches than
    checkpoint_every would otherwise save nothing until it ends."""
    bootstrap_samples: int = 1000
    """Resamples of the patched contexts for the 95% bootstrap intervals of the fractions closed
    (seeded by `seed`). With fewer than two patched contexts there is no interval."""

    def __post_init__(self) -> None:
        check_reasoning_text("scan", self.reasoning_text, self.reasoning_corpus)
        for direction in self.directions:
            check_choice("scan.directions", direction, DIRECTIONS)
        if len(set(self.directions)) != len(self.directions):
            raise ValueError(f"scan.directions lists a direction twice: {self.directions}")
        check_choice("scan.recommend_on", self.recommend_on, RECOMMEND_ON)
        if self.bootstrap_samples < 100:
            raise ValueError(f"scan.bootstrap_samples must be >= 100, got {self.bootstrap_samples}")
        if self.checkpoint_minutes < 0:
            raise ValueError(f"scan.checkpoint_minutes must be >= 0, got {self.checkpoint_minutes}")
        for key in ("n_general_contexts", "context_length", "patch_batch_size", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"scan.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_reasoning_contexts", "patch_contexts"):
            if getattr(self, key) < 0:
                raise ValueError(f"scan.{key} must be >= 0, got {getattr(self, key)}")
        if self.context_length < 8:
            raise ValueError(f"scan.context_length must be >= 8 (CKA needs 4+ tokens per batch), got {self.context_length}")
        if not 0.0 < self.large_effect <= 1.0:
            raise ValueError(f"scan.large_effect must be in (0, 1], got {self.large_effect}")
        if self.min_kl < 0:
            raise ValueError(f"scan.min_kl must be >= 0, got {self.min_kl}")
