"""Stage 3 — harvest paired residual activations of the base and tuned models (`python -m reasondiff.harvest`).

Recipe: load both models (checked to be a compatible pair) → pack the corpus into fixed-length
contexts (reasoning traces mixed in by `harvest.reasoning_fraction`) → run both models on every
batch, stopping each forward at the hook point → drop padding, the first position (by config)
and massive-activation tokens (by config) → append [n, 2, d] rows to shards, written atomically
in a background thread → estimate per-model norm scaling factors on a random sample (stats.json).

A killed run resumes after its last complete shard: store.json records, for every shard, the
corpus position after it, so the resumed run reads exactly the contexts an uninterrupted one would.

Under torchrun (docs/distributed.md) batch b of the context stream is run by rank b mod W (every
rank packs the whole stream, which costs tokenising only), each rank writes its own shards
(`shard_r<rank>_*.npy`) and its own manifest (`store.rank<rank>.json`, resumed like store.json) up
to its share of harvest.n_tokens, and rank 0 merges the manifests into store.json once every rank
has finished and estimates stats.json on the merged store. When the corpus runs out before the
budget, the merged store holds exactly the rows of a single-process harvest (the same batches);
under a budget the ranks stop at their own shares, so which documents are read depends on the
number of ranks, and the world size is part of the fingerprint (`WORLD_SIZE_MATTERS`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasondiff.app.preflight import mix_excluded_questions
from reasondiff.app.reuse import base_rows_source
from reasondiff.config import Config
from reasondiff.core import artifacts, distributed
from reasondiff.core.errors import UserError
from reasondiff.core.progress import Progress
from reasondiff.harvest import store as store_io
from reasondiff.harvest.corpus import ContextStream, StreamState
from reasondiff.harvest.pairs import PairedHarvester, load_pair
from reasondiff.harvest.reuse import BaseRowReader, ReusedBaseHarvester
from reasondiff.harvest.store import STATS, STORE_MANIFEST, ActivationStore

log = logging.getLogger(__name__)

PREPARED_FILES = (STORE_MANIFEST,)
"""store.json is written before the first shard: a run that failed with only it holds no work."""


WORLD_SIZE_MATTERS = True
"""The rows a budgeted harvest stores depend on the number of ranks (each stops at its share), so a
torchrun harvest's fingerprint records its world size (reasondiff.app.stage.current_fingerprint)."""


def rank_manifest(rank: int) -> str:
    """The manifest of rank `rank`'s shards in a torchrun harvest (merged into store.json at the end)."""
    return f"store.rank{rank}.json"


class StoreWriter:
    """Appends shards to a store directory and keeps store.json in step with the shards on disk.

    Shards are written by one background thread (the next batch's forward overlaps the disk write);
    store.json lists a shard only once its files are in place, so a kill never lists a partial shard."""

    def __init__(self, directory: Path, manifest: dict[str, Any], on_written=None, *,
                 rank: int | None = None) -> None:
        self.directory, self.manifest, self.rank = directory, manifest, rank
        self.manifest_name = STORE_MANIFEST if rank is None else rank_manifest(rank)
        self._rank_kwargs = {} if rank is None else {"rank": rank}
        self.on_written = on_written
        """Called with the manifest after each shard is in place (metrics rows: written, not queued)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    @classmethod
    def open(cls, directory: Path, header: dict[str, Any], *, full_check: bool = False,
             rank: int | None = None) -> StoreWriter:
        """Resume the partial store in `directory` (the stage runner already checked that it was made
        with these settings), keeping its shards up to the first damaged one; else start one.
        `rank`: a torchrun rank's own part (its manifest and shards)."""
        path = directory / (STORE_MANIFEST if rank is None else rank_manifest(rank))
        manifest = {**header, "format_version": store_io.FORMAT_VERSION, "complete": False, "shards": []}
        if path.is_file():
            shards = artifacts.read_json(path)["shards"]
            bad = {index for index, _ in store_io.check_shards(directory, shards, full=full_check)}
            if bad:  # atomic writes make this rare (a disk error, a bad sector): rewrite from the first bad shard
                first = min(bad)
                log.warning("harvest: shard %d of the store is damaged; re-harvesting from it", first)
                shards = [s for s in shards if s["index"] < first]
            manifest["shards"] = shards
            if shards:  # the totals the header resets: a store resumed after its last shard keeps them
                last = shards[-1]["stream_state"]
                manifest.update(n_tokens=sum(s["n_tokens"] for s in shards), documents_used=last["documents_used"],
                                contexts_used=last["contexts"],
                                n_massive_dropped=shards[-1].get("massive_dropped_total", 0))
                log.info("harvest: resuming after shard %d (%d tokens already stored)", shards[-1]["index"],
                         manifest["n_tokens"])
        writer = cls(directory, manifest, rank=rank)
        writer._remove_strays()
        artifacts.write_json(path, manifest)
        return writer

    def _remove_strays(self) -> None:
        """Shard files not listed in the manifest (a kill mid-write, or shards after a damaged one)."""
        listed = {s[k]["file"] for s in self.manifest["shards"] for k in ("acts", "tokens")}
        prefix = store_io.shard_prefix(self.rank)
        for path in self.directory.glob(f"{prefix}_[0-9]*.npy"):
            if path.name not in listed:
                path.unlink()
        for path in self.directory.glob(f".{prefix}_[0-9]*.tmp"):
            path.unlink()

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.manifest["shards"])

    @property
    def stream_state(self) -> StreamState | None:
        shards = self.manifest["shards"]
        return StreamState.from_dict(shards[-1]["stream_state"]) if shards else None

    @property
    def next_index(self) -> int:
        shards = self.manifest["shards"]
        return shards[-1]["index"] + 1 if shards else 0

    def add(self, acts: np.ndarray, tokens: np.ndarray, state: StreamState, n_massive_dropped: int) -> None:
        """Queue one shard (arrays from `store_io.to_store_array`) for writing; returns at once."""
        self.wait()
        index = self.next_index

        def write() -> None:
            entry = store_io.write_shard(self.directory, index, acts, tokens, **self._rank_kwargs)
            entry.update(stream_state=state.to_dict(), massive_dropped_total=n_massive_dropped)
            self.manifest["shards"].append(entry)
            self.manifest.update(n_tokens=self.n_tokens, documents_used=state.documents_used,
                                 contexts_used=state.contexts, n_massive_dropped=n_massive_dropped)
            artifacts.write_json(self.directory / self.manifest_name, self.manifest)
            if self.on_written is not None:
                self.on_written(self.manifest)

        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.wait()
        self._pool.shutdown(wait=True)


def verify_finished(cfg: Config, directory: Path) -> str | None:
    """Checked when a finished harvest is run again: damaged shards (sizes; checksums of stores up to
    store.FULL_VERIFY_MAX_BYTES) reopen the stage, whose resume rewrites them from the first bad one."""
    manifest = directory / STORE_MANIFEST
    if not manifest.is_file():
        return f"{STORE_MANIFEST} is missing"
    shards = artifacts.read_json(manifest)["shards"]
    full = sum(s["acts"]["bytes"] for s in shards) <= store_io.FULL_VERIFY_MAX_BYTES
    problems = store_io.check_shards(directory, shards, full=full)
    return "bad activation shard(s): " + "; ".join(p for _, p in problems) if problems else None


def estimate_bytes(n_tokens: int, d_model: int, store_dtype: str) -> int:
    return n_tokens * store_io.bytes_per_token(d_model, store_dtype) + 2**20


def run(cfg: Config, ctx) -> dict[str, Any]:
    h = cfg.harvest
    base, tuned, tokenizer, hook = load_pair(cfg)
    d_model = store_io.d_model_of(base)
    stream_description = ContextStream(h, tokenizer, exclude_questions=mix_excluded_questions(cfg)).describe(tokenizer)
    header = {
        "d_model": d_model, "hook": hook.name,
        "store_dtype": h.store_dtype, "layout": "[n_tokens, 2, d_model], index 0 = base, 1 = tuned",
        "models": {"base": cfg.model.path, "tuned": cfg.tuned_model, "base_name": cfg.model.name,
                   "dtype": cfg.hardware.dtype},
        "corpus": stream_description, "drop_first_position": h.drop_first_position,
        "max_norm_ratio": h.max_norm_ratio, "backend": h.backend, "n_tokens_requested": h.n_tokens,
        "n_tokens": 0, "documents_used": 0, "contexts_used": 0, "n_massive_dropped": 0,
    }
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:
        header["world_size"] = world
    elif any(ctx.dir.glob(rank_manifest("*"))):
        raise UserError(f"{ctx.dir} holds a partial harvest made by a torchrun launch; resume it with the same "
                        "torchrun --nproc_per_node, or set overwrite=true to start over in one process")
    # settings of a resumed store were checked by the stage runner (reasondiff.core.fingerprint); a store
    # reopened to repair it (verify_finished found a bad shard) gets every shard hashed
    writer = StoreWriter.open(ctx.dir, header, full_check=(ctx.dir / STATS).is_file(),
                              rank=rank if world > 1 else None)
    ctx.metrics.truncate(writer.n_tokens)  # rows of shards a kill -9 lost are logged again
    ctx.inputs.update(base_model=cfg.model.path, tuned_model=cfg.tuned_model, hook=hook.name,
                      corpus=h.corpus, reasoning_corpus=h.reasoning_corpus if h.reasoning_fraction else None)
    quota = rank_quota(h.n_tokens, rank, world)
    remaining = quota - writer.n_tokens
    try:
        artifacts.ensure_free_space(ctx.dir, estimate_bytes(max(remaining, 0), d_model, h.store_dtype),
                                    f"harvesting {remaining:,} paired activations")
    except artifacts.DiskSpaceError as err:
        raise UserError(f"{err} (harvest.n_tokens, harvest.store_dtype)") from err
    reused_from, not_reused = base_rows_source(cfg, lambda: mix_excluded_questions(cfg))
    if reused_from is not None and world > 1:  # the main store's rows follow one process's batch order
        reused_from, not_reused = None, "a torchrun harvest runs both models"
    if cfg.run and reused_from is None:
        log.info("harvest: running the base model too (its rows in the main store cannot be reused: %s)", not_reused)
    harvester: PairedHarvester | ReusedBaseHarvester = PairedHarvester(
        base, tuned, hook, backend=h.backend, drop_first_position=h.drop_first_position, max_norm_ratio=h.max_norm_ratio)
    if reused_from is not None:
        same_model = cfg.tuned_model == cfg.model.path  # base_vs_base: no model runs at all
        harvester = ReusedBaseHarvester(None if same_model else tuned, hook,
                                        BaseRowReader(ActivationStore.open(reused_from, verify="size"), writer.n_tokens),
                                        drop_first_position=h.drop_first_position, dtype=next(base.parameters()).dtype)
        ctx.inputs["base_rows_from"] = str(reused_from)
        log.info("harvest: the base model's rows come from %s (%s)", reused_from,
                 "no model runs" if same_model else "only the tuned model runs")
    try:
        if remaining > 0:
            _harvest_loop(cfg, ctx, writer, harvester, tokenizer, quota=quota, rank=rank, world=world)
        writer.wait()
    finally:
        writer.close()
    if world > 1:
        distributed.barrier()  # every rank's shards are in place
        if rank != 0:
            return {}
        writer.manifest = merge_rank_manifests(ctx.dir, header, world)
        artifacts.write_json(ctx.dir / STORE_MANIFEST, writer.manifest)
    if writer.n_tokens == 0:
        raise UserError(f"harvest.corpus={h.corpus}: no contexts of {h.context_length} tokens; "
                        "lower harvest.context_length or use a larger corpus")
    store = ActivationStore.open(ctx.dir, verify="size")
    stats = store_io.norm_stats(store.sample(h.stats_sample_tokens, seed=cfg.seed))
    stats["hook"] = hook.name
    artifacts.write_json(ctx.dir / STATS, stats)
    writer.manifest["complete"] = True
    artifacts.write_json(ctx.dir / STORE_MANIFEST, writer.manifest)
    log.info("harvest: %d tokens in %d shards; mean norms %s -> scaling factors %s", writer.n_tokens,
             len(writer.manifest["shards"]), [round(x, 2) for x in stats["mean_norm"]],
             [round(x, 4) for x in stats["scaling_factors"]])
    return {"store": STORE_MANIFEST, "stats": STATS, "n_tokens": writer.n_tokens,
            "n_shards": len(writer.manifest["shards"]), "d_model": d_model, "hook": hook.name,
            "store_dtype": h.store_dtype, "documents_used": writer.manifest["documents_used"],
            "drop_first_position": h.drop_first_position, "n_massive_dropped": writer.manifest["n_massive_dropped"],
            "scaling_factors": stats["scaling_factors"], "mean_norm": stats["mean_norm"],
            "bytes": sum(s[k]["bytes"] for s in writer.manifest["shards"] for k in ("acts", "tokens")),
            "base_rows_from": str(reused_from) if reused_from is not None else None,
            "forward_contexts_saved": getattr(harvester, "forwards_saved", 0)}


def rank_quota(n_tokens: int, rank: int, world: int) -> int:
    """Rank `rank`'s share of the token budget (shares differ by at most one token)."""
    return len(distributed.shard_indices(n_tokens, rank_=rank, world=world)) if world > 1 else n_tokens


def merge_rank_manifests(directory: Path, header: dict[str, Any], world: int) -> dict[str, Any]:
    """store.json of a torchrun harvest: every rank's shards (rank by rank), the totals summed, and
    documents_used the furthest any rank read (held-out text starts after it)."""
    parts = []
    for rank in range(world):
        path = directory / rank_manifest(rank)
        if not path.is_file():
            raise UserError(f"{path} is missing: rank {rank} of the harvest wrote no manifest; re-run the same "
                            "torchrun command to resume")
        parts.append(artifacts.read_json(path))
    shards = [shard for part in parts for shard in part["shards"]]
    return {**header, "format_version": store_io.FORMAT_VERSION, "complete": False, "shards": shards,
            "n_tokens": sum(s["n_tokens"] for s in shards),
            "documents_used": max(p.get("documents_used", 0) for p in parts),
            "contexts_used": max(p.get("contexts_used", 0) for p in parts),
            "n_massive_dropped": sum(p.get("n_massive_dropped", 0) for p in parts),
            "ranks": [{"rank": r, "n_tokens": p["n_tokens"], "documents_used": p.get("documents_used", 0),
                       "n_shards": len(p["shards"])} for r, p in enumerate(parts)]}


def _harvest_loop(cfg: Config, ctx, writer: StoreWriter, harvester: PairedHarvester | ReusedBaseHarvester,
                  tokenizer, *,
                  quota: int, rank: int = 0, world: int = 1) -> None:
    """Harvest until this rank's `quota` of tokens is stored: batch b of the stream is this rank's
    when b mod world == rank (a single process takes every batch)."""
    h = cfg.harvest
    previous = writer.stream_state
    stream = ContextStream(h, tokenizer, state=previous, exclude_questions=mix_excluded_questions(cfg))
    if writer.manifest["shards"]:
        harvester.n_massive_dropped = writer.manifest["shards"][-1].get("massive_dropped_total", 0)
    stored = writer.n_tokens
    acts_parts: list = []
    token_parts: list[torch.Tensor] = []
    buffered = 0
    started, at_start = time.perf_counter(), stored

    def written(manifest: dict[str, Any]) -> None:  # in the writer thread, once the shard is on disk
        elapsed = time.perf_counter() - started
        ctx.metrics.log({"tokens": manifest["n_tokens"],
                         "tokens_per_second": (manifest["n_tokens"] - at_start) / max(elapsed, 1e-9),
                         "documents_used": manifest["documents_used"], "massive_dropped": manifest["n_massive_dropped"]},
                        step=manifest["n_tokens"])

    writer.on_written = written

    def flush() -> None:
        nonlocal acts_parts, token_parts, buffered, stored
        writer.add(np.concatenate(acts_parts), torch.cat(token_parts).numpy(), stream.state(),
                   harvester.n_massive_dropped)
        stored += buffered
        acts_parts, token_parts, buffered = [], [], 0

    batch_size = cfg.hardware.harvest_batch_size
    with Progress(total=quota, initial=stored, unit="tok", unit_scale=True, desc=f"harvest {harvester.hook.name}",
                  mininterval=1.0, smoothing=0.1) as bar:
        while stored + buffered < quota:
            batch = stream.next_batch(batch_size)
            if batch is None:
                log.warning("harvest.corpus=%s is exhausted after %d tokens (harvest.n_tokens=%d%s)",
                            h.corpus, stored + buffered, h.n_tokens, f", rank {rank}" if world > 1 else "")
                break
            # batches are full until the corpus ends, so the batch number is a function of the position
            if (stream.contexts - 1) // batch_size % world != rank:
                continue
            rows, token_ids = harvester(batch)
            take = min(rows.shape[0], quota - stored - buffered)
            # convert on the device (bf16 halves the transfer), then one copy to host memory
            acts_parts.append(store_io.to_store_array(rows[:take], h.store_dtype))
            token_parts.append(token_ids[:take].to(torch.int32).cpu())
            buffered += take
            bar.update(take)
            if buffered >= h.shard_tokens or stored + buffered >= quota:
                flush()
        if buffered:
            flush()
    writer.wait()
