"""Paired activations built from planted features: a crosscoder check with known ground truth.

Every feature j has one direction per model: shared (same direction in both), base-only (zero in
the tuned model), tuned-only (zero in the base model) or rotated (shared, but the tuned direction
is turned away from the base one to a planted cosine). A token fires each feature independently
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

from reasondiff import artifacts
from reasondiff.config.train import SyntheticConfig
from reasondiff.crosscoder.geometry import classify_latents, decoder_cosine, relative_decoder_norm

GROUND_TRUTH_FILE = "ground_truth.safetensors"
KINDS = ("shared", "base_only", "tuned_only", "rotated")
EXPECTED_CLASS = {"shared": "shared", "base_only": "base_only", "tuned_only": "tuned_only", "rotated": "shared"}


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def plant_features(cfg: SyntheticConfig, seed: int) -> tuple[torch.Tensor, list[str]]:
    """features [n_features, 2, d_model] in RAW space (zero row where absent) and one kind per feature."""
    gen = _generator(seed, 0xFEA7)
    counts = {"shared": cfg.n_shared, "base_only": cfg.n_base_only, "tuned_only": cfg.n_tuned_only,
              "rotated": cfg.n_rotated}
    kinds = [kind for kind in KINDS for _ in range(counts[kind])]
    n, d = len(kinds), cfg.d_model
    base = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    orth = torch.nn.functional.normalize(other - (other * base).sum(-1, keepdim=True) * base, dim=-1)
    sin = (1.0 - cfg.rotated_cosine**2) ** 0.5
    features = torch.zeros(n, 2, d)
    for j, kind in enumerate(kinds):
        if kind != "tuned_only":
            features[j, 0] = base[j]
        if kind == "rotated":
            features[j, 1] = cfg.rotated_cosine * base[j] + sin * orth[j]
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
                    kinds: list[str], alive: torch.Tensor | None = None) -> dict[str, Any]:
    """How well the (unfolded) decoder recovers the planted features and classifies them.

    Each feature is matched to the latent whose concatenated decoder vector [d_base; d_tuned] has the
    highest cosine with the feature's concatenated direction, both in the normalised space; that
    latent's relative decoder norm must put it in the feature's class (rotated features are shared).
    """
    feats = (features.float() * scaling_factors.float()[None, :, None]).flatten(1)
    dec = W_dec.detach().float()
    candidates = torch.arange(dec.shape[0]) if alive is None else alive.nonzero().flatten()
    if candidates.numel() == 0:
        raise ValueError("every latent is dead: nothing to match the planted features against")
    cos = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(dec[candidates].flatten(1), dim=-1).T
    max_cos, best = cos.max(dim=-1)
    best = candidates[best]
    r = relative_decoder_norm(dec)[best]
    classes = classify_latents(r)
    dec_cos = decoder_cosine(dec)[best]
    report: dict[str, Any] = {"mean_max_cosine": float(max_cos.mean()), "n_features": len(kinds), "per_kind": {}}
    for kind in KINDS:
        idx = [j for j, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        right = [classes[j] == EXPECTED_CLASS[kind] for j in idx]
        report["per_kind"][kind] = {
            "n": len(idx),
            "mean_max_cosine": float(max_cos[idx].mean()),
            "classified_right": float(np.mean(right)),
            "mean_relative_norm": float(r[idx].mean()),
            "mean_decoder_cosine": float(dec_cos[idx].mean()),
        }
    report["classified_right"] = float(np.mean([classes[j] == EXPECTED_CLASS[k] for j, k in enumerate(kinds)]))
    report["distinct_latents"] = int(best.unique().numel())
    return report
