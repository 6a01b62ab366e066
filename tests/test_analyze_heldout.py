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
