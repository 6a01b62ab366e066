"""Stage contract v2 (issue 15): never a stale result, never a deleted run, sweeps that report failure.

Fingerprints decide skip / refuse / redo; an upstream redo makes its readers stale (and the
pipeline redoes them); named runs and sweep jobs are siblings that `overwrite=true` of another run
never touches; a multirun exits non-zero with a tally; grids are checked before the first job; each
app's --help lists its own keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, app_env, make_config

import reasondiff
from reasondiff.app.stage import Decision, decide, run_stage
from reasondiff.core import artifacts, fingerprint
from reasondiff.core.errors import UserError
from reasondiff.core.fingerprint import Fingerprint
from reasondiff.pipeline import plan, run_pipeline

SMALL = ("train.data=synthetic", "model.build_tiny=false", "hardware.device=cpu", "train.synthetic.d_model=16",
         "train.n_latents=32", "train.batch_size=64", "train.n_tokens=1280", "train.eval_tokens=128",
         "train.log_every=5", "train.checkpoint_every=8")


def small(tmp_path, *overrides):
    return make_config("+exp=tiny", f"output_root={tmp_path}", *SMALL, *overrides)


def _subprocess_env() -> dict:
    return app_env()


def _run_app(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=_subprocess_env())


# --- fingerprints ------------------------------------------------------------------------------------
def test_a_changed_key_refuses_naming_the_key_both_values_and_the_ways_out(tmp_path):
    out = run_stage(small(tmp_path))
    weights = (out / "crosscoder.safetensors").read_bytes()
    with pytest.raises(UserError) as refused:
        run_stage(small(tmp_path, "train.l1_coeff=4"))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("train: finished with train.l1_coeff=2.0; you asked 4.0")
    assert "overwrite=true" in message and "run=l1_coeff=4" in message
    assert (out / "crosscoder.safetensors").read_bytes() == weights and artifacts.is_complete(out)  # untouched
    # several keys: each named with both values
    with pytest.raises(UserError, match=r"train.l1_coeff=2.0, train.lr=0.001; you asked 4.0, 0.01 .*run=l1_coeff=4\+lr=0.01 "):
        run_stage(small(tmp_path, "train.l1_coeff=4", "train.lr=1e-2"))


def test_the_record_is_kept_with_the_marker_and_the_manifest(tmp_path):
    out = run_stage(small(tmp_path))
    marker = artifacts.read_marker(out)
    manifest = artifacts.read_json(out / artifacts.MANIFEST)
    recorded = artifacts.read_json(out / fingerprint.FINGERPRINT_FILE)
    assert marker["fingerprint"] == manifest["fingerprint"] == recorded["fingerprint"]
    assert marker["artifact_id"] == manifest["artifact_id"]
    assert manifest["settings"]["train.l1_coeff"] == 2.0 and "train.log_every" not in manifest["settings"]


def test_cosmetic_keys_and_keys_added_later_do_not_refuse(tmp_path):
    out = run_stage(small(tmp_path))
    finished = artifacts.read_marker(out)["finished_at"]
    run_stage(small(tmp_path, "train.log_every=7", "train.checkpoint_every=3", "hardware.cpu_threads=1"))
    assert artifacts.read_marker(out)["finished_at"] == finished  # skipped, not redone
    # a record made before `train.grad_clip` existed: its default reproduces the old behaviour
    path = out / fingerprint.FINGERPRINT_FILE
    record = json.loads(path.read_text())
    del record["settings"]["train.grad_clip"]
    path.write_text(json.dumps(record))
    run_stage(small(tmp_path))
    assert artifacts.read_marker(out)["finished_at"] == finished
    with pytest.raises(UserError, match=r"train.grad_clip=\(unset\); you asked 0.5"):
        run_stage(small(tmp_path, "train.grad_clip=0.5"))


def test_every_cosmetic_key_is_a_schema_key_with_a_reason():
    keys = set(fingerprint.flatten(make_config("+exp=tiny")))
    assert set(fingerprint.COSMETIC) <= keys
    assert all(len(reason) > 10 for reason in fingerprint.COSMETIC.values())


def test_a_stage_fingerprints_its_own_section_and_the_keys_that_change_its_results():
    cfg = make_config("+exp=tiny", config_name="harvest")
    settings = fingerprint.settings(cfg, "harvest")
    assert {"harvest.hook", "harvest.n_tokens", "model.path", "tuned_model", "hardware.dtype", "seed"} <= set(settings)
    assert not any(k.startswith(("train.", "bench.", "analyze.", "wandb.")) for k in settings)
    # the tiny harvest mixes reasoning text: of finetune.*, only the held-out split it leaves out
    assert {k for k in settings if k.startswith("finetune.")} == {
        "finetune.dataset", "finetune.split", "finetune.holdout.fraction", "finetune.holdout.n_rows",
        "finetune.holdout.seed"}
    assert "hardware.harvest_batch_size" not in settings and "model.name" not in settings
    assert settings["model.path"] == "<output_root>/_tiny/base_model"  # a moved outputs/ keeps its fingerprints
    synthetic = fingerprint.settings(make_config("+exp=tiny", "train.data=synthetic"), "train")
    store = fingerprint.settings(make_config("+exp=tiny"), "train")
    assert "train.synthetic.d_model" in synthetic and "train.synthetic.d_model" not in store
    assert "model.path" not in store  # train on a store reads the store, not the models


# --- upstream redo -> stale downstream ---------------------------------------------------------------
def _fake_harvest(cfg, ctx):
    artifacts.write_text(ctx.dir / "store.json", json.dumps({"d_model": 16}))
    artifacts.write_text(ctx.dir / "shard_00000.acts.npy", "work worth resuming")
    return {}


def _counting_train(calls):
    def work(cfg, ctx):
        calls.append(ctx.dir)
        artifacts.write_text(ctx.dir / "crosscoder.txt", "weights")
        return {}
    return work


@pytest.fixture
def chain(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    def cfg(stage, *overrides):
        return make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", f"model.path={tiny_model_dir}",
                           f"tuned_model={tiny_tuned_model_dir}", f"harvest.corpus={tiny_world}/corpus.jsonl",
                           "harvest.reasoning_fraction=0", "train.data=store", *overrides, config_name=stage)
    return cfg


def test_an_upstream_redo_makes_the_downstream_stage_stale_and_it_is_redone(chain, caplog):
    calls = []
    run_stage(chain("harvest"), func=_fake_harvest)
    run_stage(chain("train"), func=_counting_train(calls))
    run_stage(chain("train"), func=_counting_train(calls))
    assert len(calls) == 1  # same settings, same harvest: skipped
    run_stage(chain("harvest", "overwrite=true"), func=_fake_harvest)  # harvest redone (same settings!)
    assert decide(chain("train"), "train").action == "redo"
    with caplog.at_level(logging.WARNING, logger="reasondiff"):
        run_stage(chain("train"), func=_counting_train(calls))
    assert len(calls) == 2 and "stale: tiny/harvest was redone" in caplog.text
    run_stage(chain("train"), func=_counting_train(calls))
    assert len(calls) == 2  # up to date again


def test_the_pipeline_plans_stale_stages_and_refuses_every_changed_key_at_once(chain):
    run_stage(chain("harvest"), func=_fake_harvest)
    run_stage(chain("train"), func=_counting_train([]))
    stages = ("harvest", "train")
    assert [d.action for _, d in plan(chain("pipeline"), stages)] == ["skip", "skip"]
    # a partial harvest will be resumed, so the finished train that read the old one is stale
    artifacts.clear_complete(chain("harvest").stage_dir("harvest"))
    planned = dict(plan(chain("pipeline"), stages))
    assert planned["harvest"].action == "resume" and planned["train"].action == "redo"
    assert "tiny/harvest" in planned["train"].reason
    run_stage(chain("harvest"), func=_fake_harvest)
    with pytest.raises(UserError) as refused:
        plan(chain("pipeline", "harvest.context_length=64", "train.l1_coeff=8"), stages)
    message = str(refused.value)
    assert message.startswith("pipeline: nothing was run:")
    assert "harvest.context_length=128; you asked 64" in message and "you asked 8.0" in message


def test_every_missing_input_is_reported_together(tmp_path, tiny_world):
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false",
                      f"model.path={tmp_path}/no_model", "tuned_model=Org/not-cached-anywhere",
                      f"harvest.corpus={tmp_path}/no_corpus.jsonl", "harvest.reasoning_fraction=0", config_name="harvest")
    with pytest.raises(UserError) as refused:
        run_stage(cfg, func=lambda cfg, ctx: pytest.fail("ran"))
    message = str(refused.value)
    assert message.startswith("3 problems:")
    assert "model.path=" in message and "tuned_model=Org/not-cached-anywhere" in message and "harvest.corpus=" in message
    assert not cfg.stage_dir("harvest").exists()


# --- runs are siblings --------------------------------------------------------------------------------
def test_a_named_run_survives_overwrite_of_the_main_run(tmp_path):
    main = run_stage(small(tmp_path))
    job = run_stage(small(tmp_path, "train.l1_coeff=4", "run=l1_coeff=4"))
    assert job.parent == main.parent and job.name == "train@synthetic+l1_coeff=4"
    runs = json.loads((tmp_path / "tiny" / "runs.json").read_text())
    assert runs["train@synthetic+l1_coeff=4"]["run"] == "synthetic+l1_coeff=4"
    before = (job / "crosscoder.safetensors").read_bytes()
    run_stage(small(tmp_path, "overwrite=true"))
    assert artifacts.is_complete(job) and (job / "crosscoder.safetensors").read_bytes() == before
    assert artifacts.is_complete(main)


def test_downstream_stages_read_the_run_of_the_same_name(chain, tmp_path):
    run_stage(chain("harvest"), func=_fake_harvest)
    run_stage(chain("harvest", "harvest.hook=blocks.1.hook_resid_pre", "run=hook=blocks.1.hook_resid_pre"),
              func=_fake_harvest)
    named = chain("train", "run=hook=blocks.1.hook_resid_pre")
    assert named.stage_dir("harvest").name == "harvest@hook=blocks.1.hook_resid_pre"
    assert named.stage_dir("train").name == "train@hook=blocks.1.hook_resid_pre"
    assert chain("train", "run=other").stage_dir("harvest").name == "harvest"  # no harvest@other: the main run


def test_multirun_job_names_are_readable_and_long_ones_are_hashed():
    from reasondiff.core.runs import check_run_name, name_from_overrides

    assert name_from_overrides("train", ["+exp=tiny", "+sweep=l1_coeff", "train.l1_coeff=4"]) == "l1_coeff=4"
    assert name_from_overrides("bench", ["bench.token_limits=[16,32,64]", "hardware=cpu"]) == "token_limits=16-32-64"
    assert name_from_overrides("train", ["harvest.hook=blocks.1.hook_resid_pre", "hardware.dtype=bfloat16"]) == \
        "harvest.hook=blocks.1.hook_resid_pre+hardware.dtype=bfloat16"
    long = name_from_overrides("bench", [f"bench.token_limits=[{','.join(str(2 ** i) for i in range(4, 16))}]"])
    assert len(long) <= 60 and long.startswith("token_limits=16-32-64") and not {"[", ",", "/"} & set(long)
    check_run_name(long)
    with pytest.raises(ValueError, match="run="):
        check_run_name("a/b")


# --- sweeps -------------------------------------------------------------------------------------------
def test_a_failing_multirun_exits_non_zero_with_a_tally(tmp_path):
    sweep = ("reasondiff.train", "-m", "+exp=tiny", f"output_root={tmp_path}", *SMALL, "train.lr=1e-3,1e30")
    result = _run_app(*sweep)
    assert result.returncode == 1, result.stderr[-3000:]
    tally = result.stderr[result.stderr.index("sweep: 2 jobs"):]
    assert tally.startswith("sweep: 2 jobs — 1 ok, 1 failed, 0 skipped")
    assert "failed  #1 train@synthetic+lr=1e_30: crosscoder loss is inf at step 1" in tally  # its one-line error
    exp = tmp_path / "tiny"
    assert artifacts.is_complete(exp / "train@synthetic+lr=0.001")
    assert not (exp / "train@synthetic+lr=1e_30").exists()  # a failed job leaves no directory that looks like a run
    again = _run_app(*sweep)
    assert again.returncode == 1 and "sweep: 2 jobs — 0 ok, 1 failed, 1 skipped" in again.stderr


def test_a_grid_that_does_not_fit_the_model_is_refused_before_the_first_job(tmp_path, tiny_model_dir, tiny_world):
    result = _run_app("reasondiff.bench", "-m", "+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false",
                      f"model.path={tiny_model_dir}", "bench.models=[base]", "bench.tasks=[gsm8k]",
                      f"bench.data.gsm8k.path={tiny_world}/gsm8k.jsonl", "+sweep=token_limits",
                      "sweeps.token_limits='[16,32],[1024,4096]'")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sweep refused before its first job" in errors[0]
    assert "4096 generated tokens do not fit the 2048-position context" in errors[0]
    assert not list((tmp_path / "tiny").glob("bench*"))


@pytest.mark.parametrize("target, app, sweep", [("sweep-l1", "train", "l1_coeff"), ("sweep-k", "train", "k"),
                                                ("sweep-limits", "bench", "token_limits"),
                                                ("sweep-layers", "harvest", "layers")])
def test_every_make_sweep_target_fits_the_tiny_experiment(target, app, sweep, tmp_path, tiny_model_dir,
                                                          tiny_tuned_model_dir, tiny_world):
    """The Makefile's grid for the default EXP=tiny passes the start-up check against a tiny model
    (the paper's grid, the same check's counter-example, does not fit it)."""
    from hydra import compose, initialize_config_dir

    from reasondiff.app.stage import CONF_DIR
    from reasondiff.app.sweeps import expand_jobs, grid_problems
    from reasondiff.config import SweepGrids

    makefile = (REPO / "Makefile").read_text()
    command = makefile.split(f"\n{target}:", 1)[1].split("\n")[1].strip()
    assert f"reasondiff.{app} -m +exp=$(EXP) +sweep={sweep}" in command and "\nEXP ?= tiny" in makefile
    common = ["+exp=tiny", f"+sweep={sweep}", f"output_root={tmp_path}", "model.build_tiny=false",
              f"model.path={tiny_model_dir}", f"tuned_model={tiny_tuned_model_dir}",
              f"harvest.corpus={tiny_world}/corpus.jsonl", f"harvest.reasoning_corpus={tiny_world}/s1k.jsonl",
              *(f"bench.data.{t}.path={tiny_world}/{t}.jsonl" for t in ("gsm8k", "math500", "boolq")),
              "train.data=synthetic"]
    paper = getattr(SweepGrids(), sweep)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides, fits in ((common, True), ([*common, f"sweeps.{sweep}='{paper}'"], app == "train")):
            jobs = expand_jobs(compose(config_name=app, overrides=overrides, return_hydra_config=True))
            assert len(jobs) >= 3
            problems = grid_problems(app, jobs)
            assert (problems == []) == fits, problems


# --- the command line ----------------------------------------------------------------------------------
OTHER_SECTIONS = ("finetune.", "bench.", "harvest.", "train.", "analyze.")


@pytest.mark.parametrize("app", ["finetune", "bench", "harvest", "train", "analyze"])
def test_help_names_the_app_and_lists_only_its_keys(app):
    result = _run_app(f"reasondiff.{app}", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"python -m reasondiff.{app} — stage")
    keys = [line.split("=", 1)[0].strip() for line in text.splitlines() if line.startswith("  ") and "=" in line]
    assert any(k.startswith(f"{app}.") for k in keys)
    foreign = [k for k in keys if k.startswith(OTHER_SECTIONS) and not k.startswith(f"{app}.")]
    if app == "analyze":  # analyze reads where harvest took its text from, and the fine-tune's held-out rows
        assert foreign and all(k.startswith(("harvest.", "finetune.")) for k in foreign)
        assert {k for k in foreign if k.startswith("finetune.")} <= {
            "finetune.dataset", "finetune.split", "finetune.trace_source", "finetune.holdout.fraction",
            "finetune.holdout.n_rows", "finetune.holdout.seed"}
    else:
        assert not foreign, foreign
    assert "--cfg job --resolve" in text
    # descriptions come from the dataclass docstrings
    assert "Artifacts go to <output_root>/<exp_name>/<stage>/" in text


def test_a_typo_fails_in_one_line_naming_the_nearest_key():
    result = _run_app("reasondiff.train", "+exp=tiny", "train.l1_cof=2", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: train.l1_cof is not a config key; did you mean train.l1_coeff? (python -m reasondiff.train --help "
        "lists the keys; config groups are model=, hardware=, +exp=, +sweep=, +debug=)"]


def test_wandb_offline_logs_its_directory_and_the_sync_command(tmp_path, caplog):
    pytest.importorskip("wandb")
    with caplog.at_level(logging.INFO):
        out = run_stage(small(tmp_path, "wandb.mode=offline"))
    lines = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert lines, caplog.text
    directory = lines[-1].rsplit("wandb sync ", 1)[1].split()[0]
    assert os.path.isdir(directory) and str(out) in directory


def test_the_pipeline_ends_with_the_path_of_the_report(chain, monkeypatch, capsys):
    import reasondiff.pipeline as pipeline

    def fake_execute(cfg, stage=None, func=None, prepare=None):
        if stage == "analyze":
            artifacts.write_text(cfg.stage_dir("analyze") / "report.md", "# report\n")

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    monkeypatch.setattr(pipeline, "plan", lambda cfg, stages: [(s, Decision("run", Fingerprint({}))) for s in stages])
    report = run_pipeline(chain("pipeline"), ("analyze",))
    assert capsys.readouterr().out.strip() == f"report: {report}" and report.name == "report.md"


def test_a_wrong_model_path_is_never_given_a_new_tiny_model(tmp_path):
    wrong = tmp_path / "typo" / "base_model"
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", f"model.path={wrong}", config_name="finetune")
    assert cfg.model.build_tiny
    with pytest.raises(UserError, match=r"model.path=.*typo/base_model: no such model directory.*build_tiny"):
        reasondiff.run_stage(cfg, func=lambda cfg, ctx: pytest.fail("ran"))  # as the apps run it
    assert not wrong.exists()


def test_decisions_of_a_plain_config(tmp_path):
    cfg = small(tmp_path)
    assert decide(cfg, "train").action == "run"
    run_stage(cfg)
    assert decide(cfg, "train").action == "skip"
    assert decide(dataclasses.replace(cfg, overwrite=True), "train").action == "redo"


def test_a_batch_size_counts_where_it_picks_the_median_of_the_massive_activation_filter():
    plain = fingerprint.settings(make_config("+exp=tiny", config_name="harvest"), "harvest")
    filtered = fingerprint.settings(make_config("+exp=tiny", "harvest.max_norm_ratio=10", config_name="harvest"),
                                    "harvest")
    assert "hardware.harvest_batch_size" not in plain and filtered["hardware.harvest_batch_size"] == 4


def test_the_docs_list_every_cosmetic_key_with_its_reason():
    page = (REPO / "docs" / "runs.md").read_text()
    for key in fingerprint.COSMETIC:
        assert f"`{key}`" in page, key


@pytest.mark.slow
def test_every_make_sweep_target_runs_on_the_tiny_experiment(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    """`make sweep-*` end to end with the tiny experiment's grids (sizes shrunk through ARGS), then
    `make sweep-summary`: every job finishes, each target exits 0 with a tally."""
    shrink = [f"output_root={tmp_path}", "model.build_tiny=false", f"model.path={tiny_model_dir}",
              f"tuned_model={tiny_tuned_model_dir}", f"harvest.corpus={tiny_world}/corpus.jsonl",
              f"harvest.reasoning_corpus={tiny_world}/s1k.jsonl", "harvest.n_tokens=1000", "harvest.shard_tokens=500",
              "harvest.stats_sample_tokens=200", "bench.limit=2", "hardware.bench_batch_size=2",
              *(f"bench.data.{t}.path={tiny_world}/{t}.jsonl" for t in ("gsm8k", "math500", "boolq")),
              "train.data=synthetic", "train.synthetic.d_model=16", "train.n_latents=32", "train.batch_size=64",
              "train.n_tokens=640", "train.eval_tokens=128", "hardware.device=cpu"]
    env = {**_subprocess_env(), "VENV": str(Path(sys.executable).parent.parent)}
    for target, jobs in (("sweep-l1", 5), ("sweep-k", 4), ("sweep-limits", 3), ("sweep-layers", 3)):
        result = subprocess.run(["make", "-s", target, f"ARGS={' '.join(shrink)}"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (target, result.stderr[-3000:])
        assert f"sweep: {jobs} jobs — {jobs} ok, 0 failed" in result.stdout, (target, result.stdout[-2000:])
    exp = tmp_path / "tiny"
    assert len(list(exp.glob("train@synthetic+l1_coeff=*"))) == 5 and len(list(exp.glob("harvest@hook=*"))) == 3
    summary = subprocess.run([sys.executable, "-m", "reasondiff.train.sweep_summary", str(exp)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert summary.returncode == 0 and (exp / "sweep_summary.png").is_file(), summary.stderr[-2000:]
