"""The intervene stage end to end on the tiny models, after analyze: every artifact appears in its schema, the
random controls are there at every size, the budget sweep is in the bench's own schema, the section lands in
analyze's report, a crosscoder imported from the dictionary_learning fork's format works, and a killed run
resumes to the same numbers.

Each test runs analyze then intervene end to end on the tiny models (about 20-50 s, most of it matplotlib
saving the figures of both stages): the stage contract can only be tested whole."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import make_config, model_leaning_crosscoder

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts

N_LATENTS = 256
CONTEXT = 96


@pytest.fixture(scope="module")
def crosscoder_dir(tmp_path_factory) -> Path:
    """A train-format crosscoder with tuned- and base-leaning latents and factors != 1."""
    return model_leaning_crosscoder(tmp_path_factory.mktemp("crosscoder"), N_LATENTS, shrink=0.05)


def configs(tmp_path, crosscoder, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *extra):
    common = [f"output_root={tmp_path}", "exp_name=t", "hardware=cpu", f"model.path={tiny_model_dir}",
              "model.build_tiny=false", f"tuned_model={tiny_tuned_model_dir}", f"analyze.crosscoder_dir={crosscoder}",
              f"analyze.heldout_corpus={tiny_world / 'corpus.jsonl'}", f"finetune.dataset={tiny_world / 's1k.jsonl'}",
              "finetune.holdout.fraction=0.5",  # the reasoning text: the fine-tune's held-out rows, as analyze reads it
              "analyze.n_heldout_contexts=4", "analyze.n_reasoning_contexts=4", f"analyze.context_length={CONTEXT}",
              "analyze.n_top_latents=2", "analyze.n_shared_sample=1", "analyze.n_contexts_per_latent=1",
              "analyze.bootstrap_samples=50", "harvest.hook=blocks.2.hook_resid_pre", "hardware.analyze_batch_size=2",
              f"bench.data.gsm8k.path={tiny_world / 'gsm8k.jsonl'}", "bench.data.gsm8k.split=train",
              "bench.token_limits=[8,16,24]", "bench.limit=6", "hardware.bench_batch_size=4",
              "intervene.n_general_contexts=3", "intervene.n_reasoning_contexts=4", f"intervene.context_length={CONTEXT}",
              "intervene.selections=[tuned_r,base_r,selectivity,nu,shared]", "intervene.set_sizes=[1,4]",
              "intervene.n_random_sets=2", "intervene.steer_alphas=[0.0,1.0]", "intervene.bootstrap_samples=50",
              "intervene.bench_tasks=[gsm8k]", "intervene.bench_n=4", "intervene.bench_limit=16", *extra]
    return (make_config(*common, config_name="analyze"), make_config(*common, config_name="intervene"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_intervene_after_analyze_on_an_imported_crosscoder(tmp_path, crosscoder_dir, tiny_model_dir,
                                                           tiny_tuned_model_dir, tiny_world):
    from reasondiff.crosscoder.convert import convert

    fork = convert(crosscoder_dir, tmp_path / "fork", to="dictionary_learning")  # the fork's format ...
    imported = convert(fork, tmp_path / "imported")  # ... imported back by `reasondiff.convert`
    analyze_cfg, cfg = configs(tmp_path, imported, tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    run_stage(analyze_cfg)
    out = run_stage(cfg)
    assert artifacts.is_complete(out)
    for name in ("intervene.csv", "adl_tokens.csv", "adl_vectors.safetensors", "kl_closed.png", "kl_closed.pdf",
                 "steering.png", "report_section.md", "bench_intervened/generations.jsonl",
                 "bench_intervened/results.csv", "bench_intervened/summary.csv", "bench_intervened/vs_clean.csv",
                 "bench_intervened/format.csv", "bench_intervened/accuracy_vs_limit.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("partial_*.pt"))

    rows = read_rows(out / "intervene.csv")
    assert {r["text"] for r in rows} == {"reasoning", "general"}
    kinds = {(r["kind"], r["model"]) for r in rows}
    assert kinds == {("patch_residual", "base"), ("patch_set", "base"), ("ablate_set", "tuned"), ("steer", "base")}
    # nu and shared have no candidates here (no Latent Scaling ν below ... / no designated latents): skipped, said so
    selected = {(r["selection"], int(r["size"])) for r in rows if r["kind"] == "patch_set" and r["set_index"] == "0"
                and r["selection"] not in ("all", "random")}
    assert {s for s, _ in selected} >= {"tuned_r", "base_r", "selectivity"} and "shared" not in {s for s, _ in selected}
    for selection, size in selected:
        randoms = {r["set_index"] for r in rows if r["selection"] == "random" and r["matched_to"] == selection
                   and int(r["size"]) == size and r["kind"] == "patch_set"}
        assert randoms == {"1", "2"}, (selection, size)
    # the most tuned-leaning latent first: latents 0..39 have ‖d_base‖ shrunk
    top = next(r for r in rows if r["selection"] == "tuned_r" and r["size"] == "1" and r["set_index"] == "0")
    assert int(top["latents"]) < 40
    # steering with α = 0 is the identity: closes nothing, moves nothing
    zero = {r["measure"]: float(r["value"]) for r in rows if r["kind"] == "steer" and float(r["alpha"]) == 0.0
            and r["text"] == "reasoning" and r["selection"] == "adl_reasoning"}
    assert zero["kl_closed"] == 0.0 and zero["kl_self"] == 0.0 and zero["delta_ce"] == 0.0
    # every steering direction has its random directions of the same norm (the default 3) at every α
    for direction in {r["selection"] for r in rows if r["kind"] == "steer" and r["selection"] != "random"}:
        controls = {(r["set_index"], float(r["alpha"])) for r in rows if r["kind"] == "steer"
                    and r["selection"] == "random" and r["matched_to"] == direction}
        assert controls == {(i, a) for i in ("1", "2", "3") for a in (0.0, 1.0)}, direction
    ceiling = next(r for r in rows if r["kind"] == "patch_residual" and r["text"] == "reasoning" and r["measure"] == "kl_closed")
    assert float(ceiling["ci_low"]) <= float(ceiling["value"]) <= float(ceiling["ci_high"])
    for r in rows:
        if r["measure"] == "kl_self":
            assert float(r["value"]) >= 0.0

    adl = read_rows(out / "adl_tokens.csv")
    assert {r["model"] for r in adl} == {"base", "tuned"} and {r["position"] for r in adl} >= {"0", "4", "mean"}
    assert {(r["text"], r["window"]) for r in adl} == {("general", "start"), ("reasoning", "assistant")}

    # the budget sweep in the bench's own schema, every model on the same questions and limits
    results = read_rows(out / "bench_intervened" / "results.csv")
    models = {r["model"] for r in results}
    assert models == {"base", "tuned", "base+patch_set", "base+steer", "tuned+ablate_set", "base+patch_random",
                      "tuned+ablate_random"}
    assert {int(r["limit"]) for r in results} == {8, 16} and {int(r["n"]) for r in results} == {4}
    vs = read_rows(out / "bench_intervened" / "vs_clean.csv")
    assert {(r["model"], r["paired_with"]) for r in vs} >= {("base+patch_set", "base"), ("tuned+ablate_set", "tuned")}
    assert all(0.0 <= float(r["mcnemar_p"]) <= 1.0 for r in vs)

    # the section is in analyze's report, its links rewritten to the intervene directory
    report = (analyze_cfg.stage_dir("analyze") / "report.md").read_text()
    assert "## Causal tests (intervene)" in report and "](../intervene/kl_closed.png)" in report
    assert "| beats random |" in report  # steering read against its random directions
    assert (analyze_cfg.stage_dir("analyze") / "report.html").read_text().count("data:image/png") >= 1
    # the README's demo block says it in words (reasondiff.tiny.demo_numbers)
    from reasondiff.tiny.demo_numbers import causal_test

    sentence = causal_test(out.parent)
    assert sentence.startswith(" Causal test") and "random set of the same size ablated instead" in sentence
    manifest = artifacts.read_json(out / "manifest.json")
    assert manifest["inputs"]["crosscoder_dir"] == str(imported)
    assert not math.isnan(manifest["outputs"]["best_selection"]["value"])


def test_a_killed_intervene_run_resumes_to_the_same_numbers(tmp_path, crosscoder_dir, tiny_model_dir,
                                                           tiny_tuned_model_dir, tiny_world, monkeypatch):
    import reasondiff.intervene.run as stage

    extra = ("intervene.bench=false", "intervene.checkpoint_every=1", "intervene.selections=[tuned_r]",
             "intervene.steer_alphas=[1.0]")
    analyze_cfg, _ = configs(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *extra)
    run_stage(analyze_cfg)
    # two runs of intervene beside each other, both reading the one analyze run (intervene@ref, intervene@killed)
    _, reference = configs(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *extra, "run=ref")
    expected = read_rows(run_stage(reference) / "intervene.csv")
    _, cfg = configs(tmp_path, crosscoder_dir, tiny_model_dir, tiny_tuned_model_dir, tiny_world, *extra, "run=killed")
    real, calls = stage.intervention_batch, []

    def dies_in_the_general_pass(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 + 2:  # two reasoning batches, then the second general one
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "intervention_batch", dies_in_the_general_pass)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    out = cfg.stage_dir("intervene")
    assert out.name == "intervene@killed" and not artifacts.is_complete(out)
    assert torch.load(out / "partial_reasoning.pt", weights_only=True)["finished"]
    assert torch.load(out / "partial_general.pt", weights_only=True)["batches_done"] == 1
    calls.clear()
    run_stage(cfg)
    assert len(calls) == 1  # only the last general batch was computed again
    assert read_rows(out / "intervene.csv") == expected
