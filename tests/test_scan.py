"""The scan stage on tiny models: patching is exact, a planted change is found at its layer, a killed
scan resumes to the same numbers, identical models are handled, the report shows the result."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.lm.hooks import residual_hook
from reasondiff.lm.models import parse_hook
from reasondiff.scan.meters import resid_hook_name
from reasondiff.scan.patching import Unembedding, check_unembedding, clean_run, patched_final_residuals

N_LAYERS = 4  # the tiny model's


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def value(row: dict[str, str], column: str) -> float:
    return float(row[column]) if row[column] != "" else math.nan


# --- patching is exact ----------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_every_layer_patched_in_one_batch_equals_one_hooked_forward_per_layer(tiny_model, tiny_tokenizer, attention):
    base = tiny_model
    donor = copy.deepcopy(base)
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for model in (base, donor):
        model.set_attn_implementation(attention)
    ids = torch.randint(0, len(tiny_tokenizer), (3, 24))
    check_unembedding(base, ids)
    clean, other = clean_run(base, ids), clean_run(donor, ids)
    unembed = Unembedding(base)
    # with its own residuals the recipient reproduces its clean run at every layer
    for layer, final in patched_final_residuals(base, clean.layer_kwargs, clean.resid):
        assert torch.allclose(final, clean.resid[-1], atol=1e-5), layer
    # with the donor's: exactly the logits of a full forward with the donor's residual hooked in at that layer
    seen = []
    for layer, final in patched_final_residuals(base, clean.layer_kwargs, other.resid):
        seen.append(layer)
        with residual_hook(base, parse_hook(resid_hook_name(layer, N_LAYERS), N_LAYERS), lambda h, L=layer: other.resid[L]):
            logits = base(input_ids=ids).logits
        ours = unembed.logprobs(final.reshape(-1, final.shape[-1]))
        assert torch.allclose(ours, torch.log_softmax(logits.reshape(ours.shape), -1), atol=1e-4), layer
    assert seen == list(range(N_LAYERS + 1))


def test_right_padding_without_a_mask_leaves_real_tokens_untouched(tiny_model, tiny_tokenizer):
    ids = torch.randint(0, len(tiny_tokenizer), (1, 12))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    short, long = clean_run(tiny_model, ids, components=True), clean_run(tiny_model, padded, components=True)
    for a, b in zip(short.resid + short.mlp_out + short.attn_out, long.resid + long.mlp_out + long.attn_out, strict=True):
        assert torch.allclose(a, b[:, :12], atol=1e-6)


# --- the stage ------------------------------------------------------------------------------------

def plant_change(model, layer: int, tokenizer, *, steps: int = 60, seed: int = 0):
    """Fine-tune ONLY layers[layer].mlp on a token-mapping task (next token = perm[current token])."""
    tuned = copy.deepcopy(model).train()
    for p in tuned.parameters():
        p.requires_grad_(False)
    mlp = tuned.model.layers[layer].mlp
    for p in mlp.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    perm = torch.randperm(vocab, generator=g)
    optim = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randint(0, vocab, (8, 24), generator=g)
        logits = tuned(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), perm[x].reshape(-1))
        optim.zero_grad()
        loss.backward()
        optim.step()
    return tuned.eval()


def save_model(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def scan_config(tmp_path, base_dir, tuned_dir, tiny_world, *extra):
    return make_config(
        f"output_root={tmp_path}", "exp_name=t", "hardware=cpu", f"model.path={base_dir}", "model.build_tiny=false",
        f"tuned_model={tuned_dir}", f"harvest.corpus={tiny_world / 'corpus.jsonl'}",
        # half of the 40 rows held out (the fine-tune's split, computed for a tuned model made elsewhere)
        f"finetune.dataset={tiny_world / 's1k.jsonl'}", "finetune.holdout.fraction=0.5", "scan.n_general_contexts=4",
        "scan.n_reasoning_contexts=4",
        "scan.context_length=64", "scan.patch_contexts=2", "hardware.analyze_batch_size=2", *extra, config_name="scan")


@pytest.mark.parametrize("planted", [1, 2])
def test_a_change_planted_in_one_mlp_is_found_at_its_layer(tmp_path, tiny_model, tiny_tokenizer, tiny_world, planted):
    base_dir = save_model(tiny_model, tiny_tokenizer, tmp_path / "base")
    tuned_dir = save_model(plant_change(tiny_model, planted, tiny_tokenizer), tiny_tokenizer, tmp_path / "tuned")
    out = run_stage(scan_config(tmp_path, base_dir, tuned_dir, tiny_world))
    assert artifacts.is_complete(out)
    for name in ("scan.csv", "scan.png", "scan.pdf", "recommendation.json"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "scan.csv")
    assert {r["text"] for r in rows} == {"general", "reasoning", "reasoning_answer"}
    for text in ("general", "reasoning"):
        resid = {int(r["layer"]): r for r in rows if r["text"] == text and r["site"] == "resid"}
        mlp = {int(r["layer"]): r for r in rows if r["text"] == text and r["site"] == "mlp_out"}
        attn = {int(r["layer"]): r for r in rows if r["text"] == text and r["site"] == "attn_out"}
        assert value(resid[0], "kl_base_tuned") > 1e-3  # the planted change moves the outputs
        for layer in range(N_LAYERS + 1):
            changed = layer > planted  # resid_pre L sees block `planted` only when L > planted
            assert (value(resid[layer], "relative_change") > 1e-3) == changed, (text, layer)
            assert (value(resid[layer], "cka") < 1 - 1e-9) == changed, (text, layer)
            assert resid[layer]["n_patch_contexts"] == "2"
            for direction in ("tuned_into_base", "base_into_tuned"):
                closed = value(resid[layer], f"closed_{direction}")
                assert closed == pytest.approx(1.0 if changed else 0.0, abs=1e-4), (text, layer, direction)
                # the 95% interval over the two patched contexts holds the point estimate
                low, high = value(resid[layer], f"closed_{direction}_low"), value(resid[layer], f"closed_{direction}_high")
                assert low - 1e-9 <= closed <= high + 1e-9, (text, layer, direction, low, closed, high)
        for block in range(N_LAYERS):
            assert (value(mlp[block], "relative_change") > 1e-3) == (block >= planted), (text, block)
            assert (value(attn[block], "relative_change") > 1e-3) == (block > planted), (text, block)
    recommendation = artifacts.read_json(out / "recommendation.json")
    assert recommendation["hook"] == f"blocks.{planted + 1}.hook_resid_pre"
    assert recommendation["largest_step_block"] == planted
    # a change confined to one block: every context jumps 0 -> 1 there, so the layer is certain, and
    # the other direction, reported beside it, agrees
    assert recommendation["layer_range"] == [planted + 1, planted + 1] and recommendation["uncertain_layers"] == []
    assert recommendation["directions"]["base_into_tuned"]["layer"] == planted + 1
    assert "base → tuned" in recommendation["line"] and "2 patched contexts" in recommendation["line"]
    assert f"run=hook=blocks.{planted + 1}.hook_resid_pre" in " ".join(recommendation["follow_up"])

    from reasondiff.analyze.report import build_report

    report = build_report(tmp_path / "t", tmp_path / "t" / "analyze", title="r")
    assert "## Layer scan" in report and recommendation["line"] in report and "../scan/scan.png" in report


def test_identical_models_give_no_recommendation_and_no_nan_crash(tmp_path, tiny_model_dir, tiny_world):
    out = run_stage(scan_config(tmp_path, tiny_model_dir, tiny_model_dir, tiny_world, "scan.component_sites=false"))
    rows = read_rows(out / "scan.csv")
    assert {r["site"] for r in rows} == {"resid"}
    for row in rows:
        assert value(row, "relative_change") == 0.0 and value(row, "cosine") == pytest.approx(1.0)
        assert value(row, "cka") == pytest.approx(1.0)
        assert value(row, "kl_base_tuned") == 0.0
        assert row["closed_tuned_into_base"] == "" and row["closed_base_into_tuned"] == ""
    recommendation = artifacts.read_json(out / "recommendation.json")
    assert recommendation["hook"] is None and "agree" in recommendation["line"]


def test_representation_only_scan(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    out = run_stage(scan_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world, "scan.patch_contexts=0",
                                "scan.n_reasoning_contexts=0"))
    rows = read_rows(out / "scan.csv")
    assert {r["text"] for r in rows} == {"general"}
    assert all(r["closed_tuned_into_base"] == "" for r in rows)
    assert all(value(r, "relative_change") > 0 for r in rows)  # two differently initialised models
    recommendation = artifacts.read_json(out / "recommendation.json")
    assert recommendation["hook"] is None and "patching was off" in recommendation["line"]
    assert (out / "scan.pdf").is_file()


def test_killed_scan_resumes_to_the_same_numbers(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world, monkeypatch):
    import reasondiff.scan.passes as passes

    reference = run_stage(scan_config(tmp_path / "ref", tiny_model_dir, tiny_tuned_model_dir, tiny_world))
    cfg = scan_config(tmp_path / "run", tiny_model_dir, tiny_tuned_model_dir, tiny_world, "scan.checkpoint_every=1")
    real, calls, killed = passes.clean_run, [], []

    def dies_in_the_second_patching_batch(*args, **kwargs):
        calls.append(1)
        # general text: 2 representation batches (4 runs), then patching batch 1 (runs 5-6), batch 2 (7-8)
        if len(calls) == 7 and not killed:
            killed.append(1)
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(passes, "clean_run", dies_in_the_second_patching_batch)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    out = cfg.stage_dir("scan")
    assert not artifacts.is_complete(out)
    assert torch.load(out / "partial_general_patching.pt", weights_only=True)["batches_done"] == 1
    calls.clear()
    run_stage(cfg)
    # patching batch 2 of general text (2 runs), then all of the reasoning text (2 + 2 batches, 2 runs each)
    assert len(calls) == 2 + 8
    assert read_rows(out / "scan.csv") == read_rows(reference / "scan.csv")
    assert not list(out.glob("partial_*.pt"))


def test_bad_scan_settings_fail_at_start_naming_the_key():
    with pytest.raises(Exception, match="scan.directions"):
        make_config("scan.directions=[tuned_into_base,sideways]", config_name="scan")
    with pytest.raises(Exception, match="scan.large_effect"):
        make_config("scan.large_effect=1.5", config_name="scan")


@pytest.mark.slow
def test_real_qwen_scan_runs_end_to_end_on_the_fine_tunes_layout(tmp_path, shared_data):
    """The real architecture and chat template (offline Qwen, REASONDIFF_QWEN) as both models: the
    unembedding check passes, the s1 layout renders, every number is the identical-model value."""
    import os

    qwen = Path(os.environ.get("REASONDIFF_QWEN", "/work/qwen05b"))
    if not (qwen / "config.json").is_file():
        pytest.skip(f"needs a Qwen2.5-0.5B-architecture model dir at REASONDIFF_QWEN={qwen}")
    cfg = make_config(
        f"output_root={tmp_path}", "exp_name=q", "hardware=cpu", "hardware.dtype=float32", f"model.path={qwen}",
        "model.build_tiny=false", f"tuned_model={qwen}", f"harvest.corpus={shared_data / 'wiki_text_sample.jsonl'}",
        f"finetune.dataset={shared_data / 's1k_schema_sample.jsonl'}", "scan.n_general_contexts=1",
        "scan.n_reasoning_contexts=1", "scan.context_length=192", "scan.patch_contexts=1",
        "scan.directions=[tuned_into_base]", "scan.component_sites=false", config_name="scan")
    out = run_stage(cfg)
    rows = read_rows(out / "scan.csv")
    assert len(rows) == 3 * 25  # general, reasoning, reasoning_answer x 25 residual layers
    assert all(value(r, "relative_change") == 0.0 and value(r, "kl_base_tuned") == 0.0 for r in rows)
    assert artifacts.read_json(out / "recommendation.json")["hook"] is None
