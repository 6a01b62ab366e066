"""torchrun (torch.distributed, gloo on CPU) for the heavy stages: a 2-rank launch of each stage on
the tiny world gives the single-process result (harvest: the same set of rows and statistics;
train: the same crosscoder to a stated tolerance; bench and analyze: the same tables), the stage
contract holds across ranks (one COMPLETED, one manifest; a killed rank ends the run and the
re-run resumes it), and the sharding helpers split and gather exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, app_env, make_config
from test_analyze_stage import analyze_overrides, crosscoder_dir  # noqa: F401, F811 (a fixture)

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts, distributed
from reasondiff.harvest.store import ActivationStore

RANKS = 2


def torchrun(module: str, *overrides: str, nproc: int = RANKS, timeout: int = 240, module_: bool = True,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m <module> <overrides>` (one thread per rank;
    `module_=False`: a script path instead of a module)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *(["-m"] if module_ else []), module, *overrides]
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


def test_meter_states_merge_into_the_single_pass_state():
    """Two ranks' halves of a pass merge into the state of one pass over everything: sums add,
    maxima max, per-context arrays hold each context's own numbers, top-k re-ranked, ids must agree."""
    from reasondiff.analyze.contexts import LatentStats, TopContexts
    from reasondiff.core.streamed_pass import merge_states

    torch.manual_seed(0)
    f = torch.relu(torch.randn(2, 6, 8, 5))  # [halves, contexts, tokens, latents]
    whole, halves = LatentStats(5), [LatentStats(5), LatentStats(5)]
    top_whole, top_halves = TopContexts([1, 3], 2, 8), [TopContexts([1, 3], 2, 8) for _ in range(2)]
    for h in range(2):
        halves[h].update(f[h].reshape(-1, 5))
        whole.update(f[h].reshape(-1, 5))
        index = torch.arange(6) + 6 * h
        top_halves[h].update(f[h], index)
        top_whole.update(f[h], index)
    merged = merge_states([m.state_dict() for m in halves], LatentStats.MERGE)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(merged[key], value, msg=key)
    top_halves[0].merge_states([t.state_dict() for t in top_halves])
    for key in ("values", "context", "rows"):
        assert torch.equal(getattr(top_halves[0], key), getattr(top_whole, key)), key
    per_context = [torch.zeros(4).index_fill_(0, torch.tensor([r, r + 2]), float(r + 1)) for r in range(2)]
    assert merge_states([{"sums": c} for c in per_context], {})["sums"].tolist() == [1.0, 2.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="ranks disagree on latents"):
        merge_states([{"latents": torch.tensor([1])}, {"latents": torch.tensor([2])}], {"latents": "same"})


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


@pytest.fixture(scope="module")
def harvest_args(tiny_model_dir, tiny_tuned_model_dir, small_corpus) -> tuple:
    return tiny_model_dir, tiny_tuned_model_dir, small_corpus, "harvest.n_tokens=100000"


@pytest.fixture(scope="module")
def single_harvest(tmp_path_factory, harvest_args) -> Path:
    """A single-process harvest of the small corpus (the reference, and train's input)."""
    root = tmp_path_factory.mktemp("one")
    return run_stage(make_config(*_harvest_overrides(root, *harvest_args), config_name="harvest"))


def test_two_ranks_harvest_the_rows_of_one_process_and_resume_a_killed_rank(tmp_path, harvest_args, single_harvest):
    overrides = _harvest_overrides(tmp_path / "two", *harvest_args)
    out = tmp_path / "two" / "tiny" / "harvest"
    # rank 1 killed (SIGKILL) after its third shard: the launch fails, nothing is marked complete
    killed = torchrun(str(Path(__file__).parent / "torchrun_kill.py"), *overrides, module_=False,
                      env={"KILL_RANK": "1", "KILL_AFTER": "3"})
    assert killed.returncode != 0 and "Signal 9" in killed.stderr and "torchrun_kill.py" in killed.stderr
    assert not artifacts.is_complete(out) and not (out / "store.json").is_file()  # rank 0 merges only at the end
    kept = json.loads((out / "store.rank1.json").read_text())["shards"]
    assert len(kept) == 2  # the third shard's file was written, not listed: a stray the resume removes
    first = out / kept[0]["acts"]["file"]
    before = first.stat().st_mtime_ns
    # the same command again: every rank resumes its own part
    check(torchrun("reasondiff.harvest", *overrides))
    assert artifacts.is_complete(out) and first.stat().st_mtime_ns == before  # rank 1's shards kept, not redone
    rows_1, stats_1 = _rows(single_harvest)
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
    assert manifest["documents_used"] == json.loads((single_harvest / "store.json").read_text())["documents_used"]


# --- train ------------------------------------------------------------------------------------------------
TRAIN = ("train.data=store", "train.n_latents=256", "train.batch_size=64", "train.n_tokens=1280",
         "train.eval_tokens=200", "train.log_every=5", "train.checkpoint_every=8", "train.shared_latents=0.05",
         "train.dead_tokens=128", "train.l1_coeff=5")


def _copy_harvest(single: Path, root: Path) -> None:
    shutil.copytree(single, root / "tiny" / "harvest")


@pytest.mark.parametrize("sparse", ["on"])
def test_two_ranks_train_the_crosscoder_of_one_process(tmp_path, harvest_args, single_harvest, sparse):
    """Same global batch (64 = 2 x 32): the same crosscoder after 20 steps of Adam, to float32
    summation order (atol 1e-5 on weights of size ~0.1), the same dead latents, the shared rows tied."""
    runs = {}
    for name, nproc in (("one", 1), ("two", RANKS)):
        root = tmp_path / name
        _copy_harvest(single_harvest, root)
        overrides = [*_harvest_overrides(root, *harvest_args), *TRAIN, f"train.sparse={sparse}"]
        if nproc == 1:
            run_stage(make_config(*overrides, config_name="train"))
        else:
            check(torchrun("reasondiff.train", *overrides))
        runs[name] = root / "tiny" / "train"
    from reasondiff.crosscoder.model import CrossCoder

    one, two = (CrossCoder.load(runs[n]) for n in ("one", "two"))
    for key, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[key], value, atol=1e-5, rtol=1e-4, msg=key)
    n_shared = one.cfg.n_shared_latents
    assert n_shared > 0 and torch.equal(two.W_dec[:n_shared, 0], two.W_dec[:n_shared, 1])  # tying survived
    counters = [torch.load(runs[n] / "final_counters.pt") for n in ("one", "two")]
    assert torch.equal(counters[0], counters[1]) and 0 < int((counters[0] >= 128).sum()) < 256
    summaries = [json.loads((runs[n] / "summary.json").read_text()) for n in ("one", "two")]
    assert summaries[1]["frac_dead"] == summaries[0]["frac_dead"]
    assert summaries[1]["fvu"] == pytest.approx(summaries[0]["fvu"], rel=1e-3)
    manifest = json.loads((runs["two"] / "manifest.json").read_text())
    assert manifest["world_size"] == RANKS and "world_size" not in manifest["settings"]  # same result, same fingerprint
    fingerprint = [json.loads((runs[n] / "manifest.json").read_text())["fingerprint"] for n in ("one", "two")]
    assert fingerprint[0] == fingerprint[1]


# --- bench ------------------------------------------------------------------------------------------------
TIMING = {"seconds", "batch", "seconds_per_question"}
"""Wall times and batch ids: the only fields a rank split may change."""


def _generations(directory: Path) -> list[dict]:
    rows = [json.loads(line) for line in (directory / "generations.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _table(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    return table.drop(columns=[c for c in table.columns if c in TIMING])


def test_two_ranks_bench_the_questions_of_one_process(tmp_path, tiny_world, tiny_model_dir, tiny_tuned_model_dir):
    """Questions split over the ranks, gathered in question order: the same generations and the same
    tables (bootstrap intervals included) as one process, times aside."""
    data = [f"bench.data.{task}.path={tiny_world}/{task}.jsonl" for task in ("gsm8k", "math500", "boolq")]
    common = ["+exp=tiny", f"model.path={tiny_model_dir}", "model.build_tiny=false", f"tuned_model={tiny_tuned_model_dir}",
              "bench.models=[base,tuned]", "bench.limit=5", "bench.token_limits=[4,9]", "hardware.bench_batch_size=1",
              "hardware.device=cpu", "hardware.cpu_threads=1", "wandb.mode=disabled", *data]
    one = run_stage(make_config(f"output_root={tmp_path / 'one'}", *common, config_name="bench"))
    check(torchrun("reasondiff.bench", f"output_root={tmp_path / 'two'}", *common))
    two = tmp_path / "two" / "tiny" / "bench"
    assert artifacts.is_complete(two)
    ranks = [_generations_of(two / f"generations.rank{r}.jsonl") for r in range(RANKS)]
    assert all(ranks) and not {r["id"] for r in ranks[0]} & {r["id"] for r in ranks[1]}  # split, no overlap
    merged, single = _generations(two), _generations(one)
    key = lambda r: (r["model"], r["task"], r["id"], r["limit"])  # noqa: E731
    assert sorted(merged, key=key) == sorted(single, key=key)
    # the merged file is in question order: each task's ids as the seeded subset lists them
    from reasondiff.bench.prompts import load_questions

    cfg = make_config(f"output_root={tmp_path / 'one'}", *common, config_name="bench")
    for task in cfg.bench.tasks:
        ids = [q.id for q in load_questions(task, cfg.bench)]
        assert [r["id"] for r in merged if r["model"] == "base" and r["task"] == task and r["limit"] == 4] == ids
    for table in ("results.csv", "summary.csv"):
        pd.testing.assert_frame_equal(_table(two / table), _table(one / table))


def _generations_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- analyze ----------------------------------------------------------------------------------------------
def test_two_ranks_analyze_with_the_intervals_of_one_process(tmp_path, crosscoder_dir, tiny_model_dir,  # noqa: F811
                                                             tiny_tuned_model_dir, tiny_world):
    """Contexts split over the ranks, per-context sums merged before the bootstrap: ce_recovery.csv
    (values and intervals) is the single process's exactly; the latent statistics to float64 rounding."""
    overrides = analyze_overrides(tmp_path / "one", crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world,
                                  "wandb.mode=disabled", "hardware.cpu_threads=1")
    one = run_stage(make_config(*overrides, config_name="analyze"))
    check(torchrun("reasondiff.analyze", *[o.replace(str(tmp_path / "one"), str(tmp_path / "two")) for o in overrides]))
    two = tmp_path / "two" / "t" / "analyze"
    assert artifacts.is_complete(two) and not list(two.glob("partial_*"))
    assert (two / "ce_recovery.csv").read_text() == (one / "ce_recovery.csv").read_text()
    for table in ("latents.csv", "reconstruction.csv", "class_counts.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(two / table), pd.read_csv(one / table), rtol=1e-9, obj=table)


# --- Slurm through Hydra's submitit launcher (its local executor) ------------------------------------------
def test_a_two_job_multirun_through_submitit_with_two_ranks_per_job(tmp_path):
    """`hydra/launcher=submitit_local` with two tasks per job: each sweep point is one job whose two
    tasks are the two ranks of one data-parallel run (as `slurm_ddp` on a cluster), the sweep
    tallies two finished jobs, and each job's crosscoder is the single-process one."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the [slurm] extra")
    small = ["+exp=tiny", f"output_root={tmp_path}", "train.data=synthetic", "model.build_tiny=false",
             "hardware.device=cpu", "hardware.cpu_threads=1", "train.synthetic.d_model=16", "train.n_latents=32",
             "train.batch_size=64", "train.n_tokens=640", "train.eval_tokens=128", "train.log_every=5",
             "wandb.mode=disabled"]
    result = subprocess.run([sys.executable, "-m", "reasondiff.train", "-m", *small, "train.l1_coeff=1,2",
                             "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                             "hydra.launcher.timeout_min=5"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=app_env(WANDB_MODE="disabled"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from reasondiff.crosscoder.model import CrossCoder

    for l1 in (1, 2):
        out = tmp_path / "tiny" / f"train@synthetic+l1_coeff={l1}"
        assert artifacts.is_complete(out)
        assert json.loads((out / "manifest.json").read_text())["world_size"] == 2
        alone = run_stage(make_config(*[o.replace(str(tmp_path), str(tmp_path / f"alone{l1}")) for o in small],
                                      f"train.l1_coeff={l1}"))
        torch.testing.assert_close(CrossCoder.load(out).W_dec, CrossCoder.load(alone).W_dec, atol=1e-5, rtol=1e-4)
