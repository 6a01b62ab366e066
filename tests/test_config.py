"""Every app composes with every experiment; typos and bad values fail at start-up with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, app_env, make_config
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from reasondiff.config import STAGES

APPS = STAGES + ("pipeline",)
EXPS = ("tiny", "qwen05b")


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("exp", EXPS)
def test_every_app_composes_with_every_experiment(app, exp):
    cfg = make_config(f"+exp={exp}", config_name=app)
    assert cfg.stage == app
    assert cfg.exp_name == exp
    assert cfg.stage_dir(app if app != "pipeline" else "train").parts[:2] == ("outputs", exp)


def test_paper_experiment_carries_the_papers_values():
    cfg = make_config("+exp=qwen05b", config_name="finetune")
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.hardware.name == "rtx5070ti_16gb" and cfg.hardware.dtype == "bfloat16"
    ft = cfg.finetune
    assert (ft.learning_rate, ft.weight_decay, ft.num_epochs, ft.warmup_ratio) == (1e-5, 1e-4, 5, 0.05)
    assert (ft.adam_beta1, ft.adam_beta2, ft.max_length, ft.effective_batch_size) == (0.9, 0.95, 2048, 8)
    assert cfg.harvest.hook == "blocks.14.hook_resid_pre"
    assert cfg.tuned_model == "outputs/qwen05b/finetune/model"


@pytest.mark.parametrize("hardware", ["cpu", "rtx5070ti_16gb", "t4_16gb"])
def test_hardware_profiles_compose(hardware):
    cfg = make_config("+exp=qwen05b", f"hardware={hardware}")
    assert cfg.hardware.name == hardware
    if hardware == "t4_16gb":
        assert cfg.hardware.dtype == "float16"  # T4 has no bf16


@pytest.mark.parametrize("sweep", ["l1_coeff", "k", "token_limits", "layers"])
def test_sweep_files_compose(sweep):
    make_config("+exp=tiny", f"+sweep={sweep}")


def test_debug_group_composes_and_separates_outputs():
    cfg = make_config("+exp=tiny", "+debug=default")
    assert cfg.exp_name == "debug"


def test_typo_in_override_fails():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        make_config("+exp=qwen05b", "train.l1_cof=2")


def test_wrong_type_fails():
    with pytest.raises(Exception, match="l1_coeff"):
        make_config("train.l1_coeff=lots")


@pytest.mark.parametrize("override, key", [
    ("train.variant=topk", "train.variant"),
    ("hardware.dtype=float8", "hardware.dtype"),
    ("wandb.mode=maybe", "wandb.mode"),
    ("analyze.shared_min=0.9", "analyze"),
])
def test_invalid_choice_names_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        make_config(override)


def _run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=app_env())


def test_cli_prints_the_resolved_paper_config_offline():
    result = _run_app("reasondiff.train", "--cfg", "job", "+exp=qwen05b")
    assert result.returncode == 0, result.stderr
    assert "l1_coeff: 2.0" in result.stdout and "blocks.14.hook_resid_pre" in result.stdout


def test_cli_typo_fails_with_a_clear_line():
    result = _run_app("reasondiff.train", "+exp=qwen05b", "train.l1_cof=2")
    assert result.returncode != 0
    assert "l1_cof" in result.stderr


def test_cli_missing_local_model_path_fails_with_one_line(tmp_path):
    missing = tmp_path / "no_such_model"
    result = _run_app("reasondiff.finetune", "+exp=qwen05b", f"model.path={missing}", f"output_root={tmp_path}")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "model.path" in error_lines[0] and str(missing) in error_lines[0]


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_picks_bf16_on_cpu_only_where_the_cpu_has_it(monkeypatch, native_bf16, expected):
    from reasondiff.config import common

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native_bf16)
    cfg = make_config("hardware.dtype=auto", "hardware.device=cpu", config_name="finetune")
    assert cfg.hardware.dtype == expected  # resolved at start-up: manifests record the real dtype


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, caplog):
    import torch

    from reasondiff.config import common
    from reasondiff.lm import models

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        models.warn_if_slow_dtype("bfloat16", torch.device("cpu"))
    assert "100x slower" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        models.warn_if_slow_dtype("float32", torch.device("cpu"))
    assert caplog.text == ""


def test_every_config_key_has_a_one_line_description_for_help():
    """--help prints the docstring under each dataclass field; a key without one shows no description."""
    from reasondiff.app.cli import schema_entries

    undocumented = [key for key, _, doc in schema_entries(make_config("+exp=tiny")) if not doc]
    assert not undocumented, undocumented
