"""Ranks of a `torchrun` launch (torch.distributed), and the sharding every heavy stage shares.

`torchrun --nproc_per_node=N -m reasondiff.<stage> ...` starts N processes with RANK / WORLD_SIZE /
MASTER_ADDR set; `init()` joins them into one process group (NCCL on GPUs, gloo on CPUs). A plain
`python -m reasondiff.<stage>` is the world-size-1 case: every helper here is then a no-op (the
shard of a rank is everything, a gather returns the rank's own list), so a single process runs the
same code it always did.

What the stages do with it (docs/distributed.md):
- items (questions, contexts) are split by `shard_indices` (contiguous or strided), each rank works
  on its share and `gather_by_index` puts the per-item results back in item order on every rank,
  so anything computed afterwards (bootstrap intervals, tables) sees exactly a single process's list;
- gradients and counters are summed with `all_reduce` (train), objects agreed with `broadcast`.

A rank that dies ends the run: torchrun's agent stops the other workers (SIGTERM, taken as an
interrupt that saves the work so far) and the launch exits non-zero; re-running the same command
resumes every rank's part. The process group's `timeout` bounds how long a rank waits for a peer
that hangs rather than dies.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_ENV = "REASONDIFF_DIST_TIMEOUT_S"
"""Seconds a collective waits for the other ranks (default 1800: rank 0 may evaluate alone)."""


def world_size() -> int:
    """Processes in this launch (1 without torchrun)."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its node (the GPU it uses)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 owns the stage directory's bookkeeping (lock, fingerprint, manifest, COMPLETED)."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def from_submitit() -> bool:
    """A Slurm job of several tasks started by Hydra's submitit launcher (or submitit's local
    executor) runs each task as one rank: submitit's own TorchDistributedEnvironment sets the
    variables torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR from the job's first host,
    MASTER_PORT from the job id). Nothing happens outside such a job or under torchrun."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return False
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def init() -> bool:
    """Join the process group of a torchrun launch, or of a several-task submitit job (once); False
    for a single process.

    gloo on CPUs, NCCL when this process has a GPU (each rank on cuda:LOCAL_RANK)."""
    from_submitit()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    dist.init_process_group(backend=backend, timeout=timeout)
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return dist if dist.is_available() else None


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """`obj` of rank `src`, on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (picklable objects)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def all_reduce_(tensor, op: str = "sum"):
    """In-place sum / max / min of a tensor over the ranks (returns it)."""
    if is_distributed():
        dist = _dist()
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                    "min": dist.ReduceOp.MIN}[op])
    return tensor


# --- sharding items ----------------------------------------------------------------------------------
def shard_indices(n_items: int, *, strategy: str = "contiguous", rank_: int | None = None,
                  world: int | None = None) -> list[int]:
    """The item indices this rank works on: `contiguous` (rank r gets one block; blocks differ by at
    most one item) or `strided` (items r, r + W, r + 2W, ...: balances items whose cost grows with
    their index). Every index is on exactly one rank."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if strategy == "strided":
        return list(range(r, n_items, w))
    if strategy != "contiguous":
        raise ValueError(f"strategy must be contiguous or strided, got {strategy!r}")
    base, extra = divmod(n_items, w)
    start = r * base + min(r, extra)
    return list(range(start, start + base + (1 if r < extra else 0)))


def shard(items: Sequence[T], *, strategy: str = "contiguous") -> list[tuple[int, T]]:
    """(index, item) pairs of this rank's share of `items`."""
    return [(i, items[i]) for i in shard_indices(len(items), strategy=strategy)]


def gather_by_index(local: dict[int, T] | Sequence[tuple[int, T]], n_items: int | None = None) -> list[T]:
    """Per-item results of every rank, in item order, on every rank. `local`: this rank's
    {index: result}. With `n_items`, a missing or duplicated index is an error (a rank lost work)."""
    pairs = list(local.items()) if isinstance(local, dict) else list(local)
    merged: dict[int, T] = {}
    for part in all_gather(pairs):
        for index, value in part:
            if index in merged:
                raise RuntimeError(f"item {index} was computed on two ranks")
            merged[index] = value
    if n_items is not None and sorted(merged) != list(range(n_items)):
        missing = sorted(set(range(n_items)) - set(merged))
        raise RuntimeError(f"{len(missing)} of {n_items} items came back from no rank (first: {missing[:5]})")
    return [merged[i] for i in sorted(merged)]


def rank_suffix() -> str:
    """'' for a single process, '.rank<r>' for rank r of a multi-rank run (per-rank files)."""
    return f".rank{rank()}" if is_distributed() else ""
