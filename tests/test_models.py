"""Model loading from a local dir, the base/tuned compatibility check, hook names."""

from __future__ import annotations

import pytest
import torch

from reasondiff.config import HardwareConfig
from reasondiff.core.errors import UserError
from reasondiff.lm.models import check_compatible, hooked, load_model, parse_hook, valid_hook_names


def test_load_from_local_dir(tiny_model_dir, tiny_model):
    model, tokenizer = load_model(str(tiny_model_dir), HardwareConfig(device="cpu"))
    ids = tokenizer("2 plus 3 is 5.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


def test_missing_local_dir_is_one_line_with_key(tmp_path):
    with pytest.raises(UserError, match=r"tuned_model=.*no such local directory"):
        load_model(str(tmp_path / "missing"), HardwareConfig(), config_key="tuned_model")


def test_dir_without_config_is_rejected(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path), HardwareConfig())


def test_compatible_pair_passes(tiny_model, tiny_tokenizer):
    other = type(tiny_model)(tiny_model.config)
    shape = check_compatible(tiny_model, other, tiny_tokenizer, tiny_tokenizer)
    assert shape.d_model == tiny_model.config.hidden_size


def test_mismatched_pair_names_the_difference(tiny_model, tiny_tokenizer):
    from reasondiff.tiny import make_model

    wider = make_model(tiny_tokenizer, hidden_size=64, n_layers=2)
    with pytest.raises(UserError, match="d_model 128 vs 64.*n_layers 4 vs 2"):
        check_compatible(tiny_model, wider, tiny_tokenizer, tiny_tokenizer)


def test_mismatched_tokenizers_rejected(tiny_model, tiny_tokenizer):
    from reasondiff.tiny import make_tokenizer

    other_tok = make_tokenizer(["completely different text " * 50], vocab_size=len(tiny_tokenizer))
    with pytest.raises(UserError, match="tokenizer"):
        check_compatible(tiny_model, tiny_model, tiny_tokenizer, other_tok)


def test_hook_names():
    hook = parse_hook("blocks.14.hook_resid_pre", 24)
    assert (hook.layer, hook.kind, hook.last_layer_needed) == (14, "hook_resid_pre", 13)
    assert parse_hook("blocks.3.hook_resid_post", 4).last_layer_needed == 3
    with pytest.raises(UserError, match="past the last layer.*valid"):
        parse_hook("blocks.24.hook_resid_pre", 24)
    with pytest.raises(UserError, match="unknown hook name"):
        parse_hook("blocks.2.attn.hook_z", 24)
    assert len(valid_hook_names(24)) == 72


def test_transformer_bridge_wraps_a_loaded_model_offline(tiny_model, tiny_tokenizer):
    bridge = hooked(tiny_model, tiny_tokenizer, name="Qwen/Qwen2-0.5B")
    ids = tiny_tokenizer("The red cat sees the old tree.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == "blocks.2.hook_resid_pre")
    assert cache["blocks.2.hook_resid_pre"].shape == (1, ids.shape[1], tiny_model.config.hidden_size)


def test_a_config_that_disagrees_with_its_weights_is_one_line(tmp_path, tiny_model_dir):
    """Issue 32.3: an edited hidden_size passed preflight and failed in transformers with a traceback."""
    import json
    import shutil

    from reasondiff.app import preflight
    from tests.conftest import make_config

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    hidden = config["hidden_size"]
    config["hidden_size"] = hidden // 2
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_model(str(bad), HardwareConfig(device="cpu"), config_key="tuned_model")
    message = str(err.value)
    assert "\n" not in message and f"tuned_model={bad}" in message and "model.safetensors" in message
    assert f"hidden_size={hidden // 2}" in message and f", {hidden}]" in message and f", {hidden // 2}]" in message
    cfg = make_config(f"model.path={tiny_model_dir}", f"tuned_model={bad}", config_name="scan")
    problems = preflight.problems([(cfg, "scan")], disk=False)
    assert any("config.json disagrees with the weights" in p and "tuned_model=" in p for p in problems), problems
    assert not any("model.path=" in p and "disagrees" in p for p in problems)  # the intact one passes


def test_saved_tokenizer_does_not_record_the_environment(tmp_path, tiny_model_dir):
    """Issue 32.4: tokenizer_config.json held local_files_only (true offline, false online)."""
    import json

    from reasondiff.lm.models import load_tokenizer

    load_tokenizer(str(tiny_model_dir)).save_pretrained(tmp_path)
    assert "local_files_only" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
