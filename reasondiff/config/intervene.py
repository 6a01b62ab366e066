"""Schema of the intervene stage (causal tests of the latents at the crosscoder's hook, docs/intervene.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondiff.config.bench import TASKS
from reasondiff.config.common import check_choice

SELECTIONS = ("tuned_r", "base_r", "delta", "selectivity", "nu", "shared")
"""How latent sets are chosen (each taken at every size of `intervene.set_sizes`):
tuned_r / base_r = highest / lowest relative decoder norm r; delta = highest Minder et al.'s Δ;
selectivity = firing frequency on reasoning ÷ on general text; nu = the tuned-only latents the base
model needs least (lowest Latent Scaling ν_error); shared = the designated shared latents."""
STEER_DIRECTIONS = ("adl_general", "adl_reasoning", "top_latent")
"""adl_general / adl_reasoning: the Activation Difference Lens vector of general / reasoning text;
top_latent: the tuned decoder vector of the most tuned-leaning live latent."""
STEER_POSITIONS = ("all", "prompt")
ADL_REASONING_WINDOWS = ("assistant", "start")


@dataclass
class InterveneConfig:
    n_general_contexts: int = 32
    """Held-out general-text contexts (analyze's source: the harvest corpus after the documents harvest used,
    or analyze.heldout_corpus): the CE change each intervention causes, and the ADL vector of general text."""
    n_reasoning_contexts: int = 32
    """Reasoning conversations in the fine-tune's layout (analyze.reasoning_corpus, as analyze reads it): the
    fraction of KL(base ‖ tuned) each intervention closes, and the ADL vector of reasoning text. 0 = none."""
    context_length: int = 512
    """Tokens per context (a longer conversation loses the middle of its thinking, as in analyze)."""
    selections: list[str] = field(default_factory=lambda: list(SELECTIONS))
    """Latent-set rules, each at every size of set_sizes: tuned_r, base_r, delta, selectivity, nu, shared
    (a rule with no candidate, e.g. shared without designated shared latents, is skipped and said so; so is a
    rule that picks an earlier rule's latents at every size: delta ranks as tuned_r)."""
    set_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    """Latents per set (a rule with fewer candidates is taken whole, once)."""
    n_random_sets: int = 5
    """Random control sets per rule and size, each matched latent by latent to the selected set's activation
    frequency (on reasoning text when read, else general): the null every selection is read against."""
    random_match_pool: int = 8
    """Each random latent is drawn from the this-many live latents nearest in log frequency to its selected
    counterpart (outside the selected set)."""
    adl_positions: int = 5
    """k: tuned − base is averaged over the first k positions of each context (of each assistant turn on reasoning
    text: adl_reasoning_window), one vector per position and their mean over the positions the crosscoder covers
    (the Activation Difference Lens of Minder and colleagues, 2025)."""
    adl_reasoning_window: str = "assistant"
    """Where the reasoning lens's k positions start: `assistant` = at the first token of each conversation's
    assistant turn (after the chat template's generation prompt), as the reference code places its window
    on chat data (a conversation whose assistant turn has fewer than k tokens in the context is skipped and
    counted); `start` = the conversation's first k tokens (the chat template's opening, the same in every
    conversation: earlier runs). General text always reads its first k positions."""
    adl_steer_position: int | None = None
    """Which ADL vector steers: None = the mean over the first adl_positions positions; an int = that
    position's own vector (the paper steers with one position's vector)."""
    n_logit_tokens: int = 20
    """Top promoted and suppressed tokens per ADL vector in adl_tokens.csv (logit lens through each model's
    final norm and unembedding)."""
    steer_directions: list[str] = field(default_factory=lambda: list(STEER_DIRECTIONS))
    """Directions added to the base model's residual: adl_general, adl_reasoning, top_latent."""
    steer_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    """α grid: the vector added is α × the direction's typical norm (ADL: the mean difference's own norm, so
    α = 1 adds the mean difference; a latent: its mean activation × its decoder norm, in raw units)."""
    n_random_directions: int = 3
    """The null of steering: per steering direction, this many random unit directions (isotropic Gaussian,
    seeded by (seed, the direction's name, the index)), each added at every α with the SAME typical norm as
    the direction it controls (selection = random, matched_to = the direction in intervene.csv); a direction
    beats them when its interval's low end lies above every one. 0 = none."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples of the contexts (questions) behind every 95% interval of intervene.csv (0 = none)."""
    min_kl: float = 1e-6
    """Mean KL(base ‖ tuned) in nats per prediction below which the models count as identical on a text:
    fractions of it are undefined (empty cells)."""
    bench: bool = True
    """Run the bench's prefix-mode budget sweep on the intervened models (base + patch_set of the best
    selection at its largest size, base + steer along the ADL vector, tuned + ablate_set of that set) beside
    the un-intervened base and tuned models: bench_intervened/."""
    bench_tasks: list[str] | None = None
    """Tasks of the budget sweep (None = bench.tasks)."""
    bench_n: int | None = 20
    """Questions per task: the first bench_n of the bench's own seeded subset (bench.limit, bench.seed);
    None = all of it."""
    bench_limit: int | None = None
    """Largest token limit swept: bench.token_limits up to this one (None = all of them)."""
    bench_random_control: bool = True
    """Also sweep the patch and the ablation of a random set of the same size, matched on frequency to the best
    selection (base+patch_random, tuned+ablate_random): the null of the budget sweep."""
    bench_steer_alpha: float = 1.0
    """α of the ADL steering in the budget sweep (see steer_alphas)."""
    bench_steer_direction: str = "adl_general"
    """Which direction steers the base model in the budget sweep (adl_general, adl_reasoning, top_latent;
    adl_reasoning falls back to adl_general when no reasoning text is read). Default: the general-text ADL
    vector, the one the reference steers with (diffing-toolkit's ADL `steering.py`: ordinary-text vectors;
    the v3 real-model run's adl_reasoning, read at the chat template's opening, moved the base away)."""
    bench_steer_positions: str = "all"
    """all = every position the crosscoder covers, prompt and generated tokens; prompt = the prompt only."""
    checkpoint_every: int = 4
    """Save the streamed sums every this many batches (a killed run resumes from there)."""
    checkpoint_minutes: float = 10.0
    """Also save them when this many minutes have passed since the last save (0 = only every
    checkpoint_every batches): one batch can take minutes, and a pass of fewer batches than
    checkpoint_every would otherwise save nothing until it ends."""

    def __post_init__(self) -> None:
        for rule in self.selections:
            check_choice("intervene.selections", rule, SELECTIONS)
        for direction in (*self.steer_directions, self.bench_steer_direction):
            check_choice("intervene.steer_directions", direction, STEER_DIRECTIONS)
        check_choice("intervene.bench_steer_positions", self.bench_steer_positions, STEER_POSITIONS)
        check_choice("intervene.adl_reasoning_window", self.adl_reasoning_window, ADL_REASONING_WINDOWS)
        for task in self.bench_tasks or ():
            check_choice("intervene.bench_tasks", task, TASKS)
        if len(set(self.selections)) != len(self.selections):
            raise ValueError(f"intervene.selections lists a rule twice: {self.selections}")
        if not self.set_sizes or any(n < 1 for n in self.set_sizes) or len(set(self.set_sizes)) != len(self.set_sizes):
            raise ValueError(f"intervene.set_sizes must be distinct sizes >= 1, got {self.set_sizes}")
        for key in ("n_general_contexts", "adl_positions", "random_match_pool", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"intervene.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_reasoning_contexts", "n_random_sets", "n_random_directions", "n_logit_tokens", "bootstrap_samples",
                    "checkpoint_minutes"):
            if getattr(self, key) < 0:
                raise ValueError(f"intervene.{key} must be >= 0, got {getattr(self, key)}")
        if self.context_length < max(2, self.adl_positions):
            raise ValueError(f"intervene.context_length must be >= 2 and >= adl_positions, got {self.context_length}")
        if self.adl_steer_position is not None and not 0 <= self.adl_steer_position < self.adl_positions:
            raise ValueError(f"intervene.adl_steer_position must be in [0, adl_positions), got {self.adl_steer_position}")
        if any(a < 0 for a in self.steer_alphas) or self.bench_steer_alpha < 0:
            raise ValueError("intervene.steer_alphas and bench_steer_alpha must be >= 0")
        for key in ("bench_n", "bench_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"intervene.{key} must be >= 1 or null, got {getattr(self, key)}")
        if self.min_kl < 0:
            raise ValueError(f"intervene.min_kl must be >= 0, got {self.min_kl}")
