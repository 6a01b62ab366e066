"""Which latents to intervene on: sets chosen by each rule at each size, and the random sets they are read
against.

The rules read analyze's latent table (latents.csv) of the same crosscoder:
- `tuned_r` / `base_r`: highest / lowest relative decoder norm r = ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖);
- `delta`: highest Δ (Minder et al. 2025). Δ and r are both increasing functions of ‖d_tuned‖ / ‖d_base‖,
  so `delta` ranks as `tuned_r` does (ties and NaNs aside) and its sets are those of tuned_r: a rule whose
  sets repeat an earlier rule's at every size is skipped with that reason, not measured twice;
- `selectivity`: firing frequency on reasoning text ÷ on general text (needs the reasoning frequencies);
- `nu`: the tuned-only latents with a finite Latent Scaling ν_error, lowest first (the tuned latents the
  base model needs least: "truly" tuned-specific);
- `shared`: the designated shared latents (train.shared_latents), most frequent first.
Dead latents are never chosen, and designated shared latents only by `shared`.

Random controls: for each selected set, `n_random_sets` sets of the same size, each latent drawn from the
`pool` live latents nearest in log firing frequency to its selected counterpart (outside the selected set,
without repeats): the random sets match the selection's frequency profile, so a selection that "beats
random" does so for what it picked, not for picking latents that fire more. Draws are seeded per (rule,
size, set), so a set never depends on which other rules run.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reasondiff.core.errors import UserError

EPS_FREQUENCY = 1e-7
"""Added to frequencies before logs and ratios (a latent that never fires on general text)."""


@dataclass
class LatentTable:
    """The columns of analyze's latents.csv the rules read, as arrays over latents."""

    relative_norm: np.ndarray
    delta_norm: np.ndarray
    freq_general: np.ndarray
    freq_reasoning: np.ndarray
    """NaN everywhere when analyze read no reasoning text."""
    mean_activation: np.ndarray
    """Mean activation where the latent fires (general text), in the crosscoder's normalised space."""
    nu_error: np.ndarray
    """Latent Scaling ν_error (NaN where not computed)."""
    classes: list[str]
    designated: np.ndarray

    @property
    def n_latents(self) -> int:
        return len(self.classes)

    @property
    def has_reasoning(self) -> bool:
        return bool(np.isfinite(self.freq_reasoning).any())

    @property
    def frequency(self) -> np.ndarray:
        """The frequency random sets are matched on: on reasoning text when read (the text whose KL is
        measured), else on general text."""
        return self.freq_reasoning if self.has_reasoning else self.freq_general

    @property
    def live(self) -> np.ndarray:
        return (self.freq_general > 0) | (np.nan_to_num(self.freq_reasoning) > 0)


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key, "") not in ("", None) else math.nan for r in rows])


def read_latent_table(path: Path, n_latents: int, designated: np.ndarray) -> LatentTable:
    """analyze's latents.csv, checked against the crosscoder it must describe."""
    if not path.is_file():
        raise UserError(f"{path}: no latent table; run `python -m reasondiff.analyze` first (intervene chooses "
                        "latents from it)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != n_latents or [int(r["latent"]) for r in rows] != list(range(n_latents)):
        raise UserError(f"{path} describes {len(rows)} latents, the crosscoder has {n_latents}: re-run analyze on "
                        "this crosscoder")
    return LatentTable(relative_norm=_column(rows, "relative_norm"), delta_norm=_column(rows, "delta_norm"),
                       freq_general=_column(rows, "freq_general"), freq_reasoning=_column(rows, "freq_reasoning"),
                       mean_activation=_column(rows, "mean_activation"), nu_error=_column(rows, "nu_error"),
                       classes=[r["class"] for r in rows], designated=np.asarray(designated, dtype=bool))


def ranked(table: LatentTable, rule: str) -> tuple[list[int], str]:
    """(latents in the rule's order, why none) — an empty list with the reason when the rule has no candidate."""
    idx = np.arange(table.n_latents)
    live = table.live
    ordinary = live & ~table.designated

    def order(mask: np.ndarray, key: np.ndarray, descending: bool) -> list[int]:
        keep = mask & np.isfinite(key)
        chosen = idx[keep]
        values = key[keep]
        # stable: ties keep the latent order
        perm = np.argsort(-values if descending else values, kind="stable")
        return chosen[perm].tolist()

    if rule == "tuned_r":
        return order(ordinary, table.relative_norm, True), "no live latent has a relative norm"
    if rule == "base_r":
        return order(ordinary, table.relative_norm, False), "no live latent has a relative norm"
    if rule == "delta":
        return order(ordinary, table.delta_norm, True), "no live latent has a Δ"
    if rule == "selectivity":
        if not table.has_reasoning:
            return [], "analyze read no reasoning text (analyze.reasoning_corpus)"
        ratio = (np.nan_to_num(table.freq_reasoning) + EPS_FREQUENCY) / (table.freq_general + EPS_FREQUENCY)
        return order(ordinary & (np.nan_to_num(table.freq_reasoning) > 0), ratio, True), \
            "no live latent fires on reasoning text"
    if rule == "nu":
        tuned_only = np.array([c == "tuned_only" for c in table.classes])
        return order(ordinary & tuned_only, table.nu_error, False), \
            "no tuned-only latent has a Latent Scaling ν (analyze.latent_scaling)"
    if rule == "shared":
        return order(live & table.designated, table.frequency, True), \
            "the crosscoder has no (live) designated shared latents (train.shared_latents)"
    raise ValueError(f"unknown selection rule {rule!r}")


def matched_random_set(selected: list[int], table: LatentTable, *, pool: int, seed: str) -> list[int]:
    """One random set matched latent by latent to `selected` on log frequency (see the module docstring)."""
    rng = random.Random(seed)
    log_freq = np.log(np.nan_to_num(table.frequency) + EPS_FREQUENCY)
    candidates = np.flatnonzero(table.live & ~table.designated & ~np.isin(np.arange(table.n_latents), selected))
    used: set[int] = set()
    out = []
    for latent in selected:
        free = np.array([c for c in candidates if int(c) not in used])
        if len(free) == 0:
            break
        distance = np.abs(log_freq[free] - log_freq[latent])
        nearest = free[np.argsort(distance, kind="stable")[:pool]]
        pick = int(rng.choice(nearest.tolist()))
        used.add(pick)
        out.append(pick)
    return out


@dataclass(frozen=True)
class LatentSet:
    selection: str
    """The rule, or `random`."""
    size: int
    set_index: int
    """0 = the rule's own set; 1.. = its random controls."""
    latents: tuple[int, ...]
    matched_to: str = ""
    """A random set: the rule it is matched to."""


def latent_sets(table: LatentTable, rules: list[str], sizes: list[int], *, n_random: int, pool: int,
                seed: int) -> tuple[list[LatentSet], dict[str, str]]:
    """Every rule at every size (a size above the rule's candidates: the whole list, once) with its random
    controls; and {rule: why it was skipped}."""
    sets: list[LatentSet] = []
    skipped: dict[str, str] = {}
    chosen_by: dict[tuple, str] = {}
    for rule in rules:
        order, reason = ranked(table, rule)
        if not order:
            skipped[rule] = reason
            continue
        own = tuple(dict.fromkeys(tuple(order[:size]) for size in sorted(sizes)))
        if own in chosen_by:
            skipped[rule] = f"its sets are {chosen_by[own]}'s at every size (measured once, under {chosen_by[own]})"
            continue
        chosen_by[own] = rule
        for chosen in own:
            sets.append(LatentSet(rule, len(chosen), 0, chosen))
            for r in range(1, n_random + 1):
                random_set = matched_random_set(list(chosen), table, pool=pool, seed=f"{seed}:{rule}:{len(chosen)}:{r}")
                sets.append(LatentSet("random", len(random_set), r, tuple(random_set), matched_to=rule))
    return sets, skipped


def mean_frequency(table: LatentTable, latents: tuple[int, ...]) -> float:
    return float(np.nanmean(table.frequency[list(latents)])) if latents else math.nan
