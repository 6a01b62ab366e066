"""Model-specific latents against a null (issue 28, docs/null.md): one-to-one matching across seeds,
stability, the calibrated table, the null pairs' configs and their harvests reusing the base rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_config

from reasondiff.analyze.calibration import (
    Classified,
    build_ensemble,
    calibration_markdown,
    calibration_rows,
    classify,
)
from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.crosscoder.matching import match_latents, spread_across_matches, stability
from reasondiff.harvest.store import ActivationStore


# --- matching ---------------------------------------------------------------------------------------
def test_matching_recovers_a_planted_permutation():
    generator = torch.Generator().manual_seed(0)
    W_a = torch.randn(200, 2, 32, generator=generator)
    perm = torch.randperm(200, generator=generator)
    # seed B learnt the same latents in another order, at other norms, with a little noise
    W_b = W_a[perm] * torch.rand(200, 1, 1, generator=generator).add(0.5) + 0.02 * torch.randn(200, 2, 32, generator=generator)
    matching = match_latents(W_a, W_b, threshold=0.9, chunk=64)  # chunks: the block products agree
    expected = torch.argsort(perm).numpy()  # W_b[expected[i]] is W_a[i]
    assert (matching.partner == expected).all()
    assert (matching.cosine > 0.99).all()
    # a decoder with no counterpart above the threshold gets none
    lonely = match_latents(W_a[:5], torch.randn(7, 2, 32, generator=generator), threshold=0.9)
    assert (lonely.partner == -1).all() and np.isnan(lonely.cosine).all() and (lonely.best_cosine < 0.9).all()


def _decoder(*vectors):
    """Latents whose base and tuned decoder vectors are both `v` (cosines of the concatenation = of v)."""
    v = torch.tensor(np.array(vectors), dtype=torch.float32)
    return torch.stack((v, v), dim=1)


def test_matching_is_one_to_one_and_optimal_where_greedy_fails():
    b0, b1 = np.array([1.0, 0, 0]), np.array([0.9, math.sqrt(1 - 0.81), 0])
    a0 = 1.2 * b0 + b1
    a0 /= np.linalg.norm(a0)  # close to both b0 and b1, closest to b0
    a1 = np.array([0.95, -math.sqrt(1 - 0.95**2), 0])  # close to b0 only
    W_a, W_b = _decoder(a0, a1), _decoder(b0, b1)
    matching = match_latents(W_a, W_b, threshold=0.9)
    assert a0 @ b0 > a0 @ b1 > 0.9 and a1 @ b0 > 0.9 > a1 @ b1  # greedy (a0 first) would leave a1 unmatched
    assert matching.partner.tolist() == [1, 0]
    assert matching.best_cosine[0] == pytest.approx(a0 @ b0, abs=1e-6)


def _classified(norms: list[tuple[float, float]], directions, *, alive=None) -> Classified:
    """A crosscoder with the given (base, tuned) decoder norms per latent, latent i along directions[i]."""
    W = torch.zeros(len(norms), 2, 8)
    for i, ((nb, nt), d) in enumerate(zip(norms, directions, strict=True)):
        W[i, 0, d], W[i, 1, d] = nb, nt
    return classify(W, alive=alive, designated=None,
                    thresholds={"base_only_max": 0.1, "shared_min": 0.3, "shared_max": 0.7, "tuned_only_min": 0.9})


def test_stability_and_spread_on_a_hand_made_ensemble():
    # reference: 4 latents along axes 0..3 (tuned-only, shared, shared, base-only by r)
    ref = _classified([(0.05, 1.0), (1, 1), (1, 1.2), (1, 0.05)], [0, 1, 2, 3])
    # seed 1 has latents 0, 1, 2 (in another order; latent 0 at r = 0.77 there: class "other"; its
    # concatenated cosine with the reference's is still 0.97), seed 2 latents 1 and 3
    seed1 = _classified([(1, 1.1), (0.5, 0.5), (0.3, 1)], [2, 1, 0])
    seed2 = _classified([(1, 0.01), (2, 2)], [3, 1])
    ens = build_ensemble(ref, {1: seed1, 2: seed2}, threshold=0.9, stable_fraction=1.0)
    assert ens.matchings[1].partner.tolist() == [2, 1, 0, -1]
    assert ens.matchings[2].partner.tolist() == [-1, 1, -1, 0]
    assert ens.stability.tolist() == [0.5, 1.0, 0.5, 0.5]
    rows = ens.rows()
    assert [r["stable"] for r in rows] == [False, True, False, False]
    # r of latent 0: 1/1.05 here, 1/1.3 in seed 1; latent 1: 0.5 everywhere
    assert rows[0]["relative_norm_spread"] == pytest.approx(1 / 1.05 - 1 / 1.3)
    assert rows[1]["relative_norm_spread"] == pytest.approx(0.0)
    assert rows[3]["relative_norm_spread"] == pytest.approx(abs(0.05 / 1.05 - 0.01 / 1.01))
    assert ens.stable_counts("r", "shared") == (1, 1)
    assert ens.stable_counts("r", "tuned_only") == (0, 0)
    looser = build_ensemble(ref, {1: seed1, 2: seed2}, threshold=0.9, stable_fraction=0.5)
    # latent 0 is matched in seed 1, but outside the tuned-only class there: stable, not in the same class
    assert looser.stable_counts("r", "tuned_only") == (1, 0)
    assert looser.stable_counts("r", "base_only") == (1, 1)
    assert stability([]).size == 0
    assert spread_across_matches(np.array([0.2]), [], []).tolist() == [0.0]


def test_dead_latents_are_left_out_of_every_class():
    c = _classified([(0.05, 1.0), (1, 0.01)], [0, 1], alive=torch.tensor([False, True]))
    assert c.classes["r"] == ["dead", "base_only"] and c.count("r", "model_specific") == 1


# --- the calibrated table ---------------------------------------------------------------------------
def _with_counts(base_only: int, tuned_only: int, shared: int) -> Classified:
    classes = ["base_only"] * base_only + ["tuned_only"] * tuned_only + ["shared"] * shared
    return Classified(torch.zeros(len(classes), 2, 1), np.zeros(len(classes)), np.zeros(len(classes)),
                      {"r": classes, "delta": classes})


def test_fdr_table_on_hand_made_counts():
    reasoning = {0: _with_counts(2, 10, 50), 1: _with_counts(2, 8, 50), 2: _with_counts(2, 12, 50)}
    control = {0: _with_counts(1, 2, 50), 1: _with_counts(3, 4, 50), 2: _with_counts(2, 0, 50)}
    base_vs_base = {0: _with_counts(0, 0, 60)}
    rows = calibration_rows(reasoning, {"control": control, "base_vs_base": base_vs_base}, own_seed=0)
    by = {(r["rule"], r["class"]): r for r in rows}
    tuned = by[("r", "tuned_only")]
    assert (tuned["reasoning"], tuned["reasoning_seeds"], tuned["control"], tuned["control_seeds"]) == (10, "10/8/12", 2, "2/4/0")
    assert tuned["fdr_control"] == pytest.approx(2 / 10)  # mean 2 / mean 10
    assert (tuned["fdr_control_low"], tuned["fdr_control_high"]) == (0.0, 0.5)  # 2/10, 4/8, 0/12
    assert tuned["within_control"] is False and tuned["fdr_base_vs_base"] == 0.0
    base = by[("r", "base_only")]  # 2/2/2 against 1/3/2: the reasoning pair's count is within the control's
    assert base["fdr_control"] == pytest.approx(1.0) and base["within_control"] is True
    assert (base["fdr_control_low"], base["fdr_control_high"]) == (0.5, 1.5)
    specific = by[("delta", "model_specific")]
    assert specific["reasoning"] == 12 and specific["control"] == 3 and specific["fdr_control"] == pytest.approx(4 / 12)
    text = calibration_markdown(rows, ["control", "base_vs_base"], seeds=[0, 1, 2],
                                null_seeds={"control": [0, 1, 2], "base_vs_base": [0]}, with_stability=False,
                                match_cosine=0.9, stable_fraction=1.0)
    assert "**Within the null**" in text and "base-only by r: 2/2/2 in the reasoning pair, 1/3/2 in the control" in text
    assert "0.20 [0.00, 0.50]" in text
    zero = calibration_rows({0: _with_counts(0, 0, 5)}, {"control": {0: _with_counts(0, 1, 5)}}, own_seed=0)
    assert math.isnan(zero[0]["fdr_control"]) and math.isinf(zero[1]["fdr_control"])


# --- the null pairs' configs ------------------------------------------------------------------------
def test_null_configs_resolve_to_sibling_runs(tmp_path):
    control = make_config("+exp=tiny", "+null=control", f"output_root={tmp_path}", config_name="harvest")
    assert control.run == "control" and control.stage_dir("harvest") == tmp_path / "tiny" / "harvest@control"
    assert control.tuned_model == f"{tmp_path}/tiny/finetune@control/model"
    assert control.finetune.dataset == f"{tmp_path}/_tiny/data/control.jsonl" and not control.finetune.require_thinking
    same = make_config("+exp=tiny", "+null=base_vs_base", "run=seed=1", f"output_root={tmp_path}")
    assert same.run == "base_vs_base+seed=1" and same.tuned_model == same.model.path
    assert same.stage_dir("train") == tmp_path / "tiny" / "train@base_vs_base+seed=1"
    assert same.stage_dir("harvest") == tmp_path / "tiny" / "harvest"  # nothing of the pair's yet: the main run
    (tmp_path / "tiny" / "harvest@base_vs_base").mkdir(parents=True)
    assert same.stage_dir("harvest") == tmp_path / "tiny" / "harvest@base_vs_base"  # a seed job reads its pair's store
    # a null pair's analysis reads the reasoning fine-tune's held-out rows, not the control's chat rows
    from reasondiff.app.preflight import finetune_dir_of

    (tmp_path / "tiny" / "finetune").mkdir()
    (tmp_path / "tiny" / "finetune@control").mkdir()
    assert finetune_dir_of(control) == tmp_path / "tiny" / "finetune" == finetune_dir_of(same)
    with pytest.raises(ValueError, match="analyze.nulls"):
        make_config("+exp=tiny", "analyze.nulls=[base_vs_tuned]", config_name="analyze")


def test_control_rows_are_chat_turns_answered_at_once(tmp_path):
    from reasondiff.tiny.data import write_control_dataset

    rows = [__import__("json").loads(line) for line in write_control_dataset(tmp_path / "c.jsonl", n_rows=12).open()]
    assert len(rows) == 12 and all(r["deepseek_thinking_trajectory"] == "" and r["deepseek_attempt"] for r in rows)


# --- harvests that reuse the base rows ---------------------------------------------------------------
def _harvest(tmp_path, base, tuned, world, *overrides):
    return make_config(
        "+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", f"model.path={base}", f"tuned_model={tuned}",
        f"harvest.corpus={world}/corpus.jsonl", f"harvest.reasoning_corpus={world}/s1k.jsonl",
        "harvest.reasoning_fraction=0.25", "harvest.context_length=32", "harvest.n_tokens=1500",
        "harvest.shard_tokens=500", "harvest.stats_sample_tokens=300", "harvest.store_dtype=float32",
        "hardware.harvest_batch_size=4", "hardware.device=cpu", *overrides, config_name="harvest")


def _rows(directory):
    store = ActivationStore.open(directory)
    return store.gather(torch.arange(store.n_tokens)), np.asarray(store.tokens())


def test_null_harvests_reuse_the_base_rows_of_the_main_store(tmp_path, tiny_model_dir, tiny_tuned_model_dir,
                                                             tiny_world, caplog):
    other = tmp_path / "other_tuned"  # the control model: neither the base nor the main run's tuned model
    from reasondiff.lm.models import load_tokenizer
    from reasondiff.tiny import make_model

    make_model(load_tokenizer(str(tiny_model_dir)), seed=7).save_pretrained(other)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(other)
    main_rows, main_tokens = _rows(run_stage(_harvest(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world)))

    same_dir = run_stage(_harvest(tmp_path, tiny_model_dir, tiny_model_dir, tiny_world, "+null=base_vs_base"))
    assert same_dir.name == "harvest@base_vs_base"
    rows, tokens = _rows(same_dir)
    assert torch.equal(rows[:, 0], main_rows[:, 0]) and torch.equal(rows[:, 1], rows[:, 0])
    assert np.array_equal(tokens, main_tokens)
    manifest = artifacts.read_json(same_dir / "manifest.json")
    assert manifest["outputs"]["forward_contexts_saved"] > 0 and manifest["outputs"]["base_rows_from"]
    assert "tiny/harvest" in manifest["upstream"]  # a redone main harvest makes this store stale

    # killed while writing its second shard, then resumed: the reader picks up at the rows stored so far
    from reasondiff.harvest import store as store_io

    original, calls = store_io.write_shard, {"n": 0}

    def dying_write(directory, index, acts, tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(directory, index, acts, tokens)

    control = _harvest(tmp_path, tiny_model_dir, other, tiny_world, "run=control")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_io, "write_shard", dying_write)
        with pytest.raises(KeyboardInterrupt):
            run_stage(control)
    assert not artifacts.is_complete(control.stage_dir("harvest"))
    reused = run_stage(control)
    fresh = run_stage(_harvest(tmp_path, tiny_model_dir, other, tiny_world, "run=fresh", "harvest.reuse_base=false"))
    assert artifacts.read_json(fresh / "manifest.json")["outputs"]["forward_contexts_saved"] == 0
    (a, ta), (b, tb) = _rows(reused), _rows(fresh)
    assert torch.equal(a, b) and np.array_equal(ta, tb)  # the same store as running both models

    # another corpus length: the main store's settings differ, so the base model runs
    changed = run_stage(_harvest(tmp_path, tiny_model_dir, other, tiny_world, "run=ctx", "harvest.context_length=16"))
    assert artifacts.read_json(changed / "manifest.json")["outputs"]["base_rows_from"] is None


def _finished(directory, **files):
    directory.mkdir(parents=True)
    for name, obj in files.items():
        artifacts.write_json(directory / name, obj)
    artifacts.mark_complete(directory)


def test_a_control_harvest_reuses_the_base_rows_only_when_its_mix_left_out_the_same_questions(tmp_path):
    from reasondiff.app.preflight import mix_excluded_questions
    from reasondiff.app.reuse import base_rows_source
    from reasondiff.core import fingerprint
    from reasondiff.lm.holdout import split_rows

    rows = [{"question": f"q{i}", "deepseek_thinking_trajectory": "t", "deepseek_attempt": "a"} for i in range(20)]
    split = split_rows(rows, dataset="s1k", fields=("question", "deepseek_thinking_trajectory", "deepseek_attempt"),
                       fraction=0.25, n_rows=None, seed=0)
    _finished(tmp_path / "tiny" / "finetune", **{"manifest.json": {"outputs": {"holdout": split.to_record()}}})
    main_cfg = make_config("+exp=tiny", f"output_root={tmp_path}", f"tuned_model={tmp_path}/tiny/finetune/model",
                           config_name="harvest")
    control = make_config("+exp=tiny", "+null=control", f"output_root={tmp_path}", config_name="harvest")
    # the control's finetune.dataset names its chat rows: its fingerprint differs from the main store's there...
    ours = fingerprint.settings(control, "harvest")
    assert ours["finetune.dataset"] != fingerprint.settings(main_cfg, "harvest")["finetune.dataset"]
    main = tmp_path / "tiny" / "harvest"

    def main_store(excluded):
        import shutil

        shutil.rmtree(main, ignore_errors=True)
        corpus = {"reasoning_questions_excluded": len(excluded), "reasoning_questions_excluded_keys": sorted(excluded)}
        _finished(main, **{"store.json": {"n_tokens": 10**9, "corpus": corpus},
                           "fingerprint.json": fingerprint.Fingerprint(fingerprint.settings(main_cfg, "harvest"))
                           .to_json()})

    # ...yet both mixes leave out the reasoning fine-tune's held-out questions: the base rows are the same
    main_store(split.heldout_questions)
    assert base_rows_source(control, lambda: mix_excluded_questions(control)) == (main, "")
    other = split_rows(rows, dataset="s1k", fields=split.fields, fraction=0.25, n_rows=None, seed=1).heldout_questions
    main_store(other)  # a main store whose mix left out other questions holds other reasoning contexts
    lender, why = base_rows_source(control, lambda: mix_excluded_questions(control))
    assert lender is None and "other held-out questions" in why


# --- base vs base on the tiny world ------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_vs_base_store(tmp_path_factory):
    """The tiny world's base model against itself: a harvest@base_vs_base store of 12k tokens."""
    from conftest import REPO

    root = tmp_path_factory.mktemp("bvb")
    (root / "_tiny").mkdir()
    (root / "_tiny" / "base_model").symlink_to(REPO / "outputs" / "_tiny" / "base_model")  # built by ensure_tiny_world
    (root / "_tiny" / "data").symlink_to(REPO / "outputs" / "_tiny" / "data")
    from reasondiff.tiny import ensure_tiny_world

    ensure_tiny_world(REPO / "outputs" / "_tiny" / "base_model")
    cfg = make_config("+exp=tiny", "+null=base_vs_base", f"output_root={root}", "hardware.device=cpu",
                      "harvest.n_tokens=12000", "harvest.shard_tokens=8192", config_name="harvest")
    run_stage(cfg)
    return root


def _trained(root, *overrides):
    cfg = make_config("+exp=tiny", "+null=base_vs_base", f"output_root={root}", "hardware.device=cpu",
                      "train.n_latents=256", "train.batch_size=512", "train.n_tokens=100000", "train.dead_tokens=50000",
                      "train.eval_tokens=2048", *overrides, config_name="train")
    from reasondiff.analyze.calibration import load_classified

    return load_classified(run_stage(cfg), {"base_only_max": 0.1, "shared_min": 0.3, "shared_max": 0.7,
                                            "tuned_only_min": 0.9})


def test_base_vs_base_finds_no_model_specific_latents(base_vs_base_store):
    store = ActivationStore.open(base_vs_base_store / "tiny" / "harvest@base_vs_base")
    rows = store.gather(torch.arange(store.n_tokens))
    assert torch.equal(rows[:, 0], rows[:, 1])  # one model, twice

    # the default (the paper's) initialisation: one random decoder direction per model, both of norm
    # dec_init_norm (r = 0.5 at step 0). The two decoders then see the same data and the same convex
    # per-model problem, so they are pulled to the same optimum: what is left is optimisation noise
    default = _trained(base_vs_base_store, "run=default_init")
    alive = np.array([c != "dead" for c in default.classes["r"]])
    assert alive.sum() > 50
    for rule in ("r", "delta"):
        assert default.count(rule, "model_specific") == 0, rule
    assert np.abs(default.relative_norm[alive] - 0.5).max() < 0.1  # far from the classes' thresholds
    # the same decoder direction for both models at step 0: identical gradients at every step, so the
    # two decoders stay equal and r = Δ = 0.5 for EVERY latent, dead or alive (an exact null)
    same = _trained(base_vs_base_store, "run=same_init", "train.same_init_across_models=true")
    assert np.abs(same.relative_norm - 0.5).max() < 1e-6 and np.abs(same.delta - 0.5).max() < 1e-6
    assert torch.allclose(same.W_dec[:, 0], same.W_dec[:, 1], atol=1e-6, rtol=0)


def test_control_rows_from_general_text_train_in_the_chat_layout(shared_data, tiny_tokenizer):
    import json

    from reasondiff.config import ReasoningFormat
    from reasondiff.core.errors import UserError
    from reasondiff.finetune import tokenize_example, validate_row
    from reasondiff.finetune.control_data import control_rows

    texts = [json.loads(line)["text"] for line in (shared_data / "wiki_text_sample.jsonl").open()][:20]
    rows = control_rows(texts, 40, chars=800)
    assert len(rows) == 40 and len({r["question"] for r in rows}) == 40
    assert len({r["question"] for r in rows[:20]}) == 20  # one passage of every document before a second
    for i, row in enumerate(rows):
        validate_row(row, index=i, source="control", trace_source="deepseek", require_thinking=False)
    with pytest.raises(UserError, match="thinking_trajectory is empty"):
        validate_row(rows[0], index=0, source="control", trace_source="deepseek")
    example = tokenize_example(tiny_tokenizer, rows[0]["question"], "", rows[0]["deepseek_attempt"], ReasoningFormat())
    supervised = tiny_tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label >= 0])
    assert "<|im_start|>think" in supervised and rows[0]["deepseek_attempt"][:40] in supervised
    assert example.thinking_span[0] == example.thinking_span[1] or example.thinking_span[1] - example.thinking_span[0] <= 1
    with pytest.raises(UserError, match="control rows"):
        control_rows(texts[:2], 500, chars=800)


def test_a_seed_sibling_does_not_rebuild_the_tiny_world(monkeypatch, tmp_path):
    from reasondiff.tiny import prepare_tiny_world

    calls = []
    monkeypatch.setattr("reasondiff.tiny.model.ensure_tiny_world", lambda path, **kw: calls.append(kw))
    prepare_tiny_world(make_config("+exp=tiny", "seed=1", f"output_root={tmp_path}"), "train")
    assert calls and calls[0].get("seed", 0) == 0 and calls[0].get("recipe") is None  # the one tiny world


# --- analyze reads the seed and null runs -------------------------------------------------------------
def _save_train_dir(directory, W_dec, *, dead_tokens=100):
    """A finished train directory holding a crosscoder with decoder `W_dec` (every latent alive)."""
    from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig

    cc = CrossCoder(CrossCoderConfig(d_model=W_dec.shape[-1], n_latents=W_dec.shape[0]))
    with torch.no_grad():
        cc.W_dec.copy_(W_dec)
    cc.save(directory, extra={"train": {"dead_tokens": dead_tokens}})
    torch.save(torch.zeros(W_dec.shape[0], dtype=torch.long), directory / "final_counters.pt")
    artifacts.mark_complete(directory, {"artifact_id": directory.name})


def test_analyze_calibrates_against_the_finished_seed_and_null_runs(tmp_path):
    from reasondiff.analyze.calibration import calibrate
    from reasondiff.analyze.report import build_report
    from reasondiff.app.preflight import upstream_dirs

    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", config_name="analyze")
    exp = tmp_path / "tiny"
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(40, 16, generator=generator)
    norms = torch.ones(40, 2)
    norms[:6, 0] = 0.02  # six tuned-only latents in the reasoning pair
    W = directions[:, None, :] / directions.norm(dim=1)[:, None, None] * norms[:, :, None]
    _save_train_dir(exp / "train", W)
    _save_train_dir(exp / "train@seed=1", W[torch.randperm(40, generator=generator)])  # the same latents, reordered
    (exp / "train@seed=2").mkdir()  # unfinished: not read
    same = W.clone()
    same[:, 0] = same[:, 1] = W.mean(dim=1)
    _save_train_dir(exp / "train@base_vs_base", same)
    control = W.clone()
    control[:6, 0] = 1.0
    control[:2, 0] = 0.02  # two tuned-only latents
    _save_train_dir(exp / "train@control", control)
    _save_train_dir(exp / "train@control+seed=1", control)

    assert {p.name for p in upstream_dirs(cfg, "analyze")} >= {"train@seed=1", "train@base_vs_base", "train@control",
                                                                "train@control+seed=1"}
    out = exp / "analyze"
    out.mkdir()
    result = calibrate(cfg, out, exp / "train", W, torch.zeros(40, dtype=torch.bool),
                       {"base_only_max": 0.1, "shared_min": 0.3, "shared_max": 0.7, "tuned_only_min": 0.9})
    assert result["seeds"] == [0, 1] and result["nulls"] == {"base_vs_base": [0], "control": [0, 1]}
    rows = {(r["rule"], r["class"]): r for r in result["calibration"]}
    tuned = rows[("r", "tuned_only")]
    assert (tuned["reasoning_seeds"], tuned["stable"], tuned["stable_same_class"]) == ("6/6", 6, 6)
    assert tuned["base_vs_base"] == 0 and tuned["control_seeds"] == "2/2"
    assert tuned["fdr_control"] == pytest.approx(2 / 6) and not tuned["within_control"]
    assert (out / "stability.csv").is_file() and (out / "calibration.csv").is_file()
    report = build_report(tmp_path / "tiny", out, title="t")
    assert report.index("## Model-specific latents against a null") < report.index("## Fine-tuning")

    # a null run's own analysis compares seeds, never other nulls
    control_cfg = make_config("+exp=tiny", "+null=control", f"output_root={tmp_path}", config_name="analyze")
    out = exp / "analyze@control"
    out.mkdir()
    result = calibrate(control_cfg, out, exp / "train@control", control, torch.zeros(40, dtype=torch.bool),
                       {"base_only_max": 0.1, "shared_min": 0.3, "shared_max": 0.7, "tuned_only_min": 0.9})
    assert result["seeds"] == [0, 1] and result["nulls"] == {}


def test_no_within_sentence_for_counts_the_reasoning_pair_does_not_claim():
    rows = calibration_rows({0: _with_counts(0, 3, 5)}, {"base_vs_base": {0: _with_counts(0, 0, 8)}}, own_seed=0)
    text = calibration_markdown(rows, ["base_vs_base"], seeds=[0], null_seeds={"base_vs_base": [0]},
                                with_stability=False, match_cosine=0.9, stable_fraction=1.0)
    assert "Within the null" not in text and "above every null's largest count" in text
    none = calibration_rows({0: _with_counts(0, 0, 5)}, {"base_vs_base": {0: _with_counts(0, 0, 8)}}, own_seed=0)
    assert "no model-specific latent" in calibration_markdown(
        none, ["base_vs_base"], seeds=[0], null_seeds={"base_vs_base": [0]}, with_stability=False,
        match_cosine=0.9, stable_fraction=1.0)
