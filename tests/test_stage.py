"""The stage contract: stable dirs, completion marker written last, skip/overwrite, interrupts."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError


@pytest.fixture
def cfg(tmp_path):
    # model.build_tiny=false, synthetic data: these tests exercise the contract, not the stage's inputs
    return make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "train.data=synthetic",
                       config_name="train")


def test_stage_writes_manifest_config_and_marker(cfg):
    calls = []

    def work(cfg, ctx):
        calls.append(ctx.dir)
        ctx.inputs["activations"] = "somewhere"
        ctx.metrics.log({"loss": 1.5}, step=1)
        artifacts.write_text(ctx.dir / "result.txt", "ok")
        return {"result": "result.txt"}

    out = run_stage(cfg, "train", work)
    assert out == cfg.stage_dir("train") and calls == [out]
    manifest = artifacts.read_json(out / "manifest.json")
    assert manifest["outputs"] == {"result": "result.txt"} and manifest["inputs"] == {"activations": "somewhere"}
    assert manifest["seed"] == cfg.seed and manifest["wall_seconds"] >= 0
    assert "  l1_coeff: 2.0\n" in (out / ".hydra" / "config.yaml").read_text()
    assert (out / "metrics.csv").read_text().splitlines() == ["step,loss", "1,1.5"]
    assert artifacts.is_complete(out)


def test_finished_stage_is_skipped_and_overwrite_redoes_it(cfg):
    calls = []
    work = lambda cfg, ctx: calls.append(1) or {}  # noqa: E731
    run_stage(cfg, "train", work)
    run_stage(cfg, "train", work)
    assert calls == [1]
    run_stage(dataclasses.replace(cfg, overwrite=True), "train", work)
    assert calls == [1, 1]


def test_interrupted_stage_is_not_complete_and_keeps_partial_work(cfg):
    def work(cfg, ctx):
        artifacts.write_text(ctx.dir / "checkpoint.txt", "step 10")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "train", work)
    out = cfg.stage_dir("train")
    assert not artifacts.is_complete(out) and (out / "checkpoint.txt").read_text() == "step 10"

    seen = []
    run_stage(cfg, "train", lambda cfg, ctx: seen.append((ctx.dir / "checkpoint.txt").read_text()) or {})
    assert seen == ["step 10"]  # the re-run finds the partial work to resume from


def test_sigterm_takes_the_interrupt_path(cfg):
    def work(cfg, ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        return {}

    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "train", work)
    assert not artifacts.is_complete(cfg.stage_dir("train"))


def test_named_runs_are_siblings_of_the_main_run(cfg):
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data="store"))
    job = dataclasses.replace(cfg, run="l1_coeff=4")
    assert job.stage_dir("train") == cfg.stage_dir("train").parent / "train@l1_coeff=4"
    assert job.stage_dir("harvest") == cfg.stage_dir("harvest")  # no harvest@l1_coeff=4: the main run is read


def test_synthetic_validation_never_replaces_the_real_crosscoder(cfg):
    synthetic = make_config("+exp=tiny", "train.data=synthetic")
    assert synthetic.stage_dir("train").name == "train@synthetic"
    assert synthetic.stage_dir("train").parent == make_config("+exp=tiny").stage_dir("train").parent


def test_missing_base_model_fails_before_any_work(cfg):
    with pytest.raises(UserError, match="model.path=.*no such local directory"):
        run_stage(dataclasses.replace(cfg, stage="harvest"), "harvest", lambda cfg, ctx: pytest.fail("ran"))


def test_tuned_model_before_finetune_is_a_clear_error(cfg, tiny_model_dir):
    cfg = dataclasses.replace(cfg, stage="harvest", model=dataclasses.replace(cfg.model, path=str(tiny_model_dir)))
    with pytest.raises(UserError, match="finetune stage has not finished"):
        run_stage(cfg, "harvest", lambda cfg, ctx: pytest.fail("ran"))


def test_a_named_run_that_fails_before_any_work_leaves_no_name_in_runs_json(tmp_path):
    """Issue 32.4: runs.json kept runs that failed and left no folder."""
    import json

    def refuse(cfg, ctx):
        raise UserError("refused by the stage's own input check")

    base = ("+exp=tiny", f"output_root={tmp_path}", "train.data=synthetic", "model.build_tiny=false",
            "hardware.device=cpu")
    kept = make_config(*base, "run=kept", config_name="train")
    run_stage(kept, func=lambda cfg, ctx: (ctx.dir / "result.txt").write_text("ok") and {})
    failed = make_config(*base, "run=failed", config_name="train")
    with pytest.raises(UserError, match="refused"):
        run_stage(failed, func=refuse)
    assert not failed.stage_dir("train").exists()
    assert set(json.loads((tmp_path / "tiny" / "runs.json").read_text())) == {kept.stage_dir("train").name}


def _app(*args: str):
    import subprocess
    import sys

    from conftest import REPO, app_env

    return subprocess.run([sys.executable, "-m", "reasondiff.train", *args], capture_output=True, text=True,
                          env=app_env(), cwd=REPO, timeout=300)


def test_a_wrong_type_and_a_refusal_are_each_one_line_once(tmp_path):
    """Issue 33.6: `train.l1_coeff=abc` gave Hydra's five-line error (exit 1); a refusal was printed
    twice (logged to the console, then printed)."""
    wrong = _app("+exp=tiny", f"output_root={tmp_path}", "train.l1_coeff=abc")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    lines = [line for line in (wrong.stdout + wrong.stderr).splitlines() if line.strip()]
    assert lines == ["error: train.l1_coeff=abc: Value 'abc' of type 'str' could not be converted to Float "
                     "(python -m reasondiff.train --help shows each key's current value)"], lines
    refused = _app("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "train.data=store")
    assert refused.returncode == 2
    both = refused.stdout + refused.stderr
    assert both.count("no finished harvest run") == 1, both
    assert refused.stderr.startswith("error: train.data=store: no finished harvest run")


def test_multirun_flag_may_come_after_the_overrides(tmp_path):
    """`python -m reasondiff.train +exp=X -m seed=1,2` failed in Hydra's parser ("unrecognized arguments");
    the CLI moves -m to the front, so the same multirun runs wherever the flag is written."""
    from reasondiff.app.cli import multirun_first

    assert multirun_first(["+exp=tiny", "-m", "seed=1,2"]) == ["-m", "+exp=tiny", "seed=1,2"]
    assert multirun_first(["+exp=tiny", "seed=1"]) == ["+exp=tiny", "seed=1"]
    late = _app("+exp=tiny", f"output_root={tmp_path}", "-m", "train.l1_coeff=abc,1", "--cfg", "job")
    assert "unrecognized arguments" not in late.stderr, late.stderr
