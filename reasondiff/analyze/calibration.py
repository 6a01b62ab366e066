"""Model-specific latents against a null: seed stability and the calibrated table (docs/null.md).

Every crosscoder here — this run's, its seed siblings', the null pairs' — is counted the same way,
from its decoder alone: relative norm r and Δ (crosscoder/geometry.py) over the latents that were
alive at the end of training (fired within `train.dead_tokens` tokens: train's final_counters.pt),
so that a dozen crosscoders are compared without running any model. (class_counts.csv counts
latents alive on the held-out text instead; the two differ by the latents that fire in training
only.)

The calibrated table has, per selection rule (r, Δ) and class: the count in the reasoning pair
(this run's seed; every seed beside it), in each null pair, the estimated false-discovery rate
FDR = mean null count / mean reasoning-pair count over seeds, with its interval over seeds (the
smallest and largest null_s / reasoning_s over the seeds s both pairs have: seed s gives both the
same crosscoder initialisation and batch order), and how many of the reasoning pair's members are
stable (matched in the other seeds: crosscoder/matching.py), and stable with every match in the same
class. The reasoning pair's count is *within the null* when its mean over seeds is at most the
null's largest count over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasondiff.core import artifacts
from reasondiff.crosscoder.geometry import (
    classify_latents,
    classify_latents_delta,
    delta_norm,
    relative_decoder_norm,
)
from reasondiff.crosscoder.matching import Matching, match_latents, spread_across_matches, stability

RULES = ("r", "delta")
TABLE_CLASSES = ("base_only", "tuned_only", "model_specific", "shared")
"""model_specific = base_only + tuned_only."""
RULE_NAMES = {"r": "r (paper's bands)", "delta": "Δ (Minder et al.'s bins)"}


@dataclass
class Classified:
    """One crosscoder's decoder and its classes under both rules."""

    W_dec: torch.Tensor
    relative_norm: np.ndarray
    delta: np.ndarray
    classes: dict[str, list[str]]
    """rule -> class per latent."""
    alive_known: bool = True

    def count(self, rule: str, latent_class: str) -> int:
        wanted = ("base_only", "tuned_only") if latent_class == "model_specific" else (latent_class,)
        return sum(c in wanted for c in self.classes[rule])


def alive_in_training(directory: Path, n_latents: int) -> torch.Tensor | None:
    """Latents that fired within train.dead_tokens tokens at the end of training (None: not recorded)."""
    counters, config = directory / "final_counters.pt", directory / "config.json"
    if not counters.is_file() or not config.is_file():
        return None
    dead_tokens = artifacts.read_json(config).get("train", {}).get("dead_tokens")
    since = torch.load(counters, map_location="cpu", weights_only=True)
    if dead_tokens is None or since.shape != (n_latents,):
        return None
    return since < int(dead_tokens)


def classify(W_dec: torch.Tensor, *, alive: torch.Tensor | None, designated: torch.Tensor | None,
             thresholds: dict[str, float]) -> Classified:
    W_dec = W_dec.detach().float().cpu()
    r, delta = relative_decoder_norm(W_dec), delta_norm(W_dec)
    classes = {"r": classify_latents(r, alive=alive, designated=designated, **thresholds),
               "delta": classify_latents_delta(delta, alive=alive, designated=designated)}
    return Classified(W_dec, r.numpy(), delta.numpy(), classes, alive_known=alive is not None)


def load_classified(directory: Path, thresholds: dict[str, float]) -> Classified:
    from reasondiff.crosscoder.model import load_crosscoder

    cc = load_crosscoder(directory, device="cpu")
    return classify(cc.W_dec, alive=alive_in_training(directory, cc.cfg.n_latents),
                    designated=cc.designated_shared.cpu(), thresholds=thresholds)


# --- seed ensembles ---------------------------------------------------------------------------------
STABILITY_COLUMNS = ["latent", "class", "class_delta", "stability", "n_other_seeds", "stable",
                     "stable_same_class", "stable_same_class_delta", "relative_norm_spread", "delta_spread",
                     "min_match_cosine"]


@dataclass
class Ensemble:
    reference: Classified
    others: dict[int, Classified]
    matchings: dict[int, Matching]
    stable_fraction: float

    @property
    def stability(self) -> np.ndarray:
        return stability(list(self.matchings.values()))

    @property
    def stable(self) -> np.ndarray:
        return self.stability >= self.stable_fraction - 1e-12

    def same_class(self, rule: str) -> np.ndarray:
        """[F] every match in the other seeds is in the latent's own class under `rule`."""
        own = np.array(self.reference.classes[rule])
        same = np.ones(len(own), dtype=bool)
        for seed, m in self.matchings.items():
            theirs = np.array(self.others[seed].classes[rule])
            ok = m.partner >= 0
            same[ok] &= theirs[m.partner[ok]] == own[ok]
        return same

    def stable_counts(self, rule: str, latent_class: str) -> tuple[int, int]:
        """(members of the class that are stable, ... and whose every match is in the same class)."""
        wanted = ("base_only", "tuned_only") if latent_class == "model_specific" else (latent_class,)
        member = np.isin(np.array(self.reference.classes[rule]), wanted)
        # model_specific: the same side (base-only stays base-only), not merely model-specific
        return int((member & self.stable).sum()), int((member & self.stable & self.same_class(rule)).sum())

    def rows(self) -> list[dict[str, Any]]:
        ref, seeds = self.reference, list(self.matchings)
        matchings = [self.matchings[s] for s in seeds]
        r_spread = spread_across_matches(ref.relative_norm, [self.others[s].relative_norm for s in seeds], matchings)
        d_spread = spread_across_matches(ref.delta, [self.others[s].delta for s in seeds], matchings)
        stab, stable = self.stability, self.stable
        same_r, same_d = self.same_class("r"), self.same_class("delta")
        worst = np.vstack([np.nan_to_num(m.cosine, nan=np.inf) for m in matchings]).min(axis=0)
        min_cos = np.where(np.isinf(worst), np.nan, worst)  # NaN: matched in no other seed
        return [{"latent": i, "class": ref.classes["r"][i], "class_delta": ref.classes["delta"][i],
                 "stability": float(stab[i]), "n_other_seeds": len(seeds), "stable": bool(stable[i]),
                 "stable_same_class": bool(stable[i] and same_r[i]),
                 "stable_same_class_delta": bool(stable[i] and same_d[i]),
                 "relative_norm_spread": float(r_spread[i]), "delta_spread": float(d_spread[i]),
                 "min_match_cosine": "" if math.isnan(min_cos[i]) else float(min_cos[i])}
                for i in range(len(ref.classes["r"]))]


def build_ensemble(reference: Classified, others: dict[int, Classified], *, threshold: float,
                   stable_fraction: float) -> Ensemble:
    matchings = {seed: match_latents(reference.W_dec, other.W_dec, threshold=threshold)
                 for seed, other in sorted(others.items())}
    return Ensemble(reference, others, matchings, stable_fraction)


# --- the calibrated table ---------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float:
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


def calibration_rows(reasoning: dict[int, Classified], nulls: dict[str, dict[int, Classified]], *, own_seed: int,
                     ensemble: Ensemble | None = None) -> list[dict[str, Any]]:
    """One row per (rule, class): counts per pair and seed, FDR with its interval over seeds, stable counts."""
    rows = []
    for rule in RULES:
        for latent_class in TABLE_CLASSES:
            ours = {s: c.count(rule, latent_class) for s, c in sorted(reasoning.items())}
            row: dict[str, Any] = {"rule": rule, "class": latent_class, "reasoning": ours[own_seed],
                                   "reasoning_seeds": "/".join(str(v) for v in ours.values()),
                                   "reasoning_mean": float(np.mean(list(ours.values()))), "n_seeds": len(ours)}
            if ensemble is not None and ensemble.matchings:
                row["stable"], row["stable_same_class"] = ensemble.stable_counts(rule, latent_class)
            mean_ours = row["reasoning_mean"]
            for pair, runs in nulls.items():
                theirs = {s: c.count(rule, latent_class) for s, c in sorted(runs.items())}
                # a shared latent is no discovery: its null count is shown, without a false-discovery rate
                discovery = latent_class != "shared"
                paired = [_ratio(theirs[s], ours[s]) for s in theirs if s in ours and discovery]
                finite = [x for x in paired if not math.isnan(x)]
                row.update({pair: theirs.get(own_seed, next(iter(theirs.values()))),
                            f"{pair}_seeds": "/".join(str(v) for v in theirs.values()),
                            f"fdr_{pair}": _ratio(float(np.mean(list(theirs.values()))), mean_ours)
                            if discovery else math.nan,
                            f"fdr_{pair}_low": min(finite) if finite else math.nan,
                            f"fdr_{pair}_high": max(finite) if finite else math.nan,
                            f"within_{pair}": bool(mean_ours <= max(theirs.values()))})
            rows.append(row)
    return rows


def calibration_columns(nulls: list[str], with_stability: bool) -> list[str]:
    columns = ["rule", "class", "reasoning", "reasoning_seeds", "reasoning_mean", "n_seeds"]
    if with_stability:
        columns += ["stable", "stable_same_class"]
    for pair in nulls:
        columns += [pair, f"{pair}_seeds", f"fdr_{pair}", f"fdr_{pair}_low", f"fdr_{pair}_high", f"within_{pair}"]
    return columns


def _fdr_text(row: dict[str, Any], pair: str) -> str:
    point, low, high = row[f"fdr_{pair}"], row[f"fdr_{pair}_low"], row[f"fdr_{pair}_high"]
    if row["class"] == "shared":
        return "n/a"
    if math.isnan(point):
        return "—"
    text = "∞" if math.isinf(point) else f"{point:.2f}"
    if not math.isnan(low) and (low != high or row["n_seeds"] > 1):
        text += f" [{low:.2f}, {high:.2f}]".replace("inf", "∞")
    return text


def calibration_markdown(rows: list[dict[str, Any]], nulls: list[str], *, seeds: list[int],
                         null_seeds: dict[str, list[int]], with_stability: bool, match_cosine: float,
                         stable_fraction: float) -> str:
    """The report's leading section: the table and a plain sentence for every count within a null."""
    from reasondiff.analyze.report import markdown_table

    names = {"base_vs_base": "base vs base", "control": "control fine-tune"}
    shown = []
    for row in rows:
        cell = {"rule": RULE_NAMES[row["rule"]], "class": row["class"].replace("_", "-"),
                "reasoning pair": f"{row['reasoning']} ({row['reasoning_seeds']})" if row["n_seeds"] > 1
                else str(row["reasoning"])}
        if with_stability:
            cell["stable (same class)"] = f"{row['stable']} ({row['stable_same_class']})"
        for pair in nulls:
            cell[names.get(pair, pair)] = f"{row[pair]} ({row[f'{pair}_seeds']})" if len(null_seeds[pair]) > 1 \
                else str(row[pair])
            cell[f"FDR vs {names.get(pair, pair)}"] = _fdr_text(row, pair)
        shown.append(cell)
    out = ["## Model-specific latents against a null\n" if nulls else "## Model-specific latents across seeds\n",
           ("Latents per class in the reasoning pair and in each null pair (docs/null.md), counted on every "
            if nulls else "Latents per class in this pair's crosscoders, one per seed (docs/null.md; the `reasoning "
            "pair` column is this pair), counted on every ")
           + "crosscoder the same way: decoder norms, latents alive at the end of training"
           + (f". In brackets: the counts for seeds {'/'.join(map(str, seeds))}"
              + "".join(f"; {names.get(p, p)}: seeds {'/'.join(map(str, null_seeds[p]))}" for p in nulls)
              if len(seeds) > 1 or any(len(v) > 1 for v in null_seeds.values()) else "")
           + ". FDR = mean null count ÷ mean reasoning-pair count, [smallest, largest] over seeds paired by seed "
           "(model-specific classes only: a shared latent is no discovery). "
           + (f"Stable: matched (concatenated-decoder cosine ≥ {match_cosine}, one to one) in at least "
              f"{stable_fraction:.0%} of the other seeds; in brackets, with every match in the same class.\n"
              if with_stability else "Stability needs seed siblings (analyze.seeds; none finished).\n"),
           markdown_table(shown, preformatted=True)]
    within, claimed = [], False
    for row in rows:
        if row["class"] == "shared" or row["reasoning_mean"] == 0:  # no count to calibrate
            continue
        claimed = True
        for pair in nulls:
            if row[f"within_{pair}"]:
                within.append(f"{row['class'].replace('_', '-')} by {row['rule'] if row['rule'] == 'r' else 'Δ'}: "
                              f"{row['reasoning_seeds']} in the reasoning pair, {row[f'{pair}_seeds']} in the "
                              f"{names.get(pair, pair)}")
    if within:
        out.append("\n**Within the null** (the reasoning pair finds no more than the null's largest count, so these "
                   "counts are no evidence of latents specific to the reasoning fine-tune): " + "; ".join(within) + ".\n")
    elif claimed and nulls:
        out.append("\nEvery model-specific count of the reasoning pair is above every null's largest count.\n")
    elif nulls:
        out.append("\nThe reasoning pair has no model-specific latent by either rule.\n")
    return "\n".join(out)


# --- the stage's step -------------------------------------------------------------------------------
def calibrate(cfg, out_dir: Path, cc_dir: Path, W_dec: torch.Tensor, designated: torch.Tensor,
              thresholds: dict[str, float]) -> dict[str, Any]:
    """stability.csv (with seed siblings), calibration.csv and calibration.md (with seed siblings or
    null pairs) in `out_dir`; returns what the manifest records."""
    from reasondiff.analyze.report import write_csv
    from reasondiff.app.ensembles import null_dirs, seed_dirs

    a = cfg.analyze
    siblings, null_runs = seed_dirs(cfg), null_dirs(cfg)
    if not siblings and not null_runs:
        return {}
    reference = classify(W_dec, alive=alive_in_training(cc_dir, W_dec.shape[0]), designated=designated,
                         thresholds=thresholds)
    others = {seed: load_classified(d, thresholds) for seed, d in siblings.items()}
    ensemble = build_ensemble(reference, others, threshold=a.match_cosine, stable_fraction=a.stable_fraction) \
        if others else None
    outputs: dict[str, Any] = {"seeds": [cfg.seed, *others], "nulls": {p: sorted(s) for p, s in null_runs.items()}}
    if ensemble is not None:
        rows = ensemble.rows()
        write_csv(out_dir / "stability.csv", rows, STABILITY_COLUMNS)
        outputs["n_stable"] = int(ensemble.stable.sum())
    nulls = {pair: {seed: load_classified(d, thresholds) for seed, d in runs.items()} for pair, runs in null_runs.items()}
    reasoning = {cfg.seed: reference, **others}
    table = calibration_rows(reasoning, nulls, own_seed=cfg.seed, ensemble=ensemble)
    write_csv(out_dir / "calibration.csv", table, calibration_columns(list(nulls), ensemble is not None))
    artifacts.write_text(out_dir / "calibration.md", calibration_markdown(
        table, list(nulls), seeds=sorted(reasoning), null_seeds={p: sorted(r) for p, r in nulls.items()},
        with_stability=ensemble is not None, match_cosine=a.match_cosine, stable_fraction=a.stable_fraction))
    outputs["calibration"] = table
    return outputs
