"""train's final evaluation reads activations the crosscoder never trained on: the last shards of the
store (kept out of training), or the corpus documents after the live stream's."""

from __future__ import annotations

import pytest
import torch
from conftest import make_config
from test_harvest_store import make_store

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.harvest.store import ActivationStore, LiveActivationSource
from reasondiff.lm.models import parse_hook
from reasondiff.train.heldout import heldout_live, split_store


def served_rows(source, batch_size: int, n_batches: int) -> set[int]:
    stream = source.iter_batches(batch_size, seed=0)
    return {int(v) for _ in range(n_batches) for v in next(stream)[:, 0, 0]}  # rows are tagged with their index


def test_the_last_shards_are_held_out_and_never_served_for_training(tmp_path):
    make_store(tmp_path, rows_per_shard=(100, 100, 100, 60, 40))
    store = ActivationStore.open(tmp_path)
    train, held = split_store(store, eval_tokens=90, batch_size=32)
    assert (train.n_tokens, held.source.n_tokens) == (300, 100)  # the fewest last shards holding 90 tokens
    assert held.info["eval_split"] == "heldout_shards" and "the last 2 of 5" in held.info["eval_source"]
    assert served_rows(train, 32, 40) == set(range(300))  # many epochs: every training row, no held-out one
    assert served_rows(held.source, held.batch_size, held.n_tokens // held.batch_size) <= set(range(300, 400))
    assert held.n_tokens == 64 and held.batch_size == 32  # read once, whole batches
    assert ActivationStore.open(tmp_path).n_tokens == 400  # the store on disk is untouched


def test_a_store_too_small_to_split_is_evaluated_on_training_data(tmp_path):
    make_store(tmp_path / "one", rows_per_shard=(100,))
    store = ActivationStore.open(tmp_path / "one")
    assert split_store(store, eval_tokens=10, batch_size=8) == (store, None)
    make_store(tmp_path / "two", rows_per_shard=(100, 100))
    store = ActivationStore.open(tmp_path / "two")
    assert split_store(store, eval_tokens=150, batch_size=8)[1] is None  # would take more than half


def test_train_stage_reports_the_heldout_split(tmp_path):
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "hardware.device=cpu",
                      "train.data=store", "train.batch_size=32", "train.n_tokens=640", "train.n_latents=32",
                      "train.eval_tokens=64", "train.log_every=5")
    make_store(cfg.stage_dir("harvest"), rows_per_shard=(120, 120, 80))
    artifacts.mark_complete(cfg.stage_dir("harvest"))
    summary = artifacts.read_json(run_stage(cfg) / "summary.json")
    assert summary["eval_split"] == "heldout_shards" and summary["eval_tokens"] == 64
    assert summary["train_tokens_available"] == 240 and 0 < summary["fvu"]


@pytest.fixture
def live(tmp_path, tiny_model, tiny_tokenizer, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    from reasondiff.tiny import make_model

    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", f"model.path={tiny_model_dir}",
                      f"tuned_model={tiny_tuned_model_dir}", f"harvest.corpus={tiny_world}/corpus.jsonl",
                      "harvest.reasoning_fraction=0", "harvest.context_length=32", "harvest.live_buffer_tokens=200",
                      "harvest.stats_sample_tokens=100", "hardware.device=cpu", "hardware.harvest_batch_size=4",
                      config_name="harvest")
    models = (tiny_model, make_model(tiny_tokenizer, seed=1), tiny_tokenizer, parse_hook(cfg.harvest.hook, 4))
    return cfg, LiveActivationSource(cfg, models=models)


def test_live_evaluation_reads_documents_after_the_training_stream(live):
    cfg, source = live
    contexts, per_refill = source.layout(64)
    touched = source.documents_touched(2 * per_refill, 64)
    assert 0 < touched <= source.documents_touched(5 * per_refill, 64)
    stream = source.iter_batches(64, seed=0)
    for _ in range(2 * per_refill):
        next(stream)
    assert source._stream.documents_used == touched  # what training really read
    held = heldout_live(cfg, source, total_steps=2 * per_refill, batch_size=64, eval_tokens=128)
    assert held.info["eval_split"] == "heldout_documents" and f"document {touched} on" in held.info["eval_source"]
    batch = next(held.source.iter_batches(held.batch_size, seed=1))
    assert batch.shape == (64, 2, 128) and held.n_tokens == 128
    training = torch.cat([next(source.iter_batches(64, seed=0)) for _ in range(1)])
    assert not any(torch.equal(row, other) for row in batch[:8] for other in training)
    # a stream that went round the whole corpus leaves nothing held out
    assert source.documents_touched(10_000, 64) is None
    assert heldout_live(cfg, source, total_steps=10_000, batch_size=64, eval_tokens=128) is None
