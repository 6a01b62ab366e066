"""The finetune stage end to end on the tiny model: outputs, configured length, resume, guards."""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import signal

import pytest
import torch
from conftest import make_config
from safetensors.torch import load_file
from transformers import TrainerCallback

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.finetune.run import (
    _callbacks_module,
    estimate_training_memory_gb,
    gradient_accumulation,
    last_complete_checkpoint,
    run,
    save_dtype_name,
    warn_if_too_big,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls on a shared 2-core box: extra threads only spin; restore for other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(root, model_dir, world, *overrides):
    return make_config(
        "+exp=tiny", f"output_root={root}", f"model.path={model_dir}", "model.build_tiny=false",
        f"finetune.dataset={world}/s1k.jsonl", "finetune.limit_rows=16", "finetune.max_steps=6",
        "finetune.save_steps=2", "finetune.logging_steps=1", "finetune.effective_batch_size=4",
        "hardware.finetune_micro_batch=2", "finetune.sample_generations=0", "finetune.learning_rate=2e-3",
        *(f"bench.data.{task}.path={world}/{task}.jsonl" for task in ("gsm8k", "math500", "boolq")),
        *overrides, config_name="finetune")


def _run(cfg, *callbacks):
    return run_stage(cfg, func=functools.partial(run, callbacks=callbacks))


def _metrics_steps(stage_dir):
    with open(stage_dir / "metrics.csv", newline="") as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


def _metrics_column(stage_dir, column):
    with open(stage_dir / "metrics.csv", newline="") as handle:
        return [float(r[column]) for r in csv.DictReader(handle)]


class _At(TrainerCallback):
    """Does `action` when a given global step begins or ends."""

    def __init__(self, event, step, action, record=None):
        self.event, self.step, self.action, self.record = event, step, action, record

    def on_step_begin(self, args, state, control, **kwargs):
        if self.event == "begin" and state.global_step == self.step:
            self.action()

    def on_step_end(self, args, state, control, **kwargs):
        if self.record is not None:
            self.record.append(state.global_step)
        elif self.event == "end" and state.global_step == self.step:
            self.action()


def _interrupt():
    raise KeyboardInterrupt("test kill")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir, tiny_world):
    """An uninterrupted 6-step run (module-scoped: several tests read its outputs)."""
    root = tmp_path_factory.mktemp("sft_ref")
    cfg = _cfg(root, tiny_model_dir, tiny_world, "finetune.sample_generations=2", "finetune.sample_max_new_tokens=8")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(before)


def test_outputs_are_complete_and_loadable(reference_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = reference_run
    assert artifacts.is_complete(out) and artifacts.is_complete(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.pad_token == "<|fim_pad|>" != tokenizer.eos_token  # s1: pad is not EOS
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "loss_curve.pdf").read_bytes()[:5] == b"%PDF-"  # Fig. 2 as a vector figure too
    report = json.loads((out / "length_report.json").read_text())
    assert report["n_rows"] == 16 and report["max_length"] == 256
    assert not (out / "checkpoints").exists()  # finished: the 7 GB-per-checkpoint optimizer state is gone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["global_step"] == 6 and manifest["outputs"]["gradient_accumulation_steps"] == 2
    samples = json.loads((out / "samples.json").read_text())
    # held-out bench questions in the bench's own prompt, round-robin over bench.tasks, not SFT rows
    bench_rows = [json.loads(line) for line in open(tiny_world_dir(out) / "gsm8k.jsonl")]
    assert [s["task"] for s in samples] == ["gsm8k", "math500"]
    assert samples[0]["question"].startswith(bench_rows[0]["question"]) and "reason step by step" in samples[0]["question"]
    assert samples[0]["reference"] == bench_rows[0]["answer"]
    sft_questions = {json.loads(line)["question"] for line in open(tiny_world_dir(out) / "s1k.jsonl")}
    assert not {s["question"] for s in samples} & sft_questions


def tiny_world_dir(stage_dir):
    """Where the reference run's datasets came from (its resolved config)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    return Path(OmegaConf.load(stage_dir / ".hydra" / "config.yaml").finetune.dataset).parent


def test_loss_falls_and_is_logged_every_step(reference_run):
    rows = _metrics_steps(reference_run)
    assert [step for step, _ in rows] == [1, 2, 3, 4, 5, 6]
    losses = [loss for _, loss in rows]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5  # nats, in six steps


def test_trainer_uses_the_configured_max_length(tmp_path, tiny_model_dir, tiny_world):
    """trl's old `max_seq_length` was silently ignored; the batches must really be cut at max_length."""
    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen["max_length"] = args.max_length
            seen["longest"] = max(batch["input_ids"].shape[1] for batch in train_dataloader)

    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world, "finetune.max_length=40", "finetune.max_steps=1")
    out = _run(cfg, Capture())
    report = json.loads((out / "length_report.json").read_text())
    assert report["n_overlong"] == 16 and report["tokens"]["min"] > 40  # every row is longer ...
    assert seen == {"max_length": 40, "longest": 40}  # ... and every batch is cut exactly there


def test_padding_free_stage_cuts_rows_and_flattens_batches(tmp_path, tiny_model_dir, tiny_world):
    """finetune.padding_free: the stage hands trl flat rows (no attention mask, position ids restarting
    per sequence), each sequence still cut at max_length, and training runs."""
    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            batch = next(iter(train_dataloader))
            seen.update(padding_free=args.padding_free, rows=batch["input_ids"].shape[0],
                        mask="attention_mask" in batch,
                        lengths=torch.diff((batch["position_ids"][0] == 0).nonzero().flatten(),
                                           append=torch.tensor([batch["input_ids"].shape[1]])).tolist())

    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world, "finetune.max_length=40", "finetune.max_steps=1",
               "finetune.padding_free=true")
    out = _run(cfg, Capture())
    assert seen["padding_free"] and seen["rows"] == 1 and not seen["mask"]
    assert len(seen["lengths"]) > 1 and max(seen["lengths"]) == 40  # several sequences, each cut at 40
    assert (out / "model" / "config.json").exists()


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, tiny_world, reference_run):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, _At("end", 3, _interrupt))  # killed after step 3: checkpoint-2 is the last one
    out = cfg.stage_dir("finetune")
    assert not artifacts.is_complete(out)
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-2"

    trained_steps = []
    _run(cfg, _At("end", None, None, record=trained_steps))  # the same command again
    assert trained_steps == [3, 4, 5, 6]  # continued from the checkpoint, not from scratch
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["resumed_from"].endswith("checkpoint-2")
    assert manifest["outputs"]["global_step"] == 6
    assert [step for step, _ in _metrics_steps(out)] == [1, 2, 3, 4, 5, 6]  # step 3 not logged twice
    # num_tokens counts on from the checkpoint (it restarted from 0 after a resume: issue 32.4)
    assert _metrics_column(out, "num_tokens") == _metrics_column(reference_run, "num_tokens")
    resumed = load_file(out / "model" / "model.safetensors")
    reference = load_file(reference_run / "model" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)

    _run(cfg)  # finished: skipped, not retrained
    assert json.loads((out / "manifest.json").read_text())["finished_at"] == manifest["finished_at"]


def test_sigterm_saves_a_checkpoint_at_the_current_step(tmp_path, tiny_model_dir, tiny_world):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world, "finetune.save_steps=100")
    with pytest.raises(KeyboardInterrupt, match="stopped at step 3"):
        _run(cfg, _At("begin", 2, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    out = cfg.stage_dir("finetune")
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-3"
    _run(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["resumed_from"].endswith("checkpoint-3")
    assert manifest["outputs"]["global_step"] == 6


def test_resume_with_other_settings_is_refused_and_loses_nothing(tmp_path, tiny_model_dir, tiny_world):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, _At("end", 3, _interrupt))
    out = cfg.stage_dir("finetune")
    changed = _cfg(tmp_path, tiny_model_dir, tiny_world, "finetune.learning_rate=1e-3")
    with pytest.raises(UserError, match=r"other settings \(finetune.learning_rate=0.002; you asked 0.001\).*overwrite=true"):
        _run(changed)
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-2"  # nothing deleted

    trained_steps = []  # cadence and hardware are not part of the run's identity: it resumes
    _run(_cfg(tmp_path, tiny_model_dir, tiny_world, "finetune.logging_steps=2", "hardware.finetune_micro_batch=1"),
         _At("end", None, None, record=trained_steps))
    assert trained_steps == [3, 4, 5, 6]


def test_incomplete_checkpoint_is_skipped_and_removed(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_non_finite_loss_stops_training():
    guard = _callbacks_module()[0]()

    class State:
        global_step = 7

    guard.on_log(None, State(), None, logs={"loss": 1.5, "grad_norm": 0.3})
    with pytest.raises(FloatingPointError, match="loss is nan at step 7"):
        guard.on_log(None, State(), None, logs={"loss": float("nan")})
    with pytest.raises(FloatingPointError, match="grad_norm is inf"):
        guard.on_log(None, State(), None, logs={"loss": 1.0, "grad_norm": float("inf")})


def test_without_a_terminal_the_optimizer_steps_are_logged_from_the_resumed_step(caplog, monkeypatch):
    from reasondiff.core import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO, logger=progress.__name__)
    to_log = _callbacks_module()[3]

    class Args:
        disable_tqdm = True  # what sft_arguments sets where stderr is not a terminal

    class State:
        global_step, max_steps = 5, 8  # resumed from checkpoint-5

    callback = to_log()
    for _ in range(3):
        callback.on_step_begin(Args(), State(), None)
        State.global_step += 1
        callback.on_step_end(Args(), State(), None)
    callback.on_train_end(Args(), State(), None)
    got = [r.getMessage() for r in caplog.records if r.name == progress.__name__]
    assert [line.split(",")[0] for line in got] == ["finetune: 6/8 steps", "finetune: 7/8 steps", "finetune: 8/8 steps"]
    assert "done in" in got[-1]

    caplog.clear()
    Args.disable_tqdm = False  # on a terminal HF's own bar shows the steps
    State.global_step = 0
    callback = to_log()
    callback.on_step_begin(Args(), State(), None)
    State.global_step += 1
    callback.on_step_end(Args(), State(), None)
    assert not [r for r in caplog.records if r.name == progress.__name__]


def test_gradient_accumulation_makes_up_the_effective_batch():
    paper = make_config("+exp=qwen05b", config_name="finetune")
    assert gradient_accumulation(paper.finetune.effective_batch_size, paper.hardware.finetune_micro_batch) == 4
    t4 = make_config("+exp=qwen05b", "hardware=t4_16gb", config_name="finetune")
    assert gradient_accumulation(t4.finetune.effective_batch_size, t4.hardware.finetune_micro_batch) == 8
    assert gradient_accumulation(8, 2, world_size=2) == 2  # accelerate launch on 2 GPUs
    with pytest.raises(UserError, match="hardware.finetune_micro_batch=3"):
        gradient_accumulation(8, 3)


def test_memory_estimate_separates_fitting_profiles():
    qwen = dict(n_params=494_032_768, n_layers=24, d_model=896, d_ffn=4864, seq_len=2048, micro_batch=2)
    paper = estimate_training_memory_gb(**qwen, gradient_checkpointing=True, mixed_precision=True)
    no_ckpt_fp32 = estimate_training_memory_gb(**qwen, gradient_checkpointing=False, mixed_precision=False)
    assert 9 < paper < 16 < no_ckpt_fp32  # the paper fit on a 16 GB 5070 Ti with checkpointing only
    assert estimate_training_memory_gb(**{**qwen, "micro_batch": 4}, gradient_checkpointing=True,
                                       mixed_precision=True) > paper


def test_a_profile_that_cannot_fit_warns_up_front(tiny_model, caplog):
    cfg = make_config("+exp=tiny", "hardware.memory_gb=0.5", config_name="finetune")
    with caplog.at_level(logging.WARNING, logger="reasondiff.finetune.run"):
        estimate = warn_if_too_big(tiny_model, cfg.hardware, 2048, {"bf16": False, "fp16": False})
    assert estimate > 0.5 and "hardware.memory_gb=0" in caplog.text


def test_saved_dtype_follows_the_base_checkpoint():
    from types import SimpleNamespace

    assert save_dtype_name("auto", SimpleNamespace(dtype=torch.bfloat16)) == "bfloat16"
    assert save_dtype_name("auto", SimpleNamespace(dtype="float16")) == "float16"
    assert save_dtype_name("auto", SimpleNamespace()) == "float32"
    assert save_dtype_name("float32", SimpleNamespace(dtype="bfloat16")) == "float32"
