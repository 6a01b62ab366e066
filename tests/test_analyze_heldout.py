"""Held-out text: the contexts analyze reads come from corpus documents harvest never used."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from conftest import make_config

from reasondiff.analyze.run import heldout_contexts

MARKER = re.compile(r"<<doc(\d+)>>")


def test_heldout_contexts_skip_the_documents_harvest_used(tmp_path, tiny_tokenizer):
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for i in range(80):
            text = " ".join(f"<<doc{i}>> the cat sat on the mat and counted to {j}." for j in range(6))
            handle.write(json.dumps({"text": text}) + "\n")
    documents_used = 30
    store = SimpleNamespace(manifest={"documents_used": documents_used}, hook="blocks.2.hook_resid_pre",
                            scaling_factors=None)
    cfg = make_config(f"harvest.corpus={corpus}", "harvest.reasoning_fraction=0.2",
                      f"harvest.reasoning_corpus={corpus}", "analyze.n_heldout_contexts=8",
                      "analyze.context_length=64", config_name="analyze")
    contexts = heldout_contexts(cfg, tiny_tokenizer, store)
    assert contexts.shape == (8, 64)
    seen = {int(m) for row in contexts for m in MARKER.findall(tiny_tokenizer.decode(row.tolist()))}
    assert seen, "no document marker decoded: the test would prove nothing"
    assert min(seen) >= documents_used, sorted(seen)


def test_a_live_trained_crosscoder_moves_the_held_out_text_past_what_its_stream_read(tmp_path, tiny_tokenizer, caplog):
    from reasondiff.core import artifacts

    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for i in range(80):
            text = " ".join(f"<<doc{i}>> the cat sat on the mat and counted to {j}." for j in range(6))
            handle.write(json.dumps({"text": text}) + "\n")
    store = SimpleNamespace(manifest={"documents_used": 10}, hook="blocks.2.hook_resid_pre", scaling_factors=None)
    cfg = make_config(f"harvest.corpus={corpus}", "analyze.n_heldout_contexts=4", "analyze.context_length=64",
                      config_name="analyze")
    cc_dir = tmp_path / "cc"
    artifacts.write_json(cc_dir / "config.json", {"data": "live"})
    artifacts.write_json(cc_dir / "summary.json", {"documents_touched": 40})
    contexts = heldout_contexts(cfg, tiny_tokenizer, store, cc_dir)
    seen = {int(m) for row in contexts for m in MARKER.findall(tiny_tokenizer.decode(row.tolist()))}
    assert seen and min(seen) >= 40, sorted(seen)  # past the live stream's 40, not only harvest's 10
    # a live stream that went round the corpus holds nothing out: said in one warning line
    artifacts.write_json(cc_dir / "summary.json", {})
    heldout_contexts(cfg, tiny_tokenizer, store, cc_dir)
    assert any("live stream" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)
