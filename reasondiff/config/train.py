"""Schema of the train stage (sparse crosscoder)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondiff.config.common import check_choice


@dataclass
class SyntheticConfig:
    """Planted features for `train.data=synthetic` (recovery check with known ground truth)."""

    d_model: int = 64
    """Width of the planted activations."""
    n_shared: int = 48
    """Features both models have with the same direction."""
    n_base_only: int = 16
    """Features only the base model has."""
    n_tuned_only: int = 16
    """Features only the tuned model has."""
    n_rotated: int = 16
    """Shared features whose tuned direction is rotated away from the base one."""
    n_near_duplicate: int = 0
    """Features the fine-tune changed a little: same events in both models, tuned direction at a
    cosine in [near_duplicate_cosine_min, near_duplicate_cosine_max] to the base one (issue 17)."""
    near_duplicate_cosine_min: float = 0.8
    """Smallest cosine between a near-duplicate's base and tuned directions."""
    near_duplicate_cosine_max: float = 0.95
    """Largest cosine between a near-duplicate's base and tuned directions."""
    firing_probability: float = 0.02
    """Probability that a feature fires on a token."""
    noise_std: float = 0.01
    """Gaussian noise added to every activation."""
    n_tokens: int = 400_000
    """Planted tokens generated (the stream cycles over them)."""
    rotated_cosine: float = 0.5
    """Cosine between the base and tuned directions of a rotated feature."""
    tuned_scale: float = 2.0
    """The tuned model's activations are this much larger (exercises the per-model scaling factors)."""

    def __post_init__(self) -> None:
        if self.d_model < 2 or min(self.n_shared, self.n_base_only, self.n_tuned_only, self.n_rotated,
                                   self.n_near_duplicate) < 0:
            raise ValueError("train.synthetic: d_model must be >= 2 and feature counts >= 0")
        if not -1.0 <= self.near_duplicate_cosine_min <= self.near_duplicate_cosine_max <= 1.0:
            raise ValueError("train.synthetic: need -1 <= near_duplicate_cosine_min <= near_duplicate_cosine_max <= 1")
        if not 0.0 < self.firing_probability <= 1.0:
            raise ValueError("train.synthetic.firing_probability must be in (0, 1]")
        if not -1.0 <= self.rotated_cosine <= 1.0 or self.tuned_scale <= 0:
            raise ValueError("train.synthetic: rotated_cosine must be in [-1, 1] and tuned_scale > 0")


@dataclass
class TrainConfig:
    data: str = "store"
    """store = harvest's shards; live = run both models on the fly; synthetic = planted features."""
    variant: str = "l1"
    """l1 (the paper: L1 penalty weighted by decoder norms) or batchtopk (Minder et al. 2025)."""
    n_latents: int | None = None
    """None = expansion_factor x d_model (d_model read from the data)."""
    expansion_factor: int = 16
    """Latents per residual dimension when n_latents is None (paper: 16)."""
    l1_coeff: float = 2.0
    """λ, the sparsity penalty's weight at the end of its warm-up (paper: 2)."""
    k: int = 100
    """batchtopk: active latents per token, on average over the batch."""
    aux_k_coeff: float = 1.0 / 32
    """batchtopk: weight of the AuxK loss on dead latents (Gao et al. 2024: 1/32)."""
    lr: float = 5e-5
    """Adam learning rate (paper: 5e-5)."""
    batch_size: int = 4096
    """Tokens per optimizer step (paper: 4096)."""
    n_tokens: int = 50_000_000
    """Training tokens; steps = n_tokens // batch_size."""
    l1_warmup_frac: float = 0.05
    """λ ramps linearly from 0 over this fraction of the steps (paper: 0.05)."""
    lr_decay_start_frac: float = 0.8
    """The lr is constant until this fraction of the steps, then decays linearly to 0."""
    dec_init_norm: float = 0.08
    """Initial norm of each decoder row (replication: 0.08; training is sensitive to it)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    log_every: int = 100
    """Log metrics every this many steps."""
    checkpoint_every: int = 1000
    """Save checkpoint.pt (resumable) every this many steps."""
    keep_checkpoint: bool = False
    """Keep checkpoint.pt (weights + Adam state, ~4x the crosscoder) after a finished run."""
    compile: bool = False
    """torch.compile the forward + loss (needs a C compiler on CPU; worth it on GPU)."""
    dead_tokens: int = 10_000_000
    """A latent that has not fired for this many training tokens counts as dead (logged; batchtopk's AuxK target)."""
    aux_k: int | None = None
    """batchtopk AuxK: dead latents used per token; None = d_model // 2 (Gao et al. 2024)."""
    threshold_beta: float = 0.999
    """batchtopk: EMA factor of the inference threshold."""
    threshold_start_step: int = 1000
    """batchtopk: start tracking the threshold here (capped at 10% of the steps)."""
    eval_tokens: int = 65_536
    """Tokens of the final evaluation written to summary.json (L0, FVU, explained variance), held out
    from training: the fewest last store shards holding them (train.data=store; docs/train.md)."""
    sparse: str = "auto"
    """Training step over the active (token, latent) pairs only (same result as the dense step up to
    float rounding): on | off | auto = on for a CPU step whose measured density L0/n_latents is at
    most `sparse_max_density` (see docs/train.md)."""
    sparse_max_density: float = 0.05
    """auto: the largest L0/n_latents at which the sparse step is used (measured crossover: 10-12%)."""
    sparse_kernel: str = "auto"
    """What runs the sparse step's pairs products on a CPU (same numbers up to float rounding):
    cpp = the C++/OpenMP kernels (compiled once per machine into torch's extension cache; needs a
    C++ compiler with OpenMP and ninja; an error if they cannot be built) | torch = torch ops
    (embedding_bag) | auto = cpp where it builds, else torch with one logged warning. A GPU always
    uses torch ops (see docs/train.md)."""
    shared_latents: float = 0.0
    """Fraction of the dictionary designated shared (Anthropic, Feb 2025): one decoder vector tied
    across both models and a reduced sparsity penalty. 0 = none (the paper); e.g. 0.05."""
    shared_penalty_ratio: float = 0.15
    """λ_shared / λ for the designated shared latents (Anthropic: about 0.1-0.2; l1 variant)."""
    reconstruction_loss: str = "squared"
    """squared = Σ_m ||x_m − x̂_m||², mean over tokens (the paper); unsquared = ||x_m − x̂_m|| averaged
    over tokens and models (the dictionary_learning fork's trainers, Minder et al. 2025)."""
    aux_k_style: str = "scaled"
    """batchtopk AuxK: scaled = dead latents ranked by pre-activation, loss x min(n_dead/aux_k, 1)
    (sparsify); fork = ranked by ReLU(pre)·Σ_m||d||, unscaled, dead counters updated with the
    current batch first (dictionary_learning's BatchTopK trainer)."""
    b_dec_init: str = "zeros"
    """zeros (the paper) | geometric_median of the first normalised batch, per model (the fork)."""
    lr_warmup_steps: int = 0
    """Linear lr warm-up step/lr_warmup_steps over the first steps (the fork: 1000; the paper: 0)."""
    same_init_across_models: bool = False
    """Initialise each latent with one decoder direction for both models (the fork's
    same_init_for_all_layers, as Minder et al. trained); default: one random direction per model."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        check_choice("train.data", self.data, ("store", "live", "synthetic"))
        check_choice("train.variant", self.variant, ("l1", "batchtopk"))
        if self.l1_coeff < 0:
            raise ValueError(f"train.l1_coeff must be >= 0, got {self.l1_coeff}")
        for key in ("l1_warmup_frac", "lr_decay_start_frac"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"train.{key} must be in [0, 1]")
        if self.batch_size < 1 or self.n_tokens < self.batch_size:
            raise ValueError("train.n_tokens must be >= train.batch_size >= 1")
        if self.variant == "batchtopk" and self.k < 1:
            raise ValueError(f"train.k must be >= 1, got {self.k}")
        for key in ("log_every", "checkpoint_every", "dead_tokens", "eval_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.dec_init_norm <= 0 or self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("train.dec_init_norm, train.lr and train.grad_clip must be > 0")
        if self.n_latents is not None and self.n_latents < 1:
            raise ValueError("train.n_latents must be >= 1 (or null for expansion_factor x d_model)")
        check_choice("train.sparse", self.sparse, ("auto", "on", "off"))
        check_choice("train.sparse_kernel", self.sparse_kernel, ("auto", "cpp", "torch"))
        check_choice("train.reconstruction_loss", self.reconstruction_loss, ("squared", "unsquared"))
        check_choice("train.aux_k_style", self.aux_k_style, ("scaled", "fork"))
        check_choice("train.b_dec_init", self.b_dec_init, ("zeros", "geometric_median"))
        if not 0.0 <= self.sparse_max_density <= 1.0:
            raise ValueError(f"train.sparse_max_density must be in [0, 1], got {self.sparse_max_density}")
        if not 0.0 <= self.shared_latents < 1.0:
            raise ValueError(f"train.shared_latents must be a fraction in [0, 1), got {self.shared_latents}")
        if self.shared_penalty_ratio <= 0:
            raise ValueError(f"train.shared_penalty_ratio must be > 0, got {self.shared_penalty_ratio}")
        if self.lr_warmup_steps < 0 or self.lr_warmup_steps >= self.n_tokens // self.batch_size:
            raise ValueError(f"train.lr_warmup_steps={self.lr_warmup_steps} must be >= 0 and below the "
                             f"{self.n_tokens // self.batch_size} training steps (n_tokens // batch_size)")

    def n_shared_latents(self, n_latents: int) -> int:
        """How many of `n_latents` are designated shared (at least one when the fraction is > 0)."""
        return max(1, round(self.shared_latents * n_latents)) if self.shared_latents > 0 else 0
