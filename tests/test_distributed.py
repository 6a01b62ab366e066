"""torchrun (torch.distributed, gloo on CPU) for the heavy stages: a 2-rank launch of each stage on
the tiny world gives the single-process result (harvest: the same set of rows and statistics;
train: the same crosscoder to a stated tolerance; bench and analyze: the same tables), the stage
contract holds across ranks (one COMPLETED, one manifest; a killed rank ends the run and the
re-run resumes it), and the sharding helpers split and gather exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, app_env, make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts, distributed
from reasondiff.harvest.store import ActivationStore

RANKS = 2


def torchrun(module: str, *overrides: str, nproc: int = RANKS, timeout: int = 240,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m <module> <overrides>` (one thread per rank)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", module, *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=app_env(WANDB_MODE="disabled", HF_DATASETS_OFFLINE="1", **(env or {})))


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


# --- the sharding helpers (one process: world size 1) ----------------------------------------------------
@pytest.mark.parametrize("strategy", ["contiguous", "strided"])
@pytest.mark.parametrize("n_items,world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_every_item_is_on_exactly_one_rank(strategy, n_items, world):
    shares = [distributed.shard_indices(n_items, strategy=strategy, rank_=r, world=world) for r in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(n_items))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    if strategy == "contiguous":
        assert [i for share in shares for i in share] == list(range(n_items))


def test_a_single_process_is_world_size_one():
    assert distributed.world_size() == 1 and distributed.is_main_process() and not distributed.init()
    assert distributed.shard(list("abc")) == [(0, "a"), (1, "b"), (2, "c")]
    assert distributed.gather_by_index({1: "b", 0: "a"}, n_items=2) == ["a", "b"]
    with pytest.raises(RuntimeError, match="1 of 3 items came back from no rank"):
        distributed.gather_by_index({0: "a", 2: "c"}, n_items=3)


# --- harvest ----------------------------------------------------------------------------------------------
def _harvest_overrides(root: Path, model: Path, tuned: Path, corpus: Path, *extra: str) -> list[str]:
    return ["+exp=tiny", f"output_root={root}", "model.build_tiny=false", f"model.path={model}",
            f"tuned_model={tuned}", f"harvest.corpus={corpus}", "harvest.reasoning_fraction=0",
            "harvest.context_length=32", "harvest.shard_tokens=200", "harvest.stats_sample_tokens=100000",
            "harvest.store_dtype=float32", "hardware.harvest_batch_size=2", "hardware.device=cpu",
            "hardware.cpu_threads=1", "wandb.mode=disabled", *extra]


@pytest.fixture(scope="module")
def small_corpus(tiny_world, tmp_path_factory) -> Path:
    """The first 30 documents of the tiny corpus: a harvest reads all of them (the budget is larger)."""
    path = tmp_path_factory.mktemp("small_corpus") / "corpus.jsonl"
    lines = (tiny_world / "corpus.jsonl").read_text().splitlines()[:30]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(directory: Path) -> tuple[Counter, dict]:
    """The store as a multiset of (token id, activation bytes) rows (identical openings give identical
    rows, so a set would hide a context run on two ranks), and its stats.json."""
    store = ActivationStore.open(directory)
    acts = store.gather(torch.arange(store.n_tokens)).numpy()
    tokens = np.asarray(store.tokens())
    rows = Counter((int(t), a.tobytes()) for t, a in zip(tokens, acts, strict=True))
    return rows, json.loads((directory / "stats.json").read_text())


def test_two_ranks_harvest_the_rows_of_one_process(tmp_path, tiny_model_dir, tiny_tuned_model_dir, small_corpus):
    args = (tiny_model_dir, tiny_tuned_model_dir, small_corpus, "harvest.n_tokens=100000")
    single = run_stage(make_config(*_harvest_overrides(tmp_path / "one", *args), config_name="harvest"))
    check(torchrun("reasondiff.harvest", *_harvest_overrides(tmp_path / "two", *args)))
    out = tmp_path / "two" / "tiny" / "harvest"
    assert artifacts.is_complete(out)
    rows_1, stats_1 = _rows(single)
    rows_2, stats_2 = _rows(out)
    assert rows_2 == rows_1  # the same rows (the corpus ran out before the budget)
    manifest = json.loads((out / "store.json").read_text())
    assert {s["rank"] for s in manifest["shards"]} == {0, 1}  # both ranks wrote shards, under their own names
    assert all(s["acts"]["file"].startswith(f"shard_r{s['rank']}_") for s in manifest["shards"])
    for key in ("mean_norm", "median_norm", "max_norm", "scaling_factors"):
        np.testing.assert_allclose(stats_2[key], stats_1[key], rtol=1e-5)
    assert stats_2["n_sample_tokens"] == stats_1["n_sample_tokens"] == sum(rows_1.values())
    # one manifest, written once, by rank 0, after both ranks finished
    assert json.loads((out / "manifest.json").read_text())["world_size"] == RANKS
    assert manifest["documents_used"] == json.loads((single / "store.json").read_text())["documents_used"]
