"""What a new user tripped over in the pipeline (issue 33.1, 33.2): a named run that redid every stage
and overwrote a sweep job, a sibling called stale, a given tuned model fine-tuned anyway, follow-up
commands that could not be pasted. Fast stand-in stages (`reasondiff.app.stage.stage_function`
patched): the contract decides what runs and where, not what a stage computes.
"""

from __future__ import annotations

import logging

import pytest
from conftest import REPO, make_config
from test_stale_chain import fake_stages

import reasondiff.app.stage as stage_module
from reasondiff.app import commands, preflight
from reasondiff.app.commands import user_command
from reasondiff.app.stage import decide, run_stage
from reasondiff.config import STAGES
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.pipeline import describe, plan, run_pipeline, selected_stages


@pytest.fixture
def world(tmp_path, tiny_model_dir, tiny_world):
    def cfg(stage, *overrides):
        return make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false",
                           f"model.path={tiny_model_dir}", f"finetune.dataset={tiny_world}/s1k.jsonl",
                           f"harvest.corpus={tiny_world}/corpus.jsonl", "harvest.reasoning_fraction=0",
                           "finetune.holdout.n_rows=0", "analyze.n_reasoning_contexts=0", "scan.n_reasoning_contexts=0",
                           "train.data=store",
                           *(f"bench.data.{t}.path={tiny_world}/{t}.jsonl" for t in ("gsm8k", "math500", "boolq")),
                           *overrides, config_name=stage)
    return cfg


@pytest.fixture
def done(world, tiny_tuned_model_dir, monkeypatch):
    """Every stage finished in outputs/tiny/ by `python -m reasondiff.pipeline +exp=tiny` (stand-ins)."""
    calls: list[str] = []
    funcs = fake_stages(tiny_tuned_model_dir, calls)
    funcs["bench"] = lambda cfg, ctx: calls.append(ctx.dir.name) or {}
    monkeypatch.setattr(stage_module, "stage_function", lambda stage: funcs[stage])
    run_pipeline(world("pipeline"))
    assert calls == list(STAGES)
    calls.clear()
    return funcs, calls


def _plan(cfg):
    return [(s, d.action, d.directory.name) for s, d in plan(cfg)]


# --- 33.1: run=NAME on the pipeline ------------------------------------------------------------------
def test_a_named_pipeline_run_reuses_every_stage_whose_settings_did_not_change(world, done, tmp_path, caplog):
    funcs, calls = done
    exp = tmp_path / "tiny"
    # the l1 sweep's job, made before: same settings as the named run asks
    job = run_stage(world("train", "train.l1_coeff=4", "run=l1_coeff=4"), func=funcs["train"])
    weights = (job / "crosscoder.safetensors").read_bytes()
    calls.clear()
    cfg = world("pipeline", "train.l1_coeff=4", "run=l1_coeff=4")
    assert _plan(cfg) == [("finetune", "skip", "finetune"), ("bench", "skip", "bench"), ("harvest", "skip", "harvest"),
                          ("scan", "skip", "scan"), ("train", "skip", "train@l1_coeff=4"),
                          ("analyze", "run", "analyze@l1_coeff=4"), ("intervene", "run", "intervene@l1_coeff=4")]
    with caplog.at_level(logging.INFO, logger="reasondiff"):
        run_pipeline(cfg)
    # before the fix: finetune@, bench@, harvest@, scan@l1_coeff=4 made, and the sweep job redone as "stale"
    assert calls == ["analyze@l1_coeff=4", "intervene@l1_coeff=4"]
    assert sorted(p.name for p in exp.glob("*@*")) == ["analyze@l1_coeff=4", "intervene@l1_coeff=4", "train@l1_coeff=4"]
    assert (job / "crosscoder.safetensors").read_bytes() == weights and "stale" not in caplog.text
    printed = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline: finetune skip"))
    assert "train skip tiny/train@l1_coeff=4" in printed and "analyze run tiny/analyze@l1_coeff=4" in printed
    read = artifacts.read_json(exp / "analyze@l1_coeff=4" / "fingerprint.json")["upstream"]
    assert {"tiny/train@l1_coeff=4", "tiny/harvest", "tiny/finetune"} <= set(read)
    assert decide(world("analyze", "run=l1_coeff=4"), "analyze").action == "skip"


def test_the_run_name_applies_from_the_first_stage_that_differs_and_to_what_reads_it(world, done, tmp_path):
    funcs, calls = done
    cfg = world("pipeline", "harvest.context_length=64", "run=ctx64")
    assert _plan(cfg) == [("finetune", "skip", "finetune"), ("bench", "skip", "bench"), ("harvest", "run", "harvest@ctx64"),
                          ("scan", "run", "scan@ctx64"), ("train", "run", "train@ctx64"),
                          ("analyze", "run", "analyze@ctx64"), ("intervene", "run", "intervene@ctx64")]
    run_pipeline(cfg)
    assert calls == ["harvest@ctx64", "scan@ctx64", "train@ctx64", "analyze@ctx64", "intervene@ctx64"]  # as planned
    assert artifacts.read_json(tmp_path / "tiny" / "train@ctx64" / "fingerprint.json")["upstream"] \
        .keys() == {"tiny/harvest@ctx64"}
    assert [d.action for _, d in plan(cfg)] == ["skip"] * 7  # and again: nothing to do


def test_a_stage_is_never_called_stale_because_a_sibling_of_its_input_was_redone(world, done, tmp_path):
    funcs, calls = done
    run_stage(world("train", "train.l1_coeff=4", "run=x"), func=funcs["train"])  # reads the main harvest
    run_stage(world("harvest", "harvest.context_length=64", "run=x"), func=funcs["harvest"])
    run_stage(world("harvest", "harvest.context_length=64", "run=x", "overwrite=true"), func=funcs["harvest"])
    assert decide(world("train"), "train").action == "skip"  # the main train read the main harvest: untouched
    with pytest.raises(UserError) as refused:
        run_stage(world("train", "train.l1_coeff=4", "run=x"), func=funcs["train"])
    message = str(refused.value)
    assert "stale" not in message and "redone since" not in message
    assert "train@x was made from tiny/harvest; this run reads tiny/harvest@x instead" in message


def test_a_changed_train_key_names_the_train_and_analyze_apps_with_run(world, done):
    with pytest.raises(UserError) as refused:
        plan(world("pipeline", "train.l1_coeff=4"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("pipeline: nothing was run: train: finished with train.l1_coeff")
    separate = message.split("for a separate run beside it: ", 1)[1]
    assert separate.startswith("python -m reasondiff.train +exp=tiny train.l1_coeff=4.0 run=l1_coeff=4 && "
                               "python -m reasondiff.analyze +exp=tiny train.l1_coeff=4.0 run=l1_coeff=4 ")
    assert "pass the same train.l1_coeff=2.0 to the pipeline" in message


# --- 33.2: a given tuned model, a chosen subset, commands that paste -------------------------------
def test_a_given_tuned_model_is_not_fine_tuned(world, tiny_tuned_model_dir, monkeypatch, caplog):
    calls: list[str] = []
    funcs = fake_stages(tiny_tuned_model_dir, calls)
    funcs["bench"] = lambda cfg, ctx: calls.append(ctx.dir.name) or {}
    monkeypatch.setattr(stage_module, "stage_function", lambda stage: funcs[stage])
    cfg = world("pipeline", f"tuned_model={tiny_tuned_model_dir}", "exp_name=pair")
    with caplog.at_level(logging.INFO, logger="reasondiff"):
        run_pipeline(cfg)
    assert calls == ["bench", "harvest", "scan", "train", "analyze", "intervene"]  # before the fix: a fine-tune too
    assert f"pipeline: finetune not run: tuned_model={tiny_tuned_model_dir} is given" in caplog.text
    # the finetune app on such a config refuses in one line
    with pytest.raises(UserError, match=r"^tuned_model=.* is given: there is nothing to fine-tune"):
        run_stage(world("finetune", f"tuned_model={tiny_tuned_model_dir}"), func=funcs["finetune"])


@pytest.mark.parametrize("tuned, given", [("simplescaling/s1.1-1.5B", True), ("{root}/other/finetune/model", True),
                                          ("{root}/tiny/finetune/model", False),
                                          ("{root}/tiny/finetune@lr1e-3/model", False)])
def test_anything_but_this_experiments_fine_tune_is_a_given_tuned_model(world, tmp_path, tuned, given):
    cfg = world("pipeline", f"tuned_model={tuned.format(root=tmp_path)}")
    assert preflight.tuned_model_given(cfg) is given
    assert ("finetune" in selected_stages(cfg)[0]) is not given
    if given:  # a hub id too (+pair=NAME configs): the finetune app refuses before any work
        with pytest.raises(UserError, match="is given: there is nothing to fine-tune"):
            run_stage(world("finetune", f"tuned_model={tuned.format(root=tmp_path)}"),
                      func=lambda cfg, ctx: pytest.fail("ran"))


def test_pipeline_stages_runs_a_chosen_subset(world, done, tiny_tuned_model_dir):
    funcs, calls = done
    cfg = world("pipeline", "pipeline.stages=[analyze,train]", "train.l1_coeff=4", "run=l1")
    assert _plan(cfg) == [("train", "run", "train@l1"), ("analyze", "run", "analyze@l1")]
    run_pipeline(cfg)
    assert calls == ["train@l1", "analyze@l1"]
    with pytest.raises(ValueError, match="pipeline.stages: 'trian' is not a stage"):
        world("pipeline", "pipeline.stages=[trian]")
    with pytest.raises(UserError, match="pipeline.stages includes finetune, but tuned_model=.* is given"):
        plan(world("pipeline", "pipeline.stages=[finetune,harvest]", f"tuned_model={tiny_tuned_model_dir}"))


def test_printed_commands_carry_the_overrides_the_run_was_made_with(world, monkeypatch, tmp_path):
    from reasondiff.scan.run import experiment_args

    given = ["+exp=tiny", "exp_name=pair", "model.path=/models/base", "tuned_model=/models/tuned", "overwrite=true",
             "run='l1_coeff=4'", "scan.n_general_contexts=8", "harvest.hook=blocks.1.hook_resid_pre"]
    monkeypatch.setattr(commands, "RUN_OVERRIDES", given)
    cfg = world("scan")
    assert experiment_args(cfg) == "+exp=tiny exp_name=pair model.path=/models/base tuned_model=/models/tuned"
    assert user_command("train", cfg, "run=x", drop=("overwrite", "scan.")) == (
        "python -m reasondiff.train +exp=tiny exp_name=pair model.path=/models/base tuned_model=/models/tuned "
        "harvest.hook=blocks.1.hook_resid_pre run=x")
    # a library call (no command line): the experiment and a given tuned model
    monkeypatch.setattr(commands, "RUN_OVERRIDES", [])
    assert experiment_args(world("scan", "tuned_model=Org/tuned")) == "+exp=tiny tuned_model=Org/tuned"


def test_the_printed_plan_names_each_stage_and_where(world, done):
    cfg = world("pipeline")
    assert describe(cfg, plan(cfg)).startswith("finetune skip tiny/finetune, bench skip tiny/bench")


def test_the_report_of_a_given_pair_names_no_fine_tune_and_carries_the_overrides(tmp_path):
    from reasondiff.analyze.report import build_report

    exp = tmp_path / "pair"
    (exp / "analyze").mkdir(parents=True)
    args = "+exp=tiny exp_name=pair tuned_model=/models/tuned"
    text = build_report(exp, exp / "analyze", title="t", command_args=args, given_tuned_model="/models/tuned")
    assert "No fine-tune in this experiment: the tuned model was given (`tuned_model=/models/tuned`)" in text
    assert f"python -m reasondiff.bench {args}" in text and f"python -m reasondiff.scan {args}" in text
    assert "+exp=pair" not in text and "reasondiff.finetune" not in text  # before: `python -m reasondiff.finetune +exp=pair`


@pytest.mark.parametrize("pair", sorted(p.stem for p in (REPO / "conf" / "pair").glob("*.yaml")))
def test_a_released_pair_runs_no_finetune_stage_and_the_finetune_app_refuses(pair, tmp_path):
    cfg = make_config(f"+pair={pair}", f"output_root={tmp_path}", config_name="pipeline")
    stages, note = selected_stages(cfg)
    assert "finetune" not in stages and note.startswith(f"finetune not run: tuned_model={cfg.tuned_model} is given")
    with pytest.raises(UserError, match=rf"^tuned_model={cfg.tuned_model} is given: there is nothing to fine-tune"):
        run_stage(make_config(f"+pair={pair}", f"output_root={tmp_path}", config_name="finetune"),
                  func=lambda cfg, ctx: pytest.fail("ran"))
    assert not (tmp_path / cfg.exp_name).exists()
