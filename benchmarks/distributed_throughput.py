"""Harvest and train throughput at 1 rank vs N torchrun ranks (gloo on CPU, one thread per rank).

    .venv/bin/python benchmarks/distributed_throughput.py                # the tiny world, 1 vs 2 ranks
    .venv/bin/python benchmarks/distributed_throughput.py --ranks 4 --harvest-tokens 400000

Each side is the real stage app (`python -m reasondiff.<stage>` vs `torchrun --nproc_per_node=N -m
reasondiff.<stage>`) on the same settings in its own output root; the figure is the stage's own
wall time from its manifest.json (the work, without interpreter start-up and imports) and the
launch's wall time around it. Train reads one single-process store, copied to both roots, so both
sides train on the same rows. The last line of output is a JSON object with every figure.

What bounds the ratio (docs/distributed.md): harvest — every rank packs the whole context stream
(tokenising is duplicated, forwards are not), rank 0 merges the manifests and estimates stats.json
alone; train — one all-reduce of every gradient per step (2·2·d·F floats for the encoder and
decoders) over gloo, which on a small crosscoder costs as much as the step, and rank 0 evaluates
alone. On a 2-core machine two ranks can at most double the compute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--exp", default="tiny", help="+exp=NAME (default: the embedded tiny world)")
    parser.add_argument("--harvest-tokens", type=int, default=200_000)
    parser.add_argument("--train-tokens", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024, help="train.batch_size (the global batch)")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for both stages")
    parser.add_argument("--keep", action="store_true", help="keep the output roots")
    return parser.parse_args()


def launch(stage: str, ranks: int, overrides: list[str]) -> float:
    """Run the stage app; returns the launch's wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    runner = [sys.executable, "-m"] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m"]
    start = time.perf_counter()
    result = subprocess.run([*runner, f"reasondiff.{stage}", *overrides], cwd=REPO, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{stage} with {ranks} rank(s) failed:\n{result.stderr[-3000:]}")
    return seconds


def stage_seconds(root: Path, exp: str, stage: str) -> float:
    return float(json.loads((root / exp / stage / "manifest.json").read_text())["wall_seconds"])


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="reasondiff-dist-bench-"))
    sides = {1: work / "ranks1", args.ranks: work / f"ranks{args.ranks}"}
    # the base model stands in for the tuned one unless --set tuned_model=... (the work is the same)
    common = [f"+exp={args.exp}", "hardware.cpu_threads=1", "hardware.device=cpu", "wandb.mode=disabled",
              "tuned_model=${model.path}", *args.set]
    harvest_set = [f"harvest.n_tokens={args.harvest_tokens}"]
    train_set = ["train.data=store", f"train.n_tokens={args.train_tokens}", f"train.batch_size={args.batch_size}"]
    result: dict = {"ranks": args.ranks, "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "threads_per_rank": 1, "exp": args.exp,
                    "harvest_tokens": args.harvest_tokens, "train_tokens": args.train_tokens,
                    "train_batch_size": args.batch_size}
    try:
        for ranks, root in sides.items():
            launch_s = launch("harvest", ranks, [f"output_root={root}", *common, *harvest_set])
            result[f"harvest_ranks{ranks}_launch_seconds"] = round(launch_s, 2)
            result[f"harvest_ranks{ranks}_seconds"] = round(stage_seconds(root, args.exp, "harvest"), 2)
        # train on the same rows at both world sizes: the single-process store in both roots
        shutil.rmtree(sides[args.ranks] / args.exp / "harvest")
        shutil.copytree(sides[1] / args.exp / "harvest", sides[args.ranks] / args.exp / "harvest")
        for ranks, root in sides.items():
            launch_s = launch("train", ranks, [f"output_root={root}", *common, *harvest_set, *train_set])
            result[f"train_ranks{ranks}_launch_seconds"] = round(launch_s, 2)
            result[f"train_ranks{ranks}_seconds"] = round(stage_seconds(root, args.exp, "train"), 2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for stage, tokens in (("harvest", args.harvest_tokens), ("train", args.train_tokens)):
        one, many = result[f"{stage}_ranks1_seconds"], result[f"{stage}_ranks{args.ranks}_seconds"]
        result[f"{stage}_tokens_per_second_ranks1"] = round(tokens / one)
        result[f"{stage}_tokens_per_second_ranks{args.ranks}"] = round(tokens / many)
        result[f"{stage}_speedup"] = round(one / many, 2)
        print(f"{stage:8s} 1 rank {one:8.1f} s ({tokens / one:,.0f} tok/s)   {args.ranks} ranks {many:8.1f} s "
              f"({tokens / many:,.0f} tok/s)   speed-up x{one / many:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
