"""Paired activations built from planted features: a crosscoder check with known ground truth.

Every feature j has one direction per model: shared (same direction in both), base-only (zero in
the tuned model), tuned-only (zero in the base model), rotated (shared, but the tuned direction
is turned away from the base one to a planted cosine) or near-duplicate (what a fine-tune does to
most features it touches: the same events, the tuned direction moved a little, cosine 0.8-0.95;
a crosscoder sees the change only if it gives the difference latents of its own, issue 17). A
token fires each feature independently
(sparse) with one magnitude used by both models, so the models' activations are superpositions of
the same latent events, plus Gaussian noise. The tuned model's activations are `tuned_scale`
larger, so recovery only works when the per-model scaling factors are applied correctly.

The source has the activation-store interface the trainer reads (`d_model`, `n_tokens`,
`scaling_factors`, `iter_batches(batch_size, seed=, start_batch=)`), and batch b is a pure
function of (seed, b): resuming at `start_batch` replays exactly what an uninterrupted run saw.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasondiff.config.train import SyntheticConfig
from reasondiff.core import artifacts
from reasondiff.crosscoder.geometry import classify_latents, decoder_cosine, relative_decoder_norm
from reasondiff.crosscoder.model import CrossCoder

GROUND_TRUTH_FILE = "ground_truth.safetensors"
KINDS = ("shared", "base_only", "tuned_only", "rotated", "near_duplicate")
EXPECTED_CLASS = {"shared": "shared", "base_only": "base_only", "tuned_only": "tuned_only", "rotated": "shared",
                  "near_duplicate": "model_specific"}
MODEL_SPECIFIC_KINDS = ("base_only", "tuned_only", "near_duplicate")
CHANGE_COSINE = 0.9
"""A latent carries a near-duplicate's change when its decoder rows lie within this |cosine| of the
change direction (tuned minus base, normalised space)."""


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def plant_features(cfg: SyntheticConfig, seed: int) -> tuple[torch.Tensor, list[str]]:
    """features [n_features, 2, d_model] in RAW space (zero row where absent) and one kind per feature."""
    gen = _generator(seed, 0xFEA7)
    counts = {"shared": cfg.n_shared, "base_only": cfg.n_base_only, "tuned_only": cfg.n_tuned_only,
              "rotated": cfg.n_rotated, "near_duplicate": cfg.n_near_duplicate}
    kinds = [kind for kind in KINDS for _ in range(counts[kind])]
    n, d = len(kinds), cfg.d_model
    base = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    orth = torch.nn.functional.normalize(other - (other * base).sum(-1, keepdim=True) * base, dim=-1)
    # near-duplicate cosines from their own stream, so the other kinds' directions do not move
    lo, hi = cfg.near_duplicate_cosine_min, cfg.near_duplicate_cosine_max
    cosine = torch.full((n,), cfg.rotated_cosine)
    near = torch.tensor([kind == "near_duplicate" for kind in kinds])
    cosine[near] = lo + (hi - lo) * torch.rand(int(near.sum()), generator=_generator(seed, 0xD0B1E))
    features = torch.zeros(n, 2, d)
    for j, kind in enumerate(kinds):
        if kind != "tuned_only":
            features[j, 0] = base[j]
        if kind in ("rotated", "near_duplicate"):
            features[j, 1] = cosine[j] * base[j] + (1.0 - cosine[j] ** 2) ** 0.5 * orth[j]
        elif kind != "base_only":
            features[j, 1] = base[j]
    features[:, 1] *= cfg.tuned_scale
    return features, kinds


class SyntheticSource:
    """Deterministic stream of [B, 2, d_model] RAW activations from planted sparse features."""

    def __init__(self, cfg: SyntheticConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.features, self.kinds = plant_features(cfg, seed)
        self.d_model = cfg.d_model
        self.n_tokens = cfg.n_tokens
        # Same convention as harvest's stats.json: scale each model so its mean norm is sqrt(d_model).
        sample = self._batch(4096, _generator(seed, 0x5CA1E))
        self.scaling_factors = (cfg.d_model**0.5 / sample.norm(dim=-1).mean(dim=0)).float()

    def _batch(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        n = len(self.kinds)
        fires = torch.rand(batch_size, n, generator=gen) < self.cfg.firing_probability
        magnitude = 0.5 + 1.5 * torch.rand(batch_size, n, generator=gen)
        coeff = fires * magnitude
        x = (coeff @ self.features.reshape(n, -1)).view(batch_size, 2, self.d_model)
        noise = self.cfg.noise_std * torch.randn(batch_size, 2, self.d_model, generator=gen)
        noise[:, 1] *= self.cfg.tuned_scale
        return x + noise

    def iter_batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Batch b depends only on (seed, b mod batches per epoch): finite data that cycles epochs."""
        per_epoch = max(1, self.n_tokens // batch_size)
        b = start_batch
        while True:
            yield self._batch(batch_size, _generator(self.seed, seed, batch_size, b % per_epoch))
            b += 1

    def write_ground_truth(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / GROUND_TRUTH_FILE
        tensors = {"features": self.features.contiguous(),
                   "kind": torch.tensor([KINDS.index(k) for k in self.kinds], dtype=torch.int64),
                   "scaling_factors": self.scaling_factors.contiguous()}
        meta = {"kinds": json.dumps(self.kinds), "kind_codes": json.dumps(list(KINDS)),
                "space": "raw (multiply by scaling_factors for the crosscoder's normalised space)"}
        artifacts.atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        return path


def load_ground_truth(directory: str | Path) -> tuple[torch.Tensor, list[str]]:
    from safetensors import safe_open

    with safe_open(str(Path(directory) / GROUND_TRUTH_FILE), framework="pt") as handle:
        return handle.get_tensor("features"), json.loads(handle.metadata()["kinds"])


def recovery_report(W_dec: torch.Tensor, scaling_factors: torch.Tensor, features: torch.Tensor,
                    kinds: list[str], alive: torch.Tensor | None = None,
                    designated: torch.Tensor | None = None) -> dict[str, Any]:
    """How well the (unfolded) decoder recovers the planted features and classifies them.

    Each feature is matched to the latent whose concatenated decoder vector [d_base; d_tuned] has the
    highest cosine with the feature's concatenated direction, both in the normalised space; that
    latent's relative decoder norm must put it in the feature's class (rotated features are shared;
    a designated shared latent counts as shared). A near-duplicate's model-specific structure is
    its change c = d_tuned − d_base: it is *found* when a live latent other than a designated one
    carries it (every decoder row of that latent with at least a tenth of its largest row's norm
    lies within |cos| >= CHANGE_COSINE of c: a base-only or tuned-only latent along c, or one
    latent writing −c to the base model and +c to the tuned one), and *classified model-specific*
    when such a latent is also base-only or tuned-only by its relative norm. `model_specific_found`
    / `model_specific_classified`: the fraction of base-only, tuned-only and near-duplicate
    features found / classified model-specific (an exclusive feature counts when its best latent
    has its class).
    """
    feats = features.float() * scaling_factors.float()[None, :, None]
    dec = W_dec.detach().float()
    live = torch.ones(dec.shape[0], dtype=torch.bool) if alive is None else alive.bool().cpu()
    candidates = live.nonzero().flatten()
    if candidates.numel() == 0:
        raise ValueError("every latent is dead: nothing to match the planted features against")
    unit = torch.nn.functional.normalize
    cos = unit(feats.flatten(1), dim=-1) @ unit(dec[candidates].flatten(1), dim=-1).T
    max_cos, best = cos.max(dim=-1)
    best = candidates[best]
    relative = relative_decoder_norm(dec)
    classes = classify_latents(relative, designated=designated)
    r, dec_cos = relative[best], decoder_cosine(dec)[best]
    right = [_classified_right(kind, classes[int(i)]) for kind, i in zip(kinds, best, strict=True)]
    found, specific = list(right), list(right)
    near = [j for j, k in enumerate(kinds) if k == "near_duplicate"]
    if near:
        carriers = _change_carriers(dec, live, designated, feats[near])
        for j, latents in zip(near, carriers, strict=True):
            found[j] = bool(latents)
            specific[j] = any(classes[i] in ("base_only", "tuned_only") for i in latents)
            right[j] = specific[j]
    report: dict[str, Any] = {"mean_max_cosine": float(max_cos.mean()), "n_features": len(kinds), "per_kind": {}}
    for kind in KINDS:
        idx = [j for j, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        report["per_kind"][kind] = {
            "n": len(idx),
            "mean_max_cosine": float(max_cos[idx].mean()),
            "classified_right": float(np.mean([right[j] for j in idx])),
            "mean_relative_norm": float(r[idx].mean()),
            "mean_decoder_cosine": float(dec_cos[idx].mean()),
        }
        if kind == "near_duplicate":
            report["per_kind"][kind]["change_found"] = float(np.mean([found[j] for j in idx]))
    report["classified_right"] = float(np.mean(right))
    model_specific = [j for j, k in enumerate(kinds) if k in MODEL_SPECIFIC_KINDS]
    report["n_model_specific"] = len(model_specific)
    report["model_specific_found"] = float(np.mean([found[j] for j in model_specific])) if model_specific else float("nan")
    report["model_specific_classified"] = float(np.mean([specific[j] for j in model_specific])) if model_specific \
        else float("nan")
    report["distinct_latents"] = int(best.unique().numel())
    return report


def _classified_right(kind: str, latent_class: str) -> bool:
    expected = EXPECTED_CLASS[kind]
    return latent_class == expected or (expected == "shared" and latent_class == "designated_shared")


def _change_carriers(dec: torch.Tensor, live: torch.Tensor, designated: torch.Tensor | None,
                     near: torch.Tensor) -> list[list[int]]:
    """For each near-duplicate (near [n, 2, d], normalised space): the live, non-designated latents
    whose every significant decoder row lies along its change d_tuned − d_base."""
    unit = torch.nn.functional.normalize
    change = unit(near[:, 1] - near[:, 0], dim=-1)                       # [n, d]
    norms = dec.norm(dim=-1)                                              # [F, M]
    significant = norms >= 0.1 * norms.max(dim=-1, keepdim=True).values   # [F, M]
    aligned = torch.einsum("nd,fmd->nfm", change, unit(dec, dim=-1)).abs() >= CHANGE_COSINE
    carries = (aligned | ~significant).all(dim=-1) & live & (norms.max(dim=-1).values > 0)
    if designated is not None:
        carries &= ~designated.bool().cpu()
    return [row.nonzero().flatten().tolist() for row in carries]


def fit_synthetic(train, source: SyntheticSource, *, seed: int = 0, device: str = "cpu",
                  eval_tokens: int = 8192) -> dict[str, Any]:
    """Train a crosscoder on `source` in-process (no stage directory) and score it: the recovery
    report plus the held-out L0 / FVU. For studies and tests that compare training settings on the
    same planted features (experiments/synthetic_shared_latents/run.py)."""
    from reasondiff.train.trainer import CrossCoderTrainer, crosscoder_config, evaluate

    torch.manual_seed(seed)
    cc = CrossCoder(crosscoder_config(train, source.d_model))
    with torch.no_grad():
        cc.scaling_factors.copy_(source.scaling_factors)
    steps = train.n_tokens // train.batch_size
    trainer = CrossCoderTrainer(cc, train, steps, torch.device(device))
    batches = source.iter_batches(train.batch_size, seed=seed)
    for _ in range(steps):
        trainer.train_step(next(batches))
    cc.eval()
    evaluation = evaluate(cc, source, batch_size=train.batch_size, n_tokens=eval_tokens, seed=seed + 1,
                          device=torch.device(device))
    report = recovery_report(cc.W_dec.detach().cpu(), cc.scaling_factors.cpu(), source.features, source.kinds,
                             alive=~trainer.dead_latents().cpu(), designated=cc.designated_shared.cpu())
    return {"report": report, "l0": evaluation["l0"], "fvu": evaluation["fvu"], "crosscoder": cc}
