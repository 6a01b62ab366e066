"""The sparse crosscoder over a (base, tuned) pair of residual activations.

f = ReLU(Σ_m x_m W_enc[m] + b_enc),   x̂_m = f W_dec[:, m] + b_dec[m]      (Lindsey et al. 2024)

Tensors are kept in the layout of the Kissane/Nanda replication, so their notebooks and published
crosscoders interoperate: W_enc [n_models, d_model, n_latents], W_dec [n_latents, n_models, d_model],
b_enc [n_latents], b_dec [n_models, d_model]. That layout is also the fast one: W_enc viewed as
[n_models·d_model, n_latents] and W_dec as [n_latents, n_models·d_model] make encode and decode one
GEMM each over the concatenated pair (no per-model einsum, no sum over models afterwards).

The crosscoder lives in a *normalised* space: raw activations are multiplied by per-model
`scaling_factors` (mean norm → sqrt(d_model), harvest's stats.json) before encoding, and
reconstructions are divided by them before being spliced back into a model. The factors are a
separate buffer, never folded into the saved weights: relative decoder norms must be read from the
unfolded decoder (folding different factors into W_dec moves every relative norm).

Designated shared latents (Anthropic, "Insights on Crosscoder Model Diffing", Feb 2025): the first
`n_shared_latents` latents have ONE decoder vector used by every model, and a sparsity penalty
reduced by `shared_penalty_ratio` (λ_shared / λ), so structure both models share has a cheap home
and the other latents are free to become model-specific. They are stored as identical per-model
rows of W_dec, so every reader of the plain layout still works; training keeps the rows tied.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reasondiff.config.common import check_choice
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError

WEIGHTS_FILE = "crosscoder.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
CHECKSUM_KEY = "weights_sha256"
"""config.json's record of the weights file's sha256 (written by `CrossCoder.save`, like harvest's
shard checksums in store.json), checked on load: a damaged file is named, never read as other numbers."""


@dataclass
class CrossCoderConfig:
    d_model: int
    n_latents: int
    n_models: int = 2
    variant: str = "l1"
    """l1 = ReLU + L1 penalty weighted by decoder norms (the paper); batchtopk = Minder et al. 2025."""
    k: int = 100
    """batchtopk: active latents per token, on average over a batch."""
    dec_init_norm: float = 0.08
    """Initial norm of every decoder row W_dec[i, m] ("very sensitive", Kissane/Nanda: 0.08)."""
    same_init_across_models: bool = False
    """Start every latent with the same decoder direction in every model (the fork's
    `same_init_for_all_layers`); the default draws one random direction per model."""
    n_shared_latents: int = 0
    """Designated shared latents: latents 0..n-1 have one decoder vector tied across the models."""
    shared_penalty_ratio: float = 1.0
    """λ_shared / λ: the designated shared latents' L1 penalty factor (l1 variant only: BatchTopK has
    no per-latent penalty, and ranking designated latents ahead by 1/ρ, its nearest analogue, let them
    take the exclusive features' slots on the synthetic source; docs/train.md)."""

    def __post_init__(self) -> None:
        check_choice("train.variant", self.variant, ("l1", "batchtopk"))
        for key in ("d_model", "n_latents", "n_models", "k"):
            if getattr(self, key) < 1:
                raise ValueError(f"crosscoder {key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.n_shared_latents <= self.n_latents:
            raise ValueError(f"crosscoder n_shared_latents must be in [0, n_latents], got {self.n_shared_latents}")
        if self.shared_penalty_ratio <= 0:
            raise ValueError(f"crosscoder shared_penalty_ratio must be > 0, got {self.shared_penalty_ratio}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrossCoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def decoder_norm_sum(W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_m ||W_dec[i, m]|| per latent: the weight of latent i in the L1 penalty and in BatchTopK."""
    return W_dec.norm(dim=-1).sum(dim=-1)


def penalty_factors(cfg: CrossCoderConfig, device: torch.device | None = None) -> torch.Tensor | None:
    """Per-latent factor of the L1 penalty: `shared_penalty_ratio` on the designated shared latents,
    1 elsewhere; None when there is nothing to scale (or no L1 penalty: batchtopk)."""
    if cfg.variant != "l1" or cfg.n_shared_latents == 0 or cfg.shared_penalty_ratio == 1.0:
        return None
    factors = torch.ones(cfg.n_latents, device=device)
    factors[:cfg.n_shared_latents] = cfg.shared_penalty_ratio
    return factors


def batch_topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k·B largest of `scores` [B, F] over the whole batch (BatchTopK, Bussmann et al. 2024)."""
    n_keep = min(k * scores.shape[0], scores.numel())
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(n_keep, sorted=False).indices] = True
    return mask.view_as(scores) & (scores > 0)


def fold_scaling_factors(W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                         scaling_factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights that act on RAW activations: W_enc[m]·s_m, W_dec[:, m]/s_m, b_dec[m]/s_m.

    Latents and de-normalised reconstructions are unchanged; relative decoder norms are NOT
    (read them from the unfolded weights).
    """
    s = scaling_factors.to(W_enc.dtype)
    return W_enc * s[:, None, None], W_dec / s[None, :, None], b_dec / s[:, None]


def unfold_scaling_factors(W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                           scaling_factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fold_scaling_factors`: back to the normalised space the crosscoder was trained in."""
    s = scaling_factors.to(W_enc.dtype)
    return W_enc / s[:, None, None], W_dec * s[None, :, None], b_dec * s[:, None]


class CrossCoder(nn.Module):
    """Crosscoder in the normalised space; `normalise`/`denormalise` convert from/to raw activations."""

    def __init__(self, cfg: CrossCoderConfig):
        super().__init__()
        self.cfg = cfg
        M, d, F = cfg.n_models, cfg.d_model, cfg.n_latents
        # Kissane/Nanda init: random decoder directions of norm dec_init_norm, encoder = decoder^T.
        W_dec = torch.randn(F, M, d)
        if cfg.same_init_across_models:
            W_dec[:, 1:] = W_dec[:, :1]
        W_dec[:cfg.n_shared_latents, 1:] = W_dec[:cfg.n_shared_latents, :1]  # one tied vector
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * cfg.dec_init_norm
        self.W_dec = nn.Parameter(W_dec)
        # W_enc is read as [n_models, d_model, n_latents] but the parameter is stored latent-major,
        # [n_latents, n_models, d_model] like W_dec: the sparse training step computes the encoder
        # gradient one latent at a time, the encoder GEMM reads either layout equally fast, and the
        # fused Adam kernel wants a contiguous parameter (it copies a transposed one every step).
        self.W_enc_by_latent = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.b_dec = nn.Parameter(torch.zeros(M, d))
        self.register_buffer("scaling_factors", torch.ones(M))
        # batchtopk: f_i counts at inference when f_i·Σ_m||d_i,m|| > threshold (tracked in training).
        # -1 (never trained) keeps every positive activation, like the dictionary_learning fork.
        self.register_buffer("threshold", torch.tensor(-1.0))

    @property
    def W_enc(self) -> torch.Tensor:
        """[n_models, d_model, n_latents] (Kissane/Nanda layout): a view of `W_enc_by_latent`, so
        in-place writes and autograd go to the parameter."""
        return self.W_enc_by_latent.permute(1, 2, 0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts written before the latent-major storage hold W_enc [n_models, d_model, n_latents]
        old = state_dict.pop(prefix + "W_enc", None)
        if old is not None and prefix + "W_enc_by_latent" not in state_dict:
            state_dict[prefix + "W_enc_by_latent"] = old.permute(2, 0, 1).contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def designated_shared(self) -> torch.Tensor:
        """Bool [n_latents]: the designated shared latents (one decoder vector for every model)."""
        mask = torch.zeros(self.cfg.n_latents, dtype=torch.bool, device=self.W_dec.device)
        mask[:self.cfg.n_shared_latents] = True
        return mask

    def check_pair(self, x: torch.Tensor, what: str = "activations") -> None:
        """One line naming the expected shape: a crosscoder reads both models' activations at once."""
        M, d = self.cfg.n_models, self.cfg.d_model
        if x.dim() < 2 or tuple(x.shape[-2:]) != (M, d):
            raise ValueError(f"{what} of shape {list(x.shape)}: the crosscoder reads [batch, {M}, {d}] "
                             f"([..., n_models, d_model]: every model's activation of the same token, stacked "
                             f"with torch.stack([base, tuned], dim=-2))")

    # --- normalised space <-> raw activations -------------------------------------------------
    def normalise(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Raw activations [..., n_models, d] -> the space the crosscoder works in."""
        self.check_pair(x_raw)
        return x_raw * self.scaling_factors.to(x_raw.dtype)[:, None]

    def denormalise(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Undo `normalise` (before splicing a reconstruction back into a model)."""
        return x_norm / self.scaling_factors.to(x_norm.dtype)[:, None]

    # --- the model ----------------------------------------------------------------------------
    def pre_activations(self, x_norm: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """Σ_m x_m W_enc[m] + b_enc as ONE GEMM: [.., M·d] @ [M·d, F]. `with_bias=False`: the product
        alone, for a caller that adds b_enc where it reads the result (the sparse step's pairs scan)."""
        M, d, F = self.cfg.n_models, self.cfg.d_model, self.cfg.n_latents
        self.check_pair(x_norm)
        lead = x_norm.shape[:-2]
        flat = x_norm.reshape(-1, M * d)
        W_enc = self.W_enc.reshape(M * d, F).to(flat.dtype)
        pre = torch.addmm(self.b_enc.to(flat.dtype), flat, W_enc) if with_bias else flat @ W_enc
        return pre.view(*lead, F)

    def encode(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Latent activations f [..., n_latents] (batchtopk: inference threshold, not the batch top-k)."""
        f = torch.relu(self.pre_activations(x_norm))
        if self.cfg.variant == "batchtopk":
            f = f * (f * decoder_norm_sum(self.W_dec).to(f.dtype) > self.threshold)
        return f

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """f [..., F] -> reconstruction [..., n_models, d] in the normalised space, as ONE GEMM."""
        M, d, F = self.cfg.n_models, self.cfg.d_model, self.cfg.n_latents
        lead = f.shape[:-1]
        flat = f.reshape(-1, F)
        out = torch.addmm(self.b_dec.reshape(M * d).to(flat.dtype), flat, self.W_dec.reshape(F, M * d).to(flat.dtype))
        return out.view(*lead, M, d)

    def forward(self, x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x_norm)
        return self.decode(f), f

    # --- raw-space convenience ----------------------------------------------------------------
    def folded_weights(self) -> dict[str, torch.Tensor]:
        """W_enc, W_dec, b_enc, b_dec acting on raw activations (for exporters, never for geometry)."""
        W_enc, W_dec, b_dec = fold_scaling_factors(self.W_enc.detach(), self.W_dec.detach(),
                                                   self.b_dec.detach(), self.scaling_factors)
        return {"W_enc": W_enc, "W_dec": W_dec, "b_enc": self.b_enc.detach().clone(), "b_dec": b_dec}

    @torch.no_grad()
    def set_folded_weights(self, W_enc: torch.Tensor, W_dec: torch.Tensor, b_enc: torch.Tensor,
                           b_dec: torch.Tensor, scaling_factors: torch.Tensor) -> None:
        """Load raw-space weights, unfolding them with `scaling_factors` into the normalised space."""
        W_enc, W_dec, b_dec = unfold_scaling_factors(W_enc, W_dec, b_dec, scaling_factors)
        self.W_enc.copy_(W_enc)
        self.W_dec.copy_(W_dec)
        self.b_enc.copy_(b_enc)
        self.b_dec.copy_(b_dec)
        self.scaling_factors.copy_(scaling_factors)

    # --- checkpoint format --------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: p.detach().float().contiguous().cpu() for name, p in
               (("W_enc", self.W_enc), ("W_dec", self.W_dec), ("b_enc", self.b_enc), ("b_dec", self.b_dec))}
        out["scaling_factors"] = self.scaling_factors.detach().float().cpu().contiguous()
        if self.cfg.variant == "batchtopk":
            out["threshold"] = self.threshold.detach().float().cpu().reshape(1).contiguous()
        return out

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write `crosscoder.safetensors` + `config.json` (each atomically; the config, written
        last, is also embedded in the safetensors metadata so a torn pair is detected on load, and
        records the weights' sha256 so a file damaged later is caught by `verify_crosscoder`)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        meta = {"config": json.dumps(asdict(self.cfg), sort_keys=True)}
        artifacts.atomic_save(directory / WEIGHTS_FILE, lambda path: save_file(self.tensors(), path, metadata=meta))
        config = {"format_version": FORMAT_VERSION, **asdict(self.cfg),
                  # explicit, for readers that know nothing of n_shared_latents
                  "designated_shared_latents": list(range(self.cfg.n_shared_latents)), **(extra or {}),
                  CHECKSUM_KEY: artifacts.sha256_file(directory / WEIGHTS_FILE)}
        artifacts.write_json(directory / CONFIG_FILE, config)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None, *,
             verify: bool = True) -> CrossCoder:
        """Read a saved crosscoder. `verify` (the default) checks the weights against the sha256 that
        `save` recorded; every damage (a torn, truncated or foreign file, non-finite or all-zero
        weights) is one UserError naming the file and what to do."""
        directory = Path(directory)
        weights, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
        if not weights.is_file() or not config_path.is_file():
            raise UserError(f"no crosscoder in {directory} (needs {WEIGHTS_FILE} + {CONFIG_FILE}); "
                            "run the train stage or point analyze.crosscoder_dir at a trained one")
        recorded = _read_config(config_path)
        if verify:
            verify_checksum(directory, recorded)
        cfg = _config_from(recorded, config_path)
        meta, state = _read_weights(weights)
        # from_dict fills keys added since the file was written with their defaults, so older
        # crosscoders keep loading
        if "config" in meta and _config_from(json.loads(meta["config"]), weights) != cfg:
            raise UserError(f"{config_path} does not match {weights} (interrupted save?): re-run train")
        model = cls(cfg)
        expected = {name: tuple(t.shape) for name, t in model.tensors().items()}
        got = {name: tuple(t.shape) for name, t in state.items() if name in expected}
        if got != expected:
            raise UserError(f"{weights}: tensor shapes {got} do not match its config {expected}")
        check_weights(state, weights)
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors"):
                getattr(model, name).copy_(state[name])
            if "threshold" in state:
                model.threshold.copy_(state["threshold"].reshape(()))
        return model.to(device) if device is not None else model


# --- damage checks (train, analyze, intervene and convert read crosscoders through these) -----------
REDO = ("re-run the stage that wrote it (train with overwrite=true, or convert again), or copy an intact "
        "crosscoder there")


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        recorded = artifacts.read_json(config_path)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{config_path} is not valid JSON ({type(err).__name__}: {err}): the crosscoder's config "
                        f"is damaged; {REDO}") from err
    if not isinstance(recorded, dict):
        raise UserError(f"{config_path} holds no crosscoder config (a JSON {type(recorded).__name__}); {REDO}")
    return recorded


def _config_from(recorded: dict[str, Any], where: Path) -> CrossCoderConfig:
    try:
        return CrossCoderConfig.from_dict(recorded)
    except (TypeError, KeyError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{where}: not a crosscoder config ({err}); {REDO}") from err


def _read_weights(weights: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(header metadata, tensors); a file safetensors cannot parse is one line, not its traceback."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights), framework="pt") as handle:
            meta = handle.metadata() or {}
        return meta, load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{weights} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                        f"truncated or not a safetensors file; {REDO}") from err


def verify_checksum(directory: str | Path, recorded: dict[str, Any] | None = None) -> bool:
    """Check `crosscoder.safetensors` against the sha256 in its config.json (True when checked; False
    for a crosscoder saved before checksums were recorded). Raises one line when they differ."""
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    recorded = _read_config(directory / CONFIG_FILE) if recorded is None else recorded
    expected = recorded.get(CHECKSUM_KEY)
    if not expected:
        return False
    if artifacts.sha256_file(weights) != expected:
        raise UserError(f"{weights} does not match the sha256 recorded in its {CONFIG_FILE} when it was saved: the "
                        f"file was damaged or replaced since; {REDO} (load_crosscoder(..., verify=False) reads it "
                        "anyway)")
    return True


def check_weights(state: dict[str, torch.Tensor], weights: str | Path) -> None:
    """Numbers no trained crosscoder has: non-finite values, or an encoder or decoder of all zeros."""
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "scaling_factors"):
        tensor = state[name]
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{weights}: {name} holds {bad} non-finite values (NaN/inf): the file is damaged; {REDO}")
    for name in ("W_enc", "W_dec"):
        if not state[name].any():
            raise UserError(f"{weights}: {name} is all zeros, which no trained crosscoder is: the file is damaged; "
                            f"{REDO}")
    if not (state["scaling_factors"] > 0).all():
        raise UserError(f"{weights}: scaling_factors {state['scaling_factors'].tolist()} are not all positive: the "
                        f"file is damaged; {REDO}")


def verify_crosscoder(directory: str | Path) -> None:
    """Every check `load_crosscoder` makes, without keeping the model: for a stage that reads a
    crosscoder later (or in another process) and wants its one-line refusal before any work."""
    CrossCoder.load(directory)


def load_crosscoder(directory: str | Path, device: str | torch.device | None = None, *,
                    verify: bool = True) -> CrossCoder:
    """Load a trained crosscoder (`crosscoder.safetensors` + `config.json`) in eval mode. `verify=False`
    skips the sha256 check (a file edited on purpose); the shape and finiteness checks always run."""
    return CrossCoder.load(directory, device=device, verify=verify).eval()
