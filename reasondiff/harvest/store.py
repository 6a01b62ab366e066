"""The activation store: paired residual activations on disk, and the sources the trainer reads.

Layout of a store directory (the harvest stage's dir):
  shard_00000.acts.npy    [n, 2, d_model] (base first) — .npy so numpy can memory-map it;
                          bfloat16 is stored as its uint16 bit pattern (numpy has no bf16)
  shard_00000.tokens.npy  [n] int32 token id of each row
  store.json              the store manifest: shards with token counts, byte sizes and sha256,
                          dtype, hook, models, corpus, packing, drop_first_position,
                          documents_used, the corpus position after each shard (resume)
  stats.json              per-model mean activation norm and the scaling factor that makes it sqrt(d_model)

`ActivationStore.iter_batches` serves shuffled [B, 2, d] float32 RAW batches from memory-mapped
shards with a background prefetch thread; batch b of the stream depends only on (seed, b), so a
resumed training run sees exactly the batches an uninterrupted one would. `LiveActivationSource`
serves the same kind of batches straight from the two models (runs too big to store).
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasondiff.core import artifacts
from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)

STORE_MANIFEST = "store.json"
STATS = "stats.json"
FORMAT_VERSION = 1
# numpy dtype each store dtype is written as, and the torch dtype its bytes are viewed as
_NUMPY = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}
_TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FULL_VERIFY_MAX_BYTES = 8 * 2**30
"""`verify="auto"` hashes every shard of stores up to this size and checks only sizes/headers above."""


def shard_prefix(rank: int | None = None) -> str:
    """`shard` for a single-process harvest; `shard_r<rank>` for rank `rank` of a torchrun harvest."""
    return "shard" if rank is None else f"shard_r{rank}"


def shard_names(index: int, rank: int | None = None) -> tuple[str, str]:
    prefix = shard_prefix(rank)
    return f"{prefix}_{index:05d}.acts.npy", f"{prefix}_{index:05d}.tokens.npy"


def bytes_per_token(d_model: int, store_dtype: str) -> int:
    return 2 * d_model * np.dtype(_NUMPY[store_dtype]).itemsize + np.dtype(np.int32).itemsize


# --- writing -------------------------------------------------------------------------------------
class _HashingWriter:
    """File-like wrapper that hashes everything written through it (one pass over the bytes)."""

    def __init__(self, handle) -> None:
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        return self.handle.write(view)


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Atomically write `array` as .npy; returns its size and sha256 (computed while writing)."""
    array = np.ascontiguousarray(array)
    with artifacts.atomic_write(path, "wb") as handle:
        writer = _HashingWriter(handle)
        np.lib.format.write_array_header_1_0(writer, np.lib.format.header_data_from_array_1_0(array))
        writer.write(array.data)
    return {"file": path.name, "bytes": writer.size, "sha256": writer.sha256.hexdigest()}


def to_store_array(acts: torch.Tensor, store_dtype: str) -> np.ndarray:
    """[n, 2, d] activations as the numpy array a shard holds (cast on the device, then copied)."""
    acts = acts.detach().to(_TORCH[store_dtype]).cpu().contiguous()
    return acts.view(torch.uint16).numpy() if store_dtype == "bfloat16" else acts.numpy()


def write_shard(directory: Path, index: int, acts: np.ndarray, tokens: np.ndarray, *,
                rank: int | None = None) -> dict[str, Any]:
    """Write one shard (activations [n, 2, d] as `to_store_array` gives them + n token ids);
    returns its manifest entry with sizes and sha256 checksums. `rank`: the torchrun rank writing it
    (its file names carry the rank)."""
    if acts.ndim != 3 or acts.shape[1] != 2 or acts.shape[0] != tokens.shape[0]:
        raise ValueError(f"shard rows must be [n, 2, d] with n token ids, got {acts.shape} and {tokens.shape}")
    acts_name, tokens_name = shard_names(index, rank)
    entry = {} if rank is None else {"rank": rank}
    return {**entry, "index": index, "n_tokens": int(acts.shape[0]),
            "acts": _write_npy(directory / acts_name, acts),
            "tokens": _write_npy(directory / tokens_name, np.asarray(tokens, dtype=np.int32))}


def check_file(directory: Path, entry: dict[str, Any], *, full: bool) -> str | None:
    """Why a shard file does not match its manifest entry (None when it does)."""
    path = directory / entry["file"]
    if not path.is_file():
        return f"{entry['file']} is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{entry['file']} has {size} bytes, the manifest says {entry['bytes']} (truncated?)"
    if full and artifacts.sha256_file(path) != entry["sha256"]:
        return f"{entry['file']} does not match its sha256 checksum (corrupted)"
    return None


def check_shards(directory: Path, shards: list[dict[str, Any]], *, full: bool) -> list[tuple[int, str]]:
    """(shard index, problem) for every bad shard, checking files in parallel."""
    entries = [(shard["index"], entry) for shard in shards for entry in (shard["acts"], shard["tokens"])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(pool.map(lambda item: (item[0], check_file(directory, item[1], full=full)), entries))
    return [(index, problem) for index, problem in problems if problem]


# --- reading -------------------------------------------------------------------------------------
def epoch_permutation(n_tokens: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of every stored token in `epoch`: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_tokens, generator=generator)
    return perm.to(torch.int32) if n_tokens < 2**31 else perm


def batch_indices(n_tokens: int, batch_size: int, seed: int, batch: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """Global token indices of batch `batch` of the endless stream perm_0 ++ perm_1 ++ ... (a batch may
    straddle two epochs). `cache` keeps the epochs' permutations alive between calls."""
    start, stop = batch * batch_size, (batch + 1) * batch_size
    parts = []
    while start < stop:
        epoch, offset = divmod(start, n_tokens)
        if epoch not in cache:
            for old in [e for e in cache if e < epoch]:
                del cache[old]
            cache[epoch] = epoch_permutation(n_tokens, seed, epoch)
        take = min(stop - start, n_tokens - offset)
        parts.append(cache[epoch][offset:offset + take])
        start += take
    return torch.cat(parts).long()


@dataclass
class ActivationStore:
    """A finished (or partial, for resume) activation store directory."""

    directory: Path
    manifest: dict[str, Any]
    stats: dict[str, Any] | None

    @classmethod
    def open(cls, directory: str | Path, *, verify: str = "auto") -> ActivationStore:
        """Open a store; verify="full" hashes every shard, "size" checks sizes only, "auto" hashes
        stores up to FULL_VERIFY_MAX_BYTES. A bad shard is a UserError naming it."""
        directory = Path(directory)
        if not (directory / STORE_MANIFEST).is_file():
            raise UserError(f"{directory}: no {STORE_MANIFEST}; not an activation store (run the harvest stage)")
        manifest = artifacts.read_json(directory / STORE_MANIFEST)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{directory}: activation store format {manifest.get('format_version')} is not "
                            f"{FORMAT_VERSION}; re-run the harvest stage with overwrite=true")
        if not manifest["shards"]:
            raise UserError(f"{directory}: the activation store has no shards; re-run the harvest stage")
        total = sum(shard["acts"]["bytes"] for shard in manifest["shards"])
        full = verify == "full" or (verify == "auto" and total <= FULL_VERIFY_MAX_BYTES)
        problems = check_shards(directory, manifest["shards"], full=full)
        if problems:
            raise UserError(f"{directory}: bad activation shard(s): " + "; ".join(p for _, p in problems)
                            + ". Re-run the harvest stage (the same command): it finds the bad shards and rewrites them "
                            "from the first bad one")
        stats = artifacts.read_json(directory / STATS) if (directory / STATS).is_file() else None
        return cls(directory=directory, manifest=manifest, stats=stats)

    # --- what the trainer and analysis read ---
    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_tokens(self) -> int:
        return sum(int(shard["n_tokens"]) for shard in self.manifest["shards"])

    @property
    def hook(self) -> str:
        return self.manifest["hook"]

    @property
    def store_dtype(self) -> str:
        return self.manifest["store_dtype"]

    @property
    def scaling_factors(self) -> torch.Tensor:
        """[2] per-model factors making the mean activation norm sqrt(d_model) (base, tuned)."""
        if self.stats is None:
            raise UserError(f"{self.directory}: no {STATS}; the harvest did not finish (re-run it)")
        return torch.tensor(self.stats["scaling_factors"], dtype=torch.float32)

    def _arrays(self) -> tuple[list[np.ndarray], np.ndarray]:
        arrays = []
        for shard in self.manifest["shards"]:
            path = self.directory / shard["acts"]["file"]
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as err:
                raise UserError(f"{path}: unreadable activation shard ({err}); re-run the harvest stage") from err
            if array.shape != (shard["n_tokens"], 2, self.d_model):
                raise UserError(f"{path}: shape {array.shape}, expected {(shard['n_tokens'], 2, self.d_model)}; "
                                "re-run the harvest stage")
            arrays.append(array)
        offsets = np.cumsum([0] + [a.shape[0] for a in arrays])
        return arrays, offsets

    def tokens(self) -> np.ndarray:
        """Token ids of every stored row, in storage order (memory-mapped, concatenated lazily)."""
        return np.concatenate([np.load(self.directory / s["tokens"]["file"], mmap_mode="r")
                               for s in self.manifest["shards"]])

    def gather(self, indices: torch.Tensor, *, arrays=None) -> torch.Tensor:
        """Rows `indices` (global) as float32 [n, 2, d], reading only those rows from disk."""
        arrays, offsets = arrays or self._arrays()
        indices = indices.long()
        order = torch.argsort(indices)  # sorted reads are sequential within a shard
        sorted_idx = indices[order].numpy()
        out = torch.empty((len(sorted_idx), 2, self.d_model), dtype=torch.float32)
        shard_of = np.searchsorted(offsets, sorted_idx, side="right") - 1
        bounds = np.searchsorted(shard_of, np.arange(len(arrays) + 1))
        for s, array in enumerate(arrays):
            lo, hi = bounds[s], bounds[s + 1]
            if lo == hi:
                continue
            rows = torch.from_numpy(np.ascontiguousarray(array[sorted_idx[lo:hi] - offsets[s]]))
            if self.store_dtype == "bfloat16":
                rows = rows.view(torch.bfloat16)
            out[lo:hi] = rows.float()
        result = torch.empty_like(out)
        result[order] = out
        return result

    def iter_batches(self, batch_size: int, *, seed: int, start_batch: int = 0,
                     prefetch: int = 4, rows: slice | None = None) -> Iterator[torch.Tensor]:
        """Endless shuffled [batch_size, 2, d_model] float32 RAW batches (unscaled), epoch after epoch
        (each reshuffled from `seed`); batch b depends only on (seed, b). A background thread
        reads ahead `prefetch` batches. `rows`: only these rows of every batch are read (a torchrun
        rank's slice of the global batch)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        arrays = self._arrays()
        n_tokens = self.n_tokens
        rows = rows or slice(None)

        def produce(batch: int, cache: dict) -> torch.Tensor:
            return self.gather(batch_indices(n_tokens, batch_size, seed, batch, cache)[rows], arrays=arrays)

        return _prefetched(produce, start_batch, prefetch)

    def sample(self, n: int, *, seed: int) -> torch.Tensor:
        """`n` random stored rows (without replacement; all rows when the store is smaller)."""
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(self.n_tokens, generator=generator)[:n]
        return self.gather(indices)


def _prefetched(produce, start_batch: int, depth: int) -> Iterator[torch.Tensor]:
    """produce(start_batch), produce(start_batch + 1), ... computed `depth` ahead by a daemon thread."""
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def offer(message: tuple) -> None:
        """Put into the bounded queue, giving up once the consumer has stopped."""
        while not stop.is_set():
            try:
                results.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        cache: dict[int, torch.Tensor] = {}
        batch = start_batch
        try:
            while not stop.is_set():
                offer(("ok", produce(batch, cache)))
                batch += 1
        except BaseException as err:  # surfaced in the consumer's thread
            offer(("error", err))

    thread = threading.Thread(target=work, name="activation-prefetch", daemon=True)
    thread.start()

    def consume() -> Iterator[torch.Tensor]:
        try:
            while True:
                kind, item = results.get()
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
            while not results.empty():
                results.get_nowait()
            thread.join(timeout=5)

    return consume()


# --- norms and scaling factors -------------------------------------------------------------------
def norm_stats(sample: torch.Tensor) -> dict[str, Any]:
    """Per-model activation-norm statistics of a [n, 2, d] sample and the scaling factors
    sqrt(d) / mean_norm that give each model a mean norm of sqrt(d) (Lindsey et al. 2024)."""
    norms = sample.float().norm(dim=-1)  # [n, 2]
    d_model = sample.shape[-1]
    mean = norms.mean(dim=0)
    return {
        "n_sample_tokens": int(sample.shape[0]),
        "d_model": int(d_model),
        "mean_norm": mean.tolist(),
        "median_norm": norms.median(dim=0).values.tolist(),
        "max_norm": norms.max(dim=0).values.tolist(),
        "scaling_factors": (math.sqrt(d_model) / mean).tolist(),
        "models": ["base", "tuned"],
    }


# --- the live source -----------------------------------------------------------------------------
class LiveActivationSource:
    """Paired activations computed on the fly from both models (train.data=live).

    The stream is cut into *refills*: refill r runs the next `contexts_per_refill` contexts of the
    corpus (never seen before in this pass over it), shuffles their tokens with a generator seeded
    by (seed, r) and serves them as `batches_per_refill` batches; then refill r+1 runs *new*
    contexts. (The Kissane/Nanda buffer stops reading new tokens after its first fill, so training
    silently cycles over ~0.5M tokens; here every refill advances the corpus, and a test checks it.)
    Batch b depends only on (seed, b): resuming at `start_batch` replays the corpus position
    (tokenising, not running the models) and continues exactly as an uninterrupted run."""

    MASSIVE_MARGIN = 0.02
    """With harvest.max_norm_ratio, a refill serves this fraction fewer tokens than it computes
    (dropped massive-activation tokens must not make a refill come up short)."""

    def __init__(self, cfg, *, models=None) -> None:
        from reasondiff.harvest.pairs import PairedHarvester, load_pair

        self.cfg, self.harvest = cfg, cfg.harvest
        base, tuned, tokenizer, hook = models if models is not None else load_pair(cfg)
        self.tokenizer, self.hook = tokenizer, hook
        self.harvester = PairedHarvester(base, tuned, hook, backend=cfg.harvest.backend,
                                         drop_first_position=cfg.harvest.drop_first_position,
                                         max_norm_ratio=cfg.harvest.max_norm_ratio)
        self.d_model = d_model_of(base)
        self.tokens_per_context = cfg.harvest.context_length - int(cfg.harvest.drop_first_position)
        self.batch_size = max(1, cfg.hardware.harvest_batch_size)
        self.contexts_run = 0
        """Contexts the models have run on so far (grows with every refill: fresh tokens)."""
        self.stats = self._estimate_stats()
        self.scaling_factors = torch.tensor(self.stats["scaling_factors"], dtype=torch.float32)
        self._stream = None
        self._next_refill = None

    def _new_stream(self):
        from reasondiff.app.preflight import mix_excluded_questions
        from reasondiff.harvest.corpus import ContextStream

        return ContextStream(self.harvest, self.tokenizer, cycle=True,
                             exclude_questions=mix_excluded_questions(self.cfg))

    def _run(self, stream, n_contexts: int) -> torch.Tensor:
        rows = []
        for start in range(0, n_contexts, self.batch_size):
            tokens = stream.next_batch(min(self.batch_size, n_contexts - start))
            acts, _ = self.harvester(tokens)
            rows.append(acts.float())
            self.contexts_run += tokens.shape[0]
        return torch.cat(rows)

    def _estimate_stats(self) -> dict[str, Any]:
        """Norm statistics on the first `stats_sample_tokens` tokens of the corpus (as harvest does)."""
        n_contexts = math.ceil(self.harvest.stats_sample_tokens / self.tokens_per_context)
        sample = self._run(self._new_stream(), n_contexts)[: self.harvest.stats_sample_tokens]
        return norm_stats(sample.cpu())

    def layout(self, batch_size: int) -> tuple[int, int]:
        """(contexts per refill, batches served per refill)."""
        margin = self.MASSIVE_MARGIN if self.harvest.max_norm_ratio is not None else 0.0
        want = max(self.harvest.live_buffer_tokens, math.ceil(batch_size / (1 - margin)))
        contexts = math.ceil(want / self.tokens_per_context)
        return contexts, max(1, int(contexts * self.tokens_per_context * (1 - margin)) // batch_size)

    def refill(self, index: int, contexts_per_refill: int) -> torch.Tensor:
        """Activations [n, 2, d] of refill `index` (contexts index*C ... (index+1)*C - 1 of the stream)."""
        if self._stream is None or self._next_refill != index:
            self._stream = self._new_stream()
            for _ in range(index * contexts_per_refill):  # replay the corpus position: tokenise only
                self._stream.next_context()
        self._next_refill = index + 1
        return self._run(self._stream, contexts_per_refill)

    def documents_touched(self, n_batches: int, batch_size: int) -> int | None:
        """General-corpus documents the first `n_batches` batches were computed from (replaying the
        corpus position: tokenising only), so train can evaluate on the documents after them; None
        when those batches went round the whole corpus (no document is unseen)."""
        contexts, per_refill = self.layout(batch_size)
        stream = self._new_stream()
        for _ in range(math.ceil(n_batches / per_refill) * contexts):
            stream.next_context()
        return None if stream.general.state.passes > 0 else stream.documents_used

    def iter_batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Endless [batch_size, 2, d_model] float32 RAW batches (on the models' device)."""
        contexts, per_refill = self.layout(batch_size)
        refill, skip = divmod(start_batch, per_refill)
        while True:
            rows = self.refill(refill, contexts)
            need = per_refill * batch_size
            generator = torch.Generator().manual_seed(seed * 1_000_003 + refill)
            order = torch.randperm(rows.shape[0], generator=generator)
            if order.numel() < need:  # only when far more massive tokens were dropped than the margin
                log.warning("live refill %d: %d tokens after dropping massive activations, serving %d "
                            "(some twice); raise harvest.max_norm_ratio", refill, order.numel(), need)
                order = order.repeat(math.ceil(need / max(1, order.numel())))
            order = order[:need].to(rows.device)
            for batch in range(skip, per_refill):
                yield rows[order[batch * batch_size:(batch + 1) * batch_size]]
            refill, skip = refill + 1, 0


def d_model_of(model) -> int:
    """Residual width of an HF model or a TransformerBridge."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "hidden_size"):
        return int(config.hidden_size)
    return int(model.cfg.d_model)


def live_source(cfg) -> LiveActivationSource:
    return LiveActivationSource(cfg)
