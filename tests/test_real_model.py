"""Foundation checks on the real Qwen2.5-0.5B architecture (slow; needs the offline model).

Build it with `../shared/tools/offline_qwen.sh DIR` and point REASONDIFF_QWEN at DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from reasondiff.config import HardwareConfig
from reasondiff.lm.models import ModelShape, check_compatible, load_model, parse_hook

QWEN = Path(os.environ.get("REASONDIFF_QWEN", "/work/qwen05b"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (QWEN / "config.json").is_file(),
                       reason=f"needs a Qwen2.5-0.5B-architecture model dir at REASONDIFF_QWEN={QWEN}"),
]


def test_real_qwen_loads_with_paper_shapes():
    model, tokenizer = load_model(str(QWEN), HardwareConfig(device="cpu", dtype="bfloat16"))
    shape = ModelShape.of(model)
    # d_model is 896, not the 1024 of the paper's text: always read it from the config
    assert (shape.d_model, shape.n_layers, shape.vocab_size) == (896, 24, 151936)
    assert check_compatible(model, model, tokenizer, tokenizer) == shape
    assert parse_hook("blocks.14.hook_resid_pre", shape.n_layers).last_layer_needed == 13
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        logits = model(**tokenizer("2 + 2 =", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_real_qwen_has_massive_tokens_beyond_the_sink_and_harvest_drops_them():
    """Position 0 is not Qwen's only sink: a context cut mid-document makes an early "." or ","
    one too. Those tokens must go with max_norm_ratio (else they dominate the crosscoder's MSE)."""
    import json

    from reasondiff.lm.hooks import residual_hook, select_positions

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wiki_text_sample.jsonl"
    if not data.is_file():
        pytest.skip(f"needs {data}")
    model, tokenizer = load_model(str(QWEN), HardwareConfig(device="cpu", dtype="bfloat16"))
    ids = []
    with open(data) as handle:
        for line in handle:
            ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) > 48 * 256:
                break
    tokens = torch.tensor(ids[: 48 * 256]).view(48, 256)
    captured = []
    with torch.no_grad(), residual_hook(model, parse_hook("blocks.14.hook_resid_pre", 24), captured.append):
        model(input_ids=tokens)
    acts = torch.stack([captured[0], captured[0]], dim=2)  # [B, T, 2, d]: the same model twice
    norms = acts[:, :, 0].float().norm(dim=-1)
    median = norms[:, 1:].median()
    massive = norms[:, 1:] > 10 * median
    assert (norms[:, 0] > 10 * median).all()  # the sink
    assert massive.any(), "no massive token after position 0 in 12k tokens of wiki text"
    keep, n_dropped = select_positions(acts, None, drop_first_position=True, max_norm_ratio=10.0)
    assert n_dropped == int(massive.sum()) and not keep[:, 1:][massive].any()
