"""The activation store: round trip, corruption/truncation detection, deterministic shuffled batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.harvest.store import (
    FORMAT_VERSION,
    STATS,
    STORE_MANIFEST,
    ActivationStore,
    norm_stats,
    to_store_array,
    write_shard,
)


def make_store(directory, rows_per_shard=(70, 50, 33), d_model=8, store_dtype="float32", seed=0):
    generator = torch.Generator().manual_seed(seed)
    shards, all_rows = [], []
    for index, n in enumerate(rows_per_shard):
        # row r of the store is tagged with its global index in [..., 0, 0] so batches can be traced
        rows = torch.randn(n, 2, d_model, generator=generator)
        rows[:, 0, 0] = torch.arange(sum(rows_per_shard[:index]), sum(rows_per_shard[:index + 1]), dtype=torch.float32)
        all_rows.append(rows)
        shards.append(write_shard(directory, index, to_store_array(rows, store_dtype), np.arange(n)))
    manifest = {"format_version": FORMAT_VERSION, "d_model": d_model, "hook": "blocks.1.hook_resid_pre",
                "store_dtype": store_dtype, "shards": shards, "documents_used": 3, "drop_first_position": True}
    artifacts.write_json(directory / STORE_MANIFEST, manifest)
    rows = torch.cat(all_rows)
    artifacts.write_json(directory / STATS, norm_stats(rows))
    return rows


def test_round_trip_and_metadata(tmp_path):
    rows = make_store(tmp_path)
    store = ActivationStore.open(tmp_path)
    assert (store.d_model, store.n_tokens, store.hook) == (8, 153, "blocks.1.hook_resid_pre")
    torch.testing.assert_close(store.gather(torch.arange(153)), rows)
    torch.testing.assert_close(store.gather(torch.tensor([152, 0, 71, 70])), rows[[152, 0, 71, 70]])
    mean = rows.norm(dim=-1).mean(dim=0)
    torch.testing.assert_close(store.scaling_factors, 8 ** 0.5 / mean)
    assert store.manifest["documents_used"] == 3


def test_bfloat16_shards_are_memory_mapped_uint16(tmp_path):
    rows = make_store(tmp_path, store_dtype="bfloat16")
    array = np.load(tmp_path / "shard_00000.acts.npy", mmap_mode="r")
    assert array.dtype == np.uint16 and isinstance(array, np.memmap)
    got = ActivationStore.open(tmp_path).gather(torch.arange(153))
    torch.testing.assert_close(got, rows.to(torch.bfloat16).float())


def test_iter_batches_is_a_deterministic_function_of_seed_and_batch(tmp_path):
    make_store(tmp_path)
    store = ActivationStore.open(tmp_path)
    stream = store.iter_batches(32, seed=5)
    uninterrupted = [next(stream) for _ in range(12)]  # 384 rows: 2.5 epochs of 153
    stream.close()
    resumed = store.iter_batches(32, seed=5, start_batch=7)
    for expected in uninterrupted[7:]:
        torch.testing.assert_close(next(resumed), expected)
    resumed.close()
    other = next(store.iter_batches(32, seed=6))
    assert not torch.equal(other, uninterrupted[0])
    assert all(batch.shape == (32, 2, 8) and batch.dtype == torch.float32 for batch in uninterrupted)


def test_each_epoch_serves_every_row_once_then_reshuffles(tmp_path):
    make_store(tmp_path, rows_per_shard=(40, 24))  # 64 rows: 4 batches of 16 per epoch
    store = ActivationStore.open(tmp_path)
    stream = store.iter_batches(16, seed=0)
    epochs = [torch.cat([next(stream) for _ in range(4)])[:, 0, 0].long() for _ in range(2)]
    stream.close()
    for ids in epochs:
        assert sorted(ids.tolist()) == list(range(64))  # every row exactly once
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch
    assert len({int(i) // 40 for i in epochs[0][:16]}) == 2  # batches mix shards


def test_truncated_shard_is_a_clear_error(tmp_path):
    make_store(tmp_path)
    path = tmp_path / "shard_00001.acts.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"shard_00001\.acts\.npy has .* bytes.*truncated"):
        ActivationStore.open(tmp_path, verify="size")


def test_corrupted_shard_is_a_clear_error(tmp_path):
    make_store(tmp_path)
    path = tmp_path / "shard_00002.acts.npy"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    ActivationStore.open(tmp_path, verify="size")  # sizes alone cannot see it
    with pytest.raises(UserError, match=r"shard_00002\.acts\.npy does not match its sha256"):
        ActivationStore.open(tmp_path)  # small store: "auto" hashes every shard


def test_missing_shard_and_missing_manifest(tmp_path):
    with pytest.raises(UserError, match="not an activation store"):
        ActivationStore.open(tmp_path)
    make_store(tmp_path)
    (tmp_path / "shard_00000.tokens.npy").unlink()
    with pytest.raises(UserError, match="shard_00000.tokens.npy is missing"):
        ActivationStore.open(tmp_path)


def test_read_error_in_prefetch_thread_reaches_the_caller(tmp_path):
    make_store(tmp_path)
    store = ActivationStore.open(tmp_path)
    store.manifest["d_model"] = 9  # shards no longer match: reading must fail loudly, not hang
    with pytest.raises(UserError, match="shape"):
        next(store.iter_batches(16, seed=0))
