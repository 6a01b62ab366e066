"""The sibling train runs analyze reads besides its own crosscoder: seed siblings and null pairs.

For an analyze run named R (the main run: R = ""), with `analyze.seeds` and `analyze.nulls`:
- seed S of the reasoning pair is this run's own crosscoder when S = `seed`, else train@R+seed=S;
- null pair P is train@P+R for this run's seed, and train@P+R+seed=S for the others
  (`+null=P` runs are named after the pair; a seed job adds `seed=S`: reasondiff/core/runs.py).
Only finished runs count; the list is part of analyze's upstream (reasondiff.app.preflight), so a
seed or null run that finishes later makes the analysis stale.
"""

from __future__ import annotations

from pathlib import Path

from reasondiff.core import artifacts
from reasondiff.core.runs import dir_name, join


def seed_run(run: str, seed: int, own_seed: int) -> str:
    return run if seed == own_seed else join(run, f"seed={seed}")


def seed_dirs(cfg, run: str | None = None) -> dict[int, Path]:
    """{seed: train directory} of the reasoning pair's (or `run`'s) OTHER seeds that have finished."""
    run = cfg.run if run is None else run
    found = {}
    for seed in cfg.analyze.seeds:
        if seed == cfg.seed:
            continue
        directory = cfg.exp_dir / dir_name("train", seed_run(run, seed, cfg.seed))
        if artifacts.is_complete(directory):
            found[seed] = directory
    return found


def null_dirs(cfg) -> dict[str, dict[int, Path]]:
    """{null pair: {seed: train directory}} of the finished null runs (this run's seed included);
    none when this run is itself a null pair."""
    if cfg.nulls.pair:
        return {}
    found: dict[str, dict[int, Path]] = {}
    for pair in cfg.analyze.nulls:
        run = join(pair, cfg.run)
        seeds = {}
        for seed in dict.fromkeys([cfg.seed, *cfg.analyze.seeds]):
            directory = cfg.exp_dir / dir_name("train", seed_run(run, seed, cfg.seed))
            if artifacts.is_complete(directory):
                seeds[seed] = directory
        if seeds:
            found[pair] = seeds
    return found


def sibling_train_dirs(cfg) -> list[Path]:
    """Every train directory analyze reads besides its own crosscoder."""
    dirs = list(seed_dirs(cfg).values())
    for seeds in null_dirs(cfg).values():
        dirs += list(seeds.values())
    return dirs
