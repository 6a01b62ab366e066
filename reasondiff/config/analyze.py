"""Schema of the analyze stage (CE recovery, decoder geometry, latents, Latent Scaling, report)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondiff.config.common import check_reasoning_text


@dataclass
class AnalyzeConfig:
    crosscoder_dir: str | None = None
    """None = the train stage's output; any directory in the train stage's format works
    (crosscoder.safetensors + config.json, e.g. one converted from dictionary_learning)."""
    heldout_corpus: str | None = None
    """None = the harvest corpus, skipping the documents harvest used (held-out by construction).
    Any other dataset (hub id or local file with harvest.text_column) is used from its start."""
    reasoning_text: str = "heldout_rows"
    """Reasoning text analysed beside general text, in the fine-tune's chat layout: heldout_rows
    (rows of finetune.dataset never trained on, per the finetune manifest), on_policy (the tuned
    model's own bench generations on held-out questions) or file (analyze.reasoning_corpus)."""
    reasoning_corpus: str | None = None
    """reasoning_text=file: s1K-style dataset (question + finetune.trace_source's thinking and attempt)."""
    allow_trained_text: bool = False
    """Accept a reasoning_corpus that shares questions with the rows the fine-tune trained on (refused
    by default: it measures memorised rows); every table then labels its rows "trained rows"."""
    n_heldout_contexts: int = 64
    """Held-out general-text contexts for CE/KL recovery, explained variance, latent statistics and Latent Scaling."""
    n_reasoning_contexts: int = 64
    """Reasoning conversations (one per context; 0 skips them) for CE/KL recovery, explained variance
    and the per-class firing comparison."""
    context_length: int = 1024
    """Tokens per analysis context (a longer reasoning conversation loses the middle of its thinking)."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples of the contexts behind the 95% intervals of ce_recovery.csv (0 = no intervals)."""
    exclude_first_position: bool | None = None
    """Leave position 0 untouched and out of every statistic (Qwen's first position is an attention
    sink with a huge norm), and out of the `sink_preserving` CE convention (the `paper` convention
    always follows Kissane's code). None = follow harvest.drop_first_position, i.e. exclude it
    exactly when the crosscoder never saw it."""
    shared_min: float = 0.3
    """Relative decoder norm r in [shared_min, shared_max] = shared latent (the paper: 0.3-0.7)."""
    shared_max: float = 0.7
    """Upper end of the shared band of relative decoder norms (paper: 0.7)."""
    base_only_max: float = 0.1
    """r <= base_only_max = base-only latent (r = ||d_tuned|| / (||d_base|| + ||d_tuned||))."""
    tuned_only_min: float = 0.9
    """r >= tuned_only_min = tuned-only latent."""
    n_top_latents: int = 10
    """How many of the most base-only and of the most tuned-only live latents latents.html shows."""
    n_shared_sample: int = 10
    """How many randomly drawn shared latents latents.html shows (for comparison)."""
    n_contexts_per_latent: int = 8
    """Top-activating contexts kept per latent and per text kind (general, reasoning)."""
    html_window: int = 24
    """Tokens shown on each side of a context's maximally activating token in latents.html."""
    n_logit_tokens: int = 10
    """Top promoted and top suppressed tokens listed per latent and model (direct logit effect of the
    decoder direction through each model's unembedding; latent_logits.csv, latents.html)."""
    latent_scaling: bool = True
    """Latent Scaling (Minder et al. 2025) for every base-only and tuned-only latent."""
    specific_ratio_max: float = 0.2
    """A model-specific latent counts as *truly* specific when the other model needs its direction
    at most this much: nu_error = beta_error(other) / beta_error(own) <= specific_ratio_max."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seed ensemble (docs/null.md): the crosscoders trained with these seeds on the same activations —
    this run's own crosscoder for its `seed`, the sibling run train@seed=S (train@<run>+seed=S) for
    the others, those that have finished — are matched latent by latent; each latent's stability is
    the fraction of the other seeds holding a match. Train them with
    `python -m reasondiff.train -m +exp=NAME seed=1,2`."""
    nulls: list[str] = field(default_factory=lambda: ["base_vs_base", "control"])
    """Null pairs (+null=NAME runs) whose finished crosscoders (train@NAME, train@NAME+seed=S) are
    counted beside this run's in the calibrated table (calibration.csv), which then leads report.md."""
    match_cosine: float = 0.9
    """Two latents of different seeds match when their concatenated decoders [d_base; d_tuned] have
    at least this cosine (one-to-one: reasondiff/crosscoder/matching.py)."""
    stable_fraction: float = 1.0
    """A latent is stable when it has a match in at least this fraction of the other seeds."""
    checkpoint_every: int = 8
    """Save the streaming statistics every this many batches (a killed run resumes from there)."""
    checkpoint_minutes: float = 10.0
    """Also save them when this many minutes have passed since the last save (0 = only every
    checkpoint_every batches): one batch can take minutes, and a pass of fewer batches than
    checkpoint_every would otherwise save nothing until it ends."""

    def __post_init__(self) -> None:
        check_reasoning_text("analyze", self.reasoning_text, self.reasoning_corpus)
        if not 0 <= self.base_only_max < self.shared_min <= self.shared_max < self.tuned_only_min <= 1:
            raise ValueError("analyze thresholds must satisfy 0 <= base_only_max < shared_min <= shared_max "
                             f"< tuned_only_min <= 1, got {self.base_only_max}, {self.shared_min}, "
                             f"{self.shared_max}, {self.tuned_only_min}")
        if self.checkpoint_minutes < 0:
            raise ValueError(f"analyze.checkpoint_minutes must be >= 0, got {self.checkpoint_minutes}")
        for key in ("n_heldout_contexts", "context_length", "n_contexts_per_latent", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"analyze.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_reasoning_contexts", "n_top_latents", "n_shared_sample", "html_window", "bootstrap_samples",
                    "n_logit_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"analyze.{key} must be >= 0, got {getattr(self, key)}")
        if self.context_length < 2:
            raise ValueError("analyze.context_length must be >= 2 (CE needs a next token)")
        if not -1.0 <= self.match_cosine <= 1.0 or not 0.0 < self.stable_fraction <= 1.0:
            raise ValueError(f"analyze.match_cosine must be in [-1, 1] and analyze.stable_fraction in (0, 1], got "
                             f"{self.match_cosine}, {self.stable_fraction}")
        from reasondiff.config.nulls import NULL_PAIRS

        for pair in self.nulls:
            if pair not in NULL_PAIRS:
                raise ValueError(f"analyze.nulls: {pair!r} is not one of {', '.join(NULL_PAIRS)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"analyze.seeds lists a seed twice: {self.seeds}")
        if self.specific_ratio_max < 0:
            raise ValueError(f"analyze.specific_ratio_max must be >= 0, got {self.specific_ratio_max}")
