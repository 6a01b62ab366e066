"""Stage 3 — harvest paired residual activations of the base and tuned models (`python -m reasondiff.harvest`).

Recipe: load both models (checked to be a compatible pair) → pack the corpus into fixed-length
contexts (reasoning traces mixed in by `harvest.reasoning_fraction`) → run both models on every
batch, stopping each forward at the hook point → drop padding, the first position (by config)
and massive-activation tokens (by config) → append [n, 2, d] rows to shards, written atomically
in a background thread → estimate per-model norm scaling factors on a random sample (stats.json).

A killed run resumes after its last complete shard: store.json records, for every shard, the
corpus position after it, so the resumed run reads exactly the contexts an uninterrupted one would.
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
from tqdm.auto import tqdm

from reasondiff.config import Config
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.harvest import store as store_io
from reasondiff.harvest.corpus import ContextStream, StreamState, evaluation_questions
from reasondiff.harvest.pairs import PairedHarvester, load_pair
from reasondiff.harvest.store import STATS, STORE_MANIFEST, ActivationStore

log = logging.getLogger(__name__)

PREPARED_FILES = (STORE_MANIFEST,)
"""store.json is written before the first shard: a run that failed with only it holds no work."""


class StoreWriter:
    """Appends shards to a store directory and keeps store.json in step with the shards on disk.

    Shards are written by one background thread (the next batch's forward overlaps the disk write);
    store.json lists a shard only once its files are in place, so a kill never lists a partial shard."""

    def __init__(self, directory: Path, manifest: dict[str, Any], on_written=None) -> None:
        self.directory, self.manifest = directory, manifest
        self.on_written = on_written
        """Called with the manifest after each shard is in place (metrics rows: written, not queued)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    @classmethod
    def open(cls, directory: Path, header: dict[str, Any], *, full_check: bool = False) -> StoreWriter:
        """Resume the partial store in `directory` (the stage runner already checked that it was made
        with these settings), keeping its shards up to the first damaged one; else start one."""
        path = directory / STORE_MANIFEST
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
        writer = cls(directory, manifest)
        writer._remove_strays()
        artifacts.write_json(path, manifest)
        return writer

    def _remove_strays(self) -> None:
        """Shard files not listed in the manifest (a kill mid-write, or shards after a damaged one)."""
        listed = {s[k]["file"] for s in self.manifest["shards"] for k in ("acts", "tokens")}
        for path in self.directory.glob("shard_*.npy"):
            if path.name not in listed:
                path.unlink()
        for path in self.directory.glob(".shard_*.tmp"):
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
            entry = store_io.write_shard(self.directory, index, acts, tokens)
            entry.update(stream_state=state.to_dict(), massive_dropped_total=n_massive_dropped)
            self.manifest["shards"].append(entry)
            self.manifest.update(n_tokens=self.n_tokens, documents_used=state.documents_used,
                                 contexts_used=state.contexts, n_massive_dropped=n_massive_dropped)
            artifacts.write_json(self.directory / STORE_MANIFEST, self.manifest)
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
    stream_description = ContextStream(h, tokenizer, exclude_questions=evaluation_questions(cfg)).describe(tokenizer)
    header = {
        "d_model": d_model, "hook": hook.name,
        "store_dtype": h.store_dtype, "layout": "[n_tokens, 2, d_model], index 0 = base, 1 = tuned",
        "models": {"base": cfg.model.path, "tuned": cfg.tuned_model, "base_name": cfg.model.name,
                   "dtype": cfg.hardware.dtype},
        "corpus": stream_description, "drop_first_position": h.drop_first_position,
        "max_norm_ratio": h.max_norm_ratio, "backend": h.backend, "n_tokens_requested": h.n_tokens,
        "n_tokens": 0, "documents_used": 0, "contexts_used": 0, "n_massive_dropped": 0,
    }
    # settings of a resumed store were checked by the stage runner (reasondiff.core.fingerprint); a store
    # reopened to repair it (verify_finished found a bad shard) gets every shard hashed
    writer = StoreWriter.open(ctx.dir, header, full_check=(ctx.dir / STATS).is_file())
    ctx.metrics.truncate(writer.n_tokens)  # rows of shards a kill -9 lost are logged again
    ctx.inputs.update(base_model=cfg.model.path, tuned_model=cfg.tuned_model, hook=hook.name,
                      corpus=h.corpus, reasoning_corpus=h.reasoning_corpus if h.reasoning_fraction else None)
    remaining = h.n_tokens - writer.n_tokens
    try:
        artifacts.ensure_free_space(ctx.dir, estimate_bytes(max(remaining, 0), d_model, h.store_dtype),
                                    f"harvesting {remaining:,} paired activations")
    except artifacts.DiskSpaceError as err:
        raise UserError(f"{err} (harvest.n_tokens, harvest.store_dtype)") from err
    try:
        if remaining > 0:
            _harvest_loop(cfg, ctx, writer, PairedHarvester(
                base, tuned, hook, backend=h.backend, drop_first_position=h.drop_first_position,
                max_norm_ratio=h.max_norm_ratio), tokenizer)
        writer.wait()
    finally:
        writer.close()
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
            "bytes": sum(s[k]["bytes"] for s in writer.manifest["shards"] for k in ("acts", "tokens"))}


def _harvest_loop(cfg: Config, ctx, writer: StoreWriter, harvester: PairedHarvester, tokenizer) -> None:
    h = cfg.harvest
    previous = writer.stream_state
    stream = ContextStream(h, tokenizer, state=previous, exclude_questions=evaluation_questions(cfg))
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

    with tqdm(total=h.n_tokens, initial=stored, unit="tok", unit_scale=True, desc=f"harvest {harvester.hook.name}",
              mininterval=1.0, smoothing=0.1) as bar:
        while stored + buffered < h.n_tokens:
            batch = stream.next_batch(cfg.hardware.harvest_batch_size)
            if batch is None:
                log.warning("harvest.corpus=%s is exhausted after %d tokens (harvest.n_tokens=%d)",
                            h.corpus, stored + buffered, h.n_tokens)
                break
            rows, token_ids = harvester(batch)
            take = min(rows.shape[0], h.n_tokens - stored - buffered)
            # convert on the device (bf16 halves the transfer), then one copy to host memory
            acts_parts.append(store_io.to_store_array(rows[:take], h.store_dtype))
            token_parts.append(token_ids[:take].to(torch.int32).cpu())
            buffered += take
            bar.update(take)
            if buffered >= h.shard_tokens or stored + buffered >= h.n_tokens:
                flush()
        if buffered:
            flush()
    writer.wait()
