"""Converters between reasondiff's crosscoder and the two formats the field's tools load.

- **dictionary_learning** (the science-of-finetuning fork, Minder et al.; git only, PyPI 0.1.0 has no
  crosscoder): a directory of `model.safetensors` + `config.json`, exactly what its `save_pretrained`
  writes and `CrossCoder.from_pretrained(dir, from_hub=True)` / `BatchTopKCrossCoder.from_pretrained`
  read. Tensors `encoder.weight [L, d, F]`, `encoder.bias [F]`, `decoder.weight [L, F, d]`,
  `decoder.bias [L, d]`, the activation normaliser (`activation_mean`, `activation_std` [L, d],
  `activation_global_scale` [L], `target_rms`), `code_normalization_id` (int64) and, for BatchTopK,
  `k` (int32) and `threshold`. Its normaliser is x_norm = (x − mean_l)·scale_l; the decoder lives in
  that normalised space. NaN mean/std (crosscoders trained before the normaliser existed) = identity.
  The training loop's torch pickles (`model_final.pt`) hold the same state dict and are read too.
- **kissane** (Kissane & Nanda's replication, ckkissane/crosscoder-model-diff-replication): `cfg.json`
  + the class's state dict `W_enc [2, d, F]`, `W_dec [F, 2, d]`, `b_enc [F]`, `b_dec [2, d]`, which his
  class loads with a strict `load_state_dict`. His weights act on activations multiplied by per-model
  norm scaling factors that his checkpoints never store: pass them (`scaling_factors`, base first),
  or they are read from the `normalisation_factor` key reasondiff adds to the `cfg.json` it writes.

Import folds every normaliser exactly into reasondiff's one per-model factor: with s_l the fork's
global scale and μ_l its mean, Σ_l (x_l − μ_l) s_l W_enc[l] + b_enc = Σ_l (s_l x_l) W_enc[l] +
(b_enc − Σ_l s_l μ_l W_enc[l]), and (x̂_norm / s_l) + μ_l = (x̂_norm + s_l μ_l) / s_l; so the mean goes
into b_enc and b_dec, the scale becomes `scaling_factors`, and W_enc, W_dec and the BatchTopK
threshold are kept as stored. `load_crosscoder(out)` then gives the reference's raw-space latents and
reconstructions (up to the fork's 1e-8 in its denormaliser).

Designated shared latents (`train.shared_latents`) are stored as identical per-model decoder rows, so
every reader of the plain layout works on them as they are; which latents they are travels where each
target allows an extra record that its own loader ignores: the fork's `model.safetensors` header
metadata (its BatchTopK `config.json` must hold `__init__` keys only), Kissane's `cfg.json`, and
reasondiff's `config.json`. Import restores them when the rows are still tied.

Export never folds the scaling factors into the weights: the exported decoder IS reasondiff's decoder,
so relative decoder norms read from the exported files (the fork's `dec_norm_diff`, Kissane's
`analysis.py`, Minder's Δ) equal reasondiff's bit for bit. The factors travel in the target's own
slot: the fork's normaliser buffers (mean 0, global scale = s_l), Kissane's `cfg.json`
(`normalisation_factor`, as his `Buffer` names them).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.crosscoder.model import CONFIG_FILE, WEIGHTS_FILE, CrossCoder, CrossCoderConfig

log = logging.getLogger(__name__)

FORMATS = ("reasondiff", "dictionary_learning", "kissane")
FORK_WEIGHTS, FORK_CONFIG = "model.safetensors", "config.json"
KISSANE_WEIGHTS, KISSANE_CONFIG = "cc_weights.safetensors", "cfg.json"

CODE_NORMALIZATION = {"CROSSCODER": 1, "SAE": 2, "MIXED": 3, "NONE": 4, "DECOUPLED": 5}
"""The fork's `CodeNormalization` enum (auto() values). CROSSCODER weights latent j by Σ_l ||W_dec[l, j]||,
reasondiff's convention for the L1 penalty and the BatchTopK ranking."""
CODE_NORMALIZATION_CROSSCODER = CODE_NORMALIZATION["CROSSCODER"]
FORK_STATE_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "activation_mean",
                   "activation_std", "activation_global_scale", "target_rms", "code_normalization_id")
FORK_BATCHTOPK_KEYS = ("k", "threshold")
KISSANE_STATE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")

# The config.json key sets the fork's PyTorchModelHubMixin writes for each class (its record of the
# JSON-able __init__ arguments; tensors show as null). BatchTopKCrossCoder takes **kwargs and passes
# every other config key to CrossCoder.__init__, so an unknown key there is a TypeError on load.
FORK_CROSSCODER_CONFIG = ("activation_dim", "activation_mean", "activation_std", "code_normalization",
                          "code_normalization_alpha_cc", "code_normalization_alpha_sae", "dict_size", "encoder_layers",
                          "init_with_transpose", "latent_processor", "norm_init_scale", "num_decoder_layers",
                          "num_layers", "same_init_for_all_layers", "target_rms")
FORK_BATCHTOPK_CONFIG = ("activation_dim", "activation_mean", "activation_std", "code_normalization", "dict_size",
                         "k", "norm_init_scale", "num_layers", "target_rms")

# Kissane's train.py default_cfg, in its order (his cfg.json is this dict with the run's values).
KISSANE_DEFAULT_CFG: dict[str, Any] = {
    "seed": 49, "batch_size": 4096, "buffer_mult": 128, "lr": 5e-5, "num_tokens": 400_000_000, "l1_coeff": 2,
    "beta1": 0.9, "beta2": 0.999, "d_in": None, "dict_size": 2**14, "seq_len": 1024, "enc_dtype": "fp32",
    "model_name": None, "site": "resid_pre", "device": "cpu", "model_batch_size": 4, "log_every": 100,
    "save_every": 30000, "dec_init_norm": 0.08, "hook_point": "blocks.14.hook_resid_pre", "wandb_project": None,
    "wandb_entity": None}
KISSANE_FACTORS_KEY = "normalisation_factor"
"""Extra cfg.json key reasondiff writes: his class ignores it, his checkpoints never have it."""
SHARED_KEYS = ("designated_shared_latents", "shared_penalty_ratio")
"""The record of designated shared latents each export carries (only when there are some): in the fork's
safetensors header metadata (JSON strings; `from_pretrained` reads tensors only) and in Kissane's cfg.json."""


# --- small helpers -----------------------------------------------------------------------------------

def _factors(scaling_factors, n_models: int, what: str) -> torch.Tensor:
    s = torch.as_tensor(scaling_factors, dtype=torch.float32).flatten()
    if s.shape != (n_models,) or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise UserError(f"--scaling-factors for {what}: need {n_models} positive numbers (base first), got "
                        f"{s.tolist()}")
    return s


def _new_crosscoder(n_models: int, d_model: int, n_latents: int, *, variant: str, k: int = 100,
                    dec_init_norm: float = 0.08, shared: tuple[int, float] = (0, 1.0)) -> CrossCoder:
    return CrossCoder(CrossCoderConfig(d_model=d_model, n_latents=n_latents, n_models=n_models, variant=variant,
                                       k=k, dec_init_norm=dec_init_norm, n_shared_latents=shared[0],
                                       shared_penalty_ratio=shared[1]))


def shared_latents_record(cc: CrossCoder) -> dict[str, Any]:
    """{designated_shared_latents: [0..n-1], shared_penalty_ratio} for a crosscoder with designated
    shared latents, {} otherwise (exports of plain crosscoders stay exactly the references' files)."""
    n = cc.cfg.n_shared_latents
    if n == 0:
        return {}
    return {"designated_shared_latents": list(range(n)), "shared_penalty_ratio": float(cc.cfg.shared_penalty_ratio)}


def _designated(record: dict[str, Any] | None, W_dec: torch.Tensor, where: str) -> tuple[int, float]:
    """(n_shared_latents, shared_penalty_ratio) from an export's record; W_dec [F, M, d] as stored.

    reasondiff designates the first n latents, so any other list is refused. Rows no longer tied
    (trained further by another tool) are imported as ordinary latents, with a warning."""
    listed = (record or {}).get("designated_shared_latents")
    if not listed:
        return 0, 1.0
    n = len(listed)
    if [int(i) for i in listed] != list(range(n)) or n > W_dec.shape[0]:
        raise UserError(f"{where}: designated_shared_latents must be the first latents 0..n-1 of the "
                        f"{W_dec.shape[0]}, got {listed[:8]}{'...' if n > 8 else ''}")
    rows = W_dec[:n]
    if not bool((rows == rows[:, :1]).all()):
        log.warning("%s: the %d designated shared latents no longer have one decoder vector for every model "
                    "(trained further elsewhere?): imported as ordinary latents", where, n)
        return 0, 1.0
    ratio = float((record or {}).get("shared_penalty_ratio") or 1.0)
    return n, ratio if ratio > 0 else 1.0


@torch.no_grad()
def _set_weights(cc: CrossCoder, *, W_enc, W_dec, b_enc, b_dec, scaling_factors, threshold=None) -> CrossCoder:
    """Copy tensors into `cc` (W_enc [M, d, F] through the property, whatever its storage)."""
    cc.W_enc.copy_(W_enc)
    cc.W_dec.copy_(W_dec)
    cc.b_enc.copy_(b_enc)
    cc.b_dec.copy_(b_dec)
    cc.scaling_factors.copy_(scaling_factors)
    if threshold is not None:
        cc.threshold.copy_(torch.as_tensor(threshold, dtype=torch.float32).reshape(()))
    return cc.eval()


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # a state dict of tensors: no pickled code runs with weights_only
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable state dict ({str(err).splitlines()[0] if str(err) else err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return state


def _tensor_names(path: Path) -> set[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    return set(_load_tensors(path)) if path.suffix == ".pt" else set()


def _require(state: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"{where}: missing tensor(s) {', '.join(missing)}")


# --- dictionary_learning (science-of-finetuning fork) -----------------------------------------------

def to_dictionary_learning(cc: CrossCoder) -> dict[str, torch.Tensor]:
    """The fork's complete state dict for `cc` (every buffer its `from_pretrained` restores).

    Weights as stored (never folded: relative decoder norms unchanged); the scaling factors become
    its normaliser: mean 0, `activation_global_scale` = s_l, `target_rms` = √d (our normalised space
    has mean norm √d) and `activation_std` = 1/s_l in every dimension, the std from which the fork's
    own formula target_rms / sqrt(Σ_d std² + 1e-8) gives back s_l (the fork reads std for nothing else).
    """
    M, d = cc.cfg.n_models, cc.cfg.d_model
    s = cc.scaling_factors.detach().float().cpu()
    target_rms = math.sqrt(d)
    state = {
        "encoder.weight": cc.W_enc.detach().float().cpu().contiguous(),
        "encoder.bias": cc.b_enc.detach().float().cpu().contiguous(),
        "decoder.weight": cc.W_dec.detach().float().cpu().permute(1, 0, 2).contiguous(),
        "decoder.bias": cc.b_dec.detach().float().cpu().contiguous(),
        "activation_mean": torch.zeros(M, d),
        "activation_std": (1.0 / s)[:, None].expand(M, d).contiguous(),
        "activation_global_scale": s.clone(),
        "target_rms": torch.tensor(target_rms, dtype=torch.float32),
        "code_normalization_id": torch.tensor(CODE_NORMALIZATION_CROSSCODER, dtype=torch.int64),
    }
    if cc.cfg.variant == "batchtopk":
        state["k"] = torch.tensor(cc.cfg.k, dtype=torch.int32)
        state["threshold"] = cc.threshold.detach().float().cpu().reshape(()).clone()
    return state


def dictionary_learning_config(cc: CrossCoder) -> dict[str, Any]:
    """config.json as the fork's mixin writes it for `CrossCoder` (l1) / `BatchTopKCrossCoder`."""
    common = {"activation_dim": cc.cfg.d_model, "activation_mean": None, "activation_std": None,
              "code_normalization": "CROSSCODER", "dict_size": cc.cfg.n_latents, "num_layers": cc.cfg.n_models,
              "target_rms": float(math.sqrt(cc.cfg.d_model))}
    if cc.cfg.variant == "batchtopk":
        config = {**common, "k": int(cc.cfg.k), "norm_init_scale": 1.0}
        keys = FORK_BATCHTOPK_CONFIG
    else:
        config = {**common, "code_normalization_alpha_cc": 0.1, "code_normalization_alpha_sae": 1.0,
                  "encoder_layers": None, "init_with_transpose": True, "latent_processor": None,
                  "norm_init_scale": None, "num_decoder_layers": None,
                  "same_init_for_all_layers": bool(getattr(cc.cfg, "same_init_across_models", False))}
        keys = FORK_CROSSCODER_CONFIG
    return {key: config[key] for key in keys}


def save_dictionary_learning(cc: CrossCoder, directory: str | Path, *, training: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` + `config.json` the way the fork's `save_pretrained` does (its model
    card README.md carries no data and is left out). The hook the crosscoder was trained at
    (`training["hook"]`, train's record) is kept as config.json's `hook`: the hub mixin passes only
    the keys its `__init__` names, so the fork ignores it, and reading the export back keeps it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = to_dictionary_learning(cc)
    # the fork writes no header metadata and reads none: the designated latents' record rides there
    meta = {key: json.dumps(value) for key, value in shared_latents_record(cc).items()} or None
    artifacts.atomic_save(directory / FORK_WEIGHTS, lambda tmp: save_file(state, tmp, metadata=meta))
    # huggingface_hub: json.dumps(config, sort_keys=True, indent=2), no trailing newline
    config = dictionary_learning_config(cc)
    if isinstance((training or {}).get("hook"), str):
        config["hook"] = training["hook"]
    artifacts.write_text(directory / FORK_CONFIG, json.dumps(config, sort_keys=True, indent=2))
    return directory


def _fork_code_normalization(state: dict, config: dict | None, where: str) -> int:
    ids = set()
    if "code_normalization_id" in state:
        ids.add(int(state["code_normalization_id"]))
    if config is not None and config.get("code_normalization") is not None:
        name = str(config["code_normalization"]).upper()
        if name not in CODE_NORMALIZATION:
            raise UserError(f"{where}: unknown code_normalization {config['code_normalization']!r}")
        ids.add(CODE_NORMALIZATION[name])
    if len(ids) > 1:  # the hub loader takes the config's, the .pt loader the buffer's
        raise UserError(f"{where}: config.json code_normalization and the code_normalization_id tensor disagree")
    return ids.pop() if ids else CODE_NORMALIZATION_CROSSCODER


def from_dictionary_learning(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None, *,
                             scaling_factors=None, shared: dict[str, Any] | None = None,
                             where: str = "dictionary_learning state dict") -> CrossCoder:
    """reasondiff's CrossCoder equal in raw space to the fork's `CrossCoder` / `BatchTopKCrossCoder`.

    `state`: the fork's state dict (`model.safetensors` or a training `.pt`); `config`: its
    config.json (optional). Variant batchtopk when it has `k` (buffer or config). The fork's
    normaliser is folded in exactly (module docstring). `scaling_factors` is only for crosscoders
    without a normaliser (NaN or missing mean/std) that were trained on activations scaled outside.
    `shared`: the designated shared latents' record a reasondiff export put in the safetensors metadata.
    """
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # saved while torch.compile'd
    if "encoder.weight" not in state:
        raise UserError(f"{where}: not a dictionary_learning crosscoder (no encoder.weight; keys {sorted(state)[:6]})")
    _require(state, ("encoder.bias", "decoder.weight", "decoder.bias"), where)
    config = config or {}
    if config.get("encoder_layers") is not None or config.get("num_decoder_layers") not in (None, config.get("num_layers")):
        raise UserError(f"{where}: encoder_layers / num_decoder_layers subsets are not supported")
    L, d, F = state["encoder.weight"].shape
    if tuple(state["decoder.weight"].shape) != (L, F, d):
        raise UserError(f"{where}: decoder.weight {tuple(state['decoder.weight'].shape)} does not match "
                        f"encoder.weight {(L, d, F)}")
    batchtopk = "k" in state or "threshold" in state or "k" in config
    code_norm = _fork_code_normalization(state, config, where)
    if batchtopk and code_norm != CODE_NORMALIZATION_CROSSCODER:
        # the threshold compares f_j·(code norm); only CROSSCODER's Σ_l ||W_dec[l, j]|| is reasondiff's
        raise UserError(f"{where}: a BatchTopK crosscoder with code normalisation {code_norm} (only CROSSCODER = 1 "
                        "ranks latents the way reasondiff does)")
    if code_norm != CODE_NORMALIZATION_CROSSCODER:
        log.info("%s: code normalisation %d only weights the fork's L1 penalty; encode/decode are unaffected",
                 where, code_norm)

    f64 = torch.float64
    W_enc = state["encoder.weight"].to(f64)
    W_dec = state["decoder.weight"].to(f64).permute(1, 0, 2)
    b_enc, b_dec = state["encoder.bias"].to(f64), state["decoder.bias"].to(f64)
    mean, std = state.get("activation_mean"), state.get("activation_std")
    has_normaliser = mean is not None and std is not None and not (mean.isnan().any() or std.isnan().any())
    if has_normaliser:
        if scaling_factors is not None:
            raise UserError(f"{where}: this crosscoder stores its own activation normaliser; drop --scaling-factors")
        if "activation_global_scale" not in state:
            raise UserError(f"{where}: has activation_mean/std but no activation_global_scale (the fork would "
                            "silently use 1); re-save it with the fork's save_pretrained")
        scale = state["activation_global_scale"].to(f64)
        mean = mean.to(f64)
        if scale.shape != (L,) or mean.shape != (L, d):
            raise UserError(f"{where}: normaliser shapes {tuple(mean.shape)}, {tuple(scale.shape)} do not match {(L, d)}")
    else:
        scale = torch.ones(L, dtype=f64) if scaling_factors is None else _factors(scaling_factors, L, where).to(f64)
        mean = torch.zeros(L, d, dtype=f64)
    shift = mean * scale[:, None]  # s_l μ_l: the mean in the normalised space
    b_enc = b_enc - torch.einsum("ld,ldf->f", shift, W_enc)
    b_dec = b_dec + shift

    threshold = None
    if batchtopk:
        if "threshold" in state and state["threshold"].numel() != 1:
            raise UserError(f"{where}: per-layer thresholds (DECOUPLED) are not supported")
        threshold = state["threshold"].float() if "threshold" in state else torch.tensor(-1.0)
        if float(threshold) < 0:
            log.warning("%s: BatchTopK threshold %.3g was never trained: every positive latent fires at inference",
                        where, float(threshold))
    k = int(state["k"]) if "k" in state else int(config.get("k", 100))  # the buffer wins, as in the fork
    cc = _new_crosscoder(L, d, F, variant="batchtopk" if batchtopk else "l1", k=k,
                         shared=_designated(shared, W_dec.float(), where))
    return _set_weights(cc, W_enc=W_enc.float(), W_dec=W_dec.float(), b_enc=b_enc.float(), b_dec=b_dec.float(),
                        scaling_factors=scale.float(), threshold=threshold)


def load_dictionary_learning(path: str | Path, *, scaling_factors=None) -> CrossCoder:
    """A fork crosscoder from its directory (`model.safetensors` + `config.json`) or a training `.pt`."""
    path = Path(path)
    if path.is_dir():
        weights, config_path = path / FORK_WEIGHTS, path / FORK_CONFIG
    else:
        weights, config_path = path, path.parent / FORK_CONFIG if path.name == FORK_WEIGHTS else None
    config = artifacts.read_json(config_path) if config_path is not None and config_path.is_file() else None
    return from_dictionary_learning(_load_tensors(weights), config, scaling_factors=scaling_factors,
                                    shared=_shared_metadata(weights), where=str(weights))


def _shared_metadata(weights: Path) -> dict[str, Any] | None:
    """The designated shared latents' record in a safetensors header (reasondiff's fork export)."""
    if weights.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        meta = handle.metadata() or {}
    try:
        return {key: json.loads(meta[key]) for key in SHARED_KEYS if key in meta} or None
    except ValueError as err:
        raise UserError(f"{weights}: unreadable {SHARED_KEYS[0]} metadata ({err})") from err


# --- Kissane & Nanda's replication --------------------------------------------------------------

def to_kissane(cc: CrossCoder, *, training: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, cfg) for Kissane's `CrossCoder(cfg).load_state_dict(state)` (strict).

    The weights stay in the normalised space (his class expects activations times his per-model
    factors, as his `Buffer` feeds them); the factors go into cfg["normalisation_factor"].
    `training`: what reasondiff's train stage recorded (its config.json), to fill his cfg keys.
    """
    if cc.cfg.variant != "l1":
        raise UserError("Kissane's CrossCoder is ReLU + L1 only: a batchtopk crosscoder would lose its inference "
                        "threshold (every positive latent would fire); export it with --to dictionary_learning")
    if cc.cfg.n_models != 2:
        raise UserError(f"Kissane's CrossCoder has exactly 2 models; this one has {cc.cfg.n_models}")
    state = {"W_enc": cc.W_enc.detach().float().cpu().contiguous(),
             "W_dec": cc.W_dec.detach().float().cpu().contiguous(),
             "b_enc": cc.b_enc.detach().float().cpu().contiguous(),
             "b_dec": cc.b_dec.detach().float().cpu().contiguous()}
    cfg = dict(KISSANE_DEFAULT_CFG)
    cfg.update(d_in=cc.cfg.d_model, dict_size=cc.cfg.n_latents, dec_init_norm=cc.cfg.dec_init_norm)
    training = training or {}
    train = training.get("train") or {}
    for ours, his in (("lr", "lr"), ("l1_coeff", "l1_coeff"), ("batch_size", "batch_size"), ("n_tokens", "num_tokens")):
        if train.get(ours) is not None:
            cfg[his] = train[ours]
    hook = training.get("hook")
    if isinstance(hook, str):
        cfg["hook_point"] = hook
        cfg["site"] = hook.rsplit("hook_", 1)[-1] if "hook_" in hook else cfg["site"]
    cfg[KISSANE_FACTORS_KEY] = [float(v) for v in cc.scaling_factors.detach().float().cpu()]
    cfg.update(shared_latents_record(cc))  # his class reads the keys it knows and ignores the rest
    return state, cfg


def from_kissane(state: dict[str, torch.Tensor], cfg: dict[str, Any] | None = None, *, scaling_factors=None,
                 where: str = "Kissane state dict") -> CrossCoder:
    """reasondiff's CrossCoder from Kissane's state dict; `scaling_factors` (base, tuned) are the
    factors his buffer multiplied the activations by (required unless cfg carries them)."""
    cfg = cfg or {}
    _require(state, KISSANE_STATE_KEYS, where)
    M, d, F = state["W_enc"].shape
    if M != 2 or tuple(state["W_dec"].shape) != (F, 2, d) or state["b_enc"].shape != (F,) or state["b_dec"].shape != (2, d):
        raise UserError(f"{where}: shapes {[tuple(state[k].shape) for k in KISSANE_STATE_KEYS]} are not Kissane's "
                        "W_enc [2, d, F], W_dec [F, 2, d], b_enc [F], b_dec [2, d]")
    for key, value in (("d_in", d), ("dict_size", F)):
        if cfg.get(key) is not None and int(cfg[key]) != value:
            raise UserError(f"{where}: cfg.json {key}={cfg[key]} but the weights have {value}")
    if scaling_factors is None:
        scaling_factors = cfg.get(KISSANE_FACTORS_KEY)
    if scaling_factors is None:
        raise UserError(f"{where}: Kissane checkpoints do not store the per-model norm scaling factors their "
                        "weights expect; pass them: --scaling-factors BASE,TUNED (his Buffer's normalisation_factor; "
                        "1,1 if the crosscoder was trained on unscaled activations)")
    s = _factors(scaling_factors, 2, where)
    cc = _new_crosscoder(2, d, F, variant="l1", dec_init_norm=float(cfg.get("dec_init_norm") or 0.08),
                         shared=_designated(cfg, state["W_dec"].float(), where))
    return _set_weights(cc, W_enc=state["W_enc"].float(), W_dec=state["W_dec"].float(), b_enc=state["b_enc"].float(),
                        b_dec=state["b_dec"].float(), scaling_factors=s)


def save_kissane(cc: CrossCoder, directory: str | Path, *, training: dict[str, Any] | None = None) -> Path:
    """Write `cfg.json` (one line, as his `save()` json.dumps it) + `cc_weights.safetensors`."""
    from safetensors.torch import save_file

    state, cfg = to_kissane(cc, training=training)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_save(directory / KISSANE_WEIGHTS, lambda tmp: save_file(state, tmp))
    artifacts.write_text(directory / KISSANE_CONFIG, json.dumps(cfg))
    return directory


def load_kissane(path: str | Path, *, scaling_factors=None) -> CrossCoder:
    """Kissane's checkpoint: a directory with cfg.json + cc_weights.{safetensors,pt}, or a weights file
    (`<v>.pt` next to `<v>_cfg.json`, as his `save()` writes them)."""
    path = Path(path)
    if path.is_dir():
        weights = next((path / name for name in (KISSANE_WEIGHTS, "cc_weights.pt") if (path / name).is_file()), None)
        cfg_path = path / KISSANE_CONFIG
        if weights is None:
            raise UserError(f"{path}: no cc_weights.safetensors or cc_weights.pt")
    else:
        weights = path
        cfg_path = next((p for p in (path.with_name(f"{path.stem}_cfg.json"), path.parent / KISSANE_CONFIG) if p.is_file()),
                        path.parent / KISSANE_CONFIG)
    cfg = artifacts.read_json(cfg_path) if cfg_path.is_file() else None
    return from_kissane(_load_tensors(weights), cfg, scaling_factors=scaling_factors, where=str(weights))


# --- any format ----------------------------------------------------------------------------------

def detect_format(path: str | Path) -> str:
    """Which of FORMATS `path` holds (a directory, or a weights file for the pickled formats)."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
            return "reasondiff"
        if (path / FORK_WEIGHTS).is_file():
            return "dictionary_learning"
        if (path / KISSANE_WEIGHTS).is_file() or (path / "cc_weights.pt").is_file():
            return "kissane"
        raise UserError(f"{path}: no crosscoder here (expected {WEIGHTS_FILE} + {CONFIG_FILE} (reasondiff), "
                        f"{FORK_WEIGHTS} + {FORK_CONFIG} (dictionary_learning) or {KISSANE_CONFIG} + "
                        f"{KISSANE_WEIGHTS} / cc_weights.pt (Kissane))")
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    if path.name == WEIGHTS_FILE:
        return "reasondiff"
    keys = _tensor_names(path)
    if any(k.removeprefix("_orig_mod.") == "encoder.weight" for k in keys):
        return "dictionary_learning"
    if "W_enc" in keys and "W_dec" in keys:
        return "kissane"
    raise UserError(f"{path}: not a crosscoder file this knows (keys {sorted(keys)[:6]})")


def load_any(path: str | Path, *, scaling_factors=None) -> tuple[CrossCoder, str, dict[str, Any]]:
    """(crosscoder, its format, what reasondiff's train stage recorded (empty for other formats))."""
    fmt = detect_format(path)
    path = Path(path)
    if fmt == "reasondiff":
        if scaling_factors is not None:
            raise UserError(f"{path}: a reasondiff crosscoder stores its scaling factors; drop --scaling-factors")
        directory = path if path.is_dir() else path.parent
        return CrossCoder.load(directory).eval(), fmt, artifacts.read_json(directory / CONFIG_FILE)
    if fmt == "dictionary_learning":
        config_path = (path if path.is_dir() else path.parent) / FORK_CONFIG
        config = artifacts.read_json(config_path) if config_path.is_file() else {}
        hook = {"hook": config["hook"]} if isinstance(config, dict) and isinstance(config.get("hook"), str) else {}
        return load_dictionary_learning(path, scaling_factors=scaling_factors), fmt, hook
    return load_kissane(path, scaling_factors=scaling_factors), fmt, {}


def convert(src: str | Path, out: str | Path, *, to: str = "reasondiff", scaling_factors=None,
            overwrite: bool = False) -> Path:
    """Read `src` (format detected), write it to the directory `out` in format `to`, atomically: the
    directory appears complete or not at all, and an existing non-empty `out` is kept unless `overwrite`."""
    if to not in FORMATS:
        raise UserError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another OUT or pass --overwrite")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError(f"OUT ({out}) must not be SRC or inside it")
    cc, fmt, recorded = load_any(src, scaling_factors=scaling_factors)
    with artifacts.atomic_dir(out) as staging:
        if to == "reasondiff":
            keep = {k: recorded[k] for k in ("hook", "steps", "tokens", "data", "train") if k in recorded}
            cc.save(staging, extra={**keep, "converted_from": {"format": fmt, "path": str(src.resolve())}})
        elif to == "dictionary_learning":
            save_dictionary_learning(cc, staging, training=recorded)
        else:
            save_kissane(cc, staging, training=recorded)
    log.info("%s (%s) -> %s (%s)", src, fmt, out, to)
    return out
