"""The harvest stage end to end on the tiny models: store contents, resume after a kill, bad inputs,
held-out disjointness, corpus packing, and the live source (fresh tokens, deterministic batches)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.harvest import store as store_io
from reasondiff.harvest.corpus import ContextStream, StreamState, heldout_contexts, is_reasoning_context
from reasondiff.harvest.store import ActivationStore, LiveActivationSource
from reasondiff.lm.hooks import capture
from reasondiff.lm.models import load_tokenizer, parse_hook


def harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *overrides):
    return make_config(
        "+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", f"model.path={tiny_model_dir}",
        f"tuned_model={tiny_tuned_model_dir}", f"harvest.corpus={tiny_world}/corpus.jsonl",
        f"harvest.reasoning_corpus={tiny_world}/s1k.jsonl", "harvest.reasoning_fraction=0.25",
        "harvest.context_length=32", "harvest.n_tokens=2000", "harvest.shard_tokens=500",
        "harvest.stats_sample_tokens=300", "harvest.store_dtype=float32", "hardware.harvest_batch_size=4",
        "hardware.device=cpu", *overrides, config_name="harvest")


@pytest.fixture
def cfg(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    return harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world)


def _contents(directory):
    store = ActivationStore.open(directory)
    return store.gather(torch.arange(store.n_tokens)), np.asarray(store.tokens()), store


def test_stage_writes_the_paired_activations_of_the_packed_contexts(cfg):
    out = run_stage(cfg)
    rows, tokens, store = _contents(out)
    assert artifacts.is_complete(out) and store.n_tokens == 2000 and store.d_model == 128
    assert len(store.manifest["shards"]) >= 4 and store.manifest["drop_first_position"] is True
    # the store holds, in order, both models' activations at the hook for the packed contexts,
    # first position of each context dropped
    tokenizer = load_tokenizer(cfg.model.path)
    contexts = ContextStream(cfg.harvest, tokenizer).next_batch(8)
    assert np.array_equal(tokens[:31 * 8], contexts[:, 1:].reshape(-1).numpy())
    hook = parse_hook(cfg.harvest.hook, 4)
    from transformers import AutoModelForCausalLM

    for m, path in enumerate((cfg.model.path, cfg.tuned_model)):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        expected = capture(model, contexts, None, hook)[:, 1:].reshape(-1, 128)
        torch.testing.assert_close(rows[:31 * 8, m], expected, rtol=1e-5, atol=1e-5)
    stats = json.loads((out / "stats.json").read_text())
    mean = rows.norm(dim=-1).mean(dim=0)
    torch.testing.assert_close(torch.tensor(stats["mean_norm"]), mean, rtol=0.05, atol=0)  # a 300-token sample
    torch.testing.assert_close(store.scaling_factors, 128 ** 0.5 / torch.tensor(stats["mean_norm"]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["documents_used"] == store.manifest["documents_used"] > 0


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path, tiny_model_dir, tiny_tuned_model_dir,
                                                            tiny_world, monkeypatch):
    reference = run_stage(harvest_config(tmp_path / "a", tiny_model_dir, tiny_tuned_model_dir, tiny_world))
    cfg = harvest_config(tmp_path / "b", tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    original, calls = store_io.write_shard, {"n": 0}

    def dying_write(directory, index, acts, tokens):
        calls["n"] += 1
        if calls["n"] == 3:  # killed while writing the third shard, half a file on disk
            (directory / f".shard_{index:05d}.acts.npy.x.tmp").write_bytes(b"partial")
            raise KeyboardInterrupt("simulated kill")
        return original(directory, index, acts, tokens)

    monkeypatch.setattr(store_io, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    out = cfg.stage_dir("harvest")
    assert not artifacts.is_complete(out)
    assert len(json.loads((out / "store.json").read_text())["shards"]) == 2
    monkeypatch.setattr(store_io, "write_shard", original)
    resumed_from = {"n": 0}

    def counting_write(directory, index, acts, tokens):
        resumed_from["n"] = resumed_from["n"] or index
        return original(directory, index, acts, tokens)

    monkeypatch.setattr(store_io, "write_shard", counting_write)
    run_stage(cfg)
    assert resumed_from["n"] == 2  # shards 0 and 1 were kept, not redone
    assert not list(out.glob(".shard_*"))
    rows_a, tokens_a, store_a = _contents(reference)
    rows_b, tokens_b, store_b = _contents(out)
    torch.testing.assert_close(rows_b, rows_a, rtol=0, atol=0)
    assert np.array_equal(tokens_a, tokens_b)
    assert store_a.manifest["documents_used"] == store_b.manifest["documents_used"]
    torch.testing.assert_close(store_a.scaling_factors, store_b.scaling_factors)


def test_changed_settings_do_not_resume_a_partial_store(cfg, monkeypatch, tmp_path, tiny_model_dir,
                                                        tiny_tuned_model_dir, tiny_world):
    original, calls = store_io.write_shard, {"n": 0}

    def dying_write(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(*args)

    monkeypatch.setattr(store_io, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    other = harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world, "harvest.hook=blocks.1.hook_resid_pre")
    with pytest.raises(UserError, match="other settings.*overwrite=true"):
        run_stage(other)


def test_bad_hook_name_lists_the_valid_ones(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    for name, why in (("blocks.4.hook_resid_pre", "past the last layer"), ("blocks.1.resid", "unknown hook name")):
        cfg = harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world, f"harvest.hook={name}")
        with pytest.raises(UserError, match=rf"harvest.hook=.*{why}.*hook_resid_pre,hook_resid_mid,hook_resid_post.*0\.\.3"):
            run_stage(cfg)


def test_mismatched_models_are_refused(tmp_path, tiny_model_dir, tiny_world, tiny_tokenizer):
    from reasondiff.tiny import make_model

    wider = tmp_path / "wider"
    make_model(tiny_tokenizer, seed=2, hidden_size=64, n_heads=2, n_kv_heads=1).save_pretrained(wider)
    tiny_tokenizer.save_pretrained(wider)
    cfg = harvest_config(tmp_path, tiny_model_dir, wider, tiny_world)
    with pytest.raises(UserError, match="not a compatible pair.*d_model 128 vs 64"):
        run_stage(cfg)


def test_refuses_up_front_when_the_disk_cannot_hold_the_store(cfg, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 0, 10**5))
    with pytest.raises(UserError, match=r"^disk full at .*needs about 3.1 MB, 100.0 kB free.*harvest.n_tokens"):
        run_stage(cfg)
    assert not list(cfg.stage_dir("harvest").glob("shard_*"))


def test_massive_activation_filter_is_applied_and_recorded(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    cfg = harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world,
                         "harvest.max_norm_ratio=1.2", "harvest.drop_first_position=false")
    rows, _, store = _contents(run_stage(cfg))
    assert store.manifest["n_massive_dropped"] > 0 and store.manifest["max_norm_ratio"] == 1.2
    assert store.manifest["drop_first_position"] is False and store.n_tokens == 2000


# --- corpus --------------------------------------------------------------------------------------
def _tagged_corpus(path, n=120):
    rows = [{"text": f"ID{i}X " + "the red cat sees the old tree . " * (1 + i % 4)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ids(contexts, tokenizer):
    return {int(m) for row in contexts for m in re.findall(r"ID(\d+)X", tokenizer.decode(row.tolist()))}


def test_heldout_contexts_start_after_the_documents_harvest_used(tmp_path, tiny_tokenizer):
    from reasondiff.config import HarvestConfig

    harvest = HarvestConfig(corpus=str(_tagged_corpus(tmp_path / "c.jsonl")), context_length=32)
    stream = ContextStream(harvest, tiny_tokenizer)
    harvested = stream.next_batch(23)
    used = stream.documents_used
    heldout = heldout_contexts(harvest, tiny_tokenizer, 10, 32, documents_used=used)
    seen, held = _ids(harvested, tiny_tokenizer), _ids(heldout, tiny_tokenizer)
    assert seen and held and max(seen) < used <= min(held)
    assert min(held) == used  # nothing is skipped needlessly
    assert heldout.shape == (10, 32)
    with pytest.raises(UserError, match="analyze.heldout_corpus"):
        heldout_contexts(harvest, tiny_tokenizer, 4, 32, documents_used=10_000)


def test_packing_resumes_exactly_and_mixes_reasoning_by_fraction(tiny_world, tiny_tokenizer):
    from reasondiff.config import HarvestConfig

    harvest = HarvestConfig(corpus=f"{tiny_world}/corpus.jsonl", reasoning_corpus=f"{tiny_world}/s1k.jsonl",
                            reasoning_fraction=0.25, context_length=48)
    full = ContextStream(harvest, tiny_tokenizer).next_batch(60)
    first = ContextStream(harvest, tiny_tokenizer)
    head = first.next_batch(23)
    state = StreamState.from_dict(json.loads(json.dumps(first.state().to_dict())))  # as stored in store.json
    tail = ContextStream(harvest, tiny_tokenizer, state=state).next_batch(37)
    assert torch.equal(torch.cat([head, tail]), full)
    assert sum(is_reasoning_context(i, 0.25) for i in range(60)) == 15
    text = tiny_tokenizer.decode(full[3].tolist())  # context 3 is the first reasoning context:
    with open(f"{tiny_world}/s1k.jsonl") as handle:  # the opening of an SFT conversation
        assert any(json.loads(line)["question"].startswith(text[:60]) for line in handle), text
    # documents are separated by <|endoftext|>, never padded
    sep = tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert (full == sep).any() and full.shape == (60, 48)


# --- live source ---------------------------------------------------------------------------------
@pytest.fixture
def live(cfg, tiny_model, tiny_tokenizer):
    from reasondiff.tiny import make_model

    cfg.harvest.live_buffer_tokens = 200  # 7 contexts of 31 kept tokens per refill
    cfg.harvest.stats_sample_tokens = 100
    models = (tiny_model, make_model(tiny_tokenizer, seed=1), tiny_tokenizer, parse_hook(cfg.harvest.hook, 4))
    return LiveActivationSource(cfg, models=models)


def test_live_source_keeps_serving_fresh_tokens(live):
    """The Kissane/Nanda buffer bug: after its first fill it serves the same tokens forever."""
    contexts, per_refill = live.layout(64)
    assert (contexts, per_refill) == (7, 3)
    after_stats = live.contexts_run
    stream = live.iter_batches(64, seed=0)
    served = [next(stream) for _ in range(5 * per_refill)]
    assert live.contexts_run == after_stats + 5 * contexts  # every refill ran new contexts
    rows = torch.cat(served).reshape(-1, 2 * 128)
    # no token served twice: a stale buffer would repeat every row five times; a few rows may repeat
    # honestly, where two contexts open with the same tokens (a chat turn's header)
    assert torch.unique(rows, dim=0).shape[0] >= 0.99 * rows.shape[0]
    assert live.scaling_factors.shape == (2,) and live.d_model == 128


def test_live_source_is_deterministic_and_resumable(live):
    stream = live.iter_batches(64, seed=3)
    uninterrupted = [next(stream) for _ in range(8)]
    resumed = live.iter_batches(64, seed=3, start_batch=5)
    for expected in uninterrupted[5:]:
        torch.testing.assert_close(next(resumed), expected)
