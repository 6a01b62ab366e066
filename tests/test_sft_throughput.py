"""benchmarks/sft_throughput.py compares like with like: the plain loop's optimizer is the one the
stage's trainer builds, both arms see the same tokens in the same batches, and one optimizer step
gives the same loss and the same (clipped) gradients in the plain loop, the stage's trainer and its
padding-free variant; the round-robin runs one arm at a time in the announced order."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import threading
import time
from pathlib import Path

import pytest
import torch

from reasondiff.config import ReasoningFormat
from reasondiff.finetune.data import build_sft_examples, to_dataset

REPO = Path(__file__).resolve().parent.parent
MAX_LENGTH, MICRO, ACCUMULATION = 96, 2, 2


@pytest.fixture(scope="module")
def sft():
    spec = importlib.util.spec_from_file_location("sft_throughput", REPO / "benchmarks" / "sft_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(sft, tiny_tokenizer, tmp_path):
    """The benchmark's config and rows of mixed lengths (so the padded batches pad) on the tiny tokenizer."""
    from reasondiff.finetune.run import set_pad_token

    tokenizer = copy.deepcopy(tiny_tokenizer)
    cfg = sft.bench_config(MAX_LENGTH, MICRO, "float32", "cpu", False)
    set_pad_token(tokenizer, cfg.finetune.pad_token)
    examples, _ = build_sft_examples(sft.make_rows(None, 24), tokenizer, cfg.finetune, ReasoningFormat())
    examples = examples[:2 * MICRO * ACCUMULATION]
    assert len({len(e) for e in examples}) > 2  # mixed lengths: padding happens
    return cfg, tokenizer, examples


def _trainer(sft, cfg, model, tokenizer, examples, tmp_path, *, padding_free=False, steps=1, callbacks=()):
    from reasondiff.finetune.run import sft_trainer_class

    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, padding_free=padding_free))
    args = sft.sft_args(cfg, tmp_path / f"pf{padding_free}", accumulation=ACCUMULATION, device_type="cpu",
                        rounds=steps)
    return sft_trainer_class(cfg.finetune.loss_head, "cpu")(
        model=model, args=args, train_dataset=to_dataset(examples, MAX_LENGTH if padding_free else None),
        processing_class=tokenizer, callbacks=list(callbacks))


def test_plain_optimizer_is_the_one_the_stage_trainer_builds(sft, setup, tiny_model, tmp_path):
    cfg, tokenizer, examples = setup
    trainer = _trainer(sft, cfg, tiny_model, tokenizer, examples, tmp_path)
    theirs = trainer.create_optimizer()
    ours = sft.stage_optimizer(tiny_model, trainer.args)
    assert type(ours) is type(theirs) is torch.optim.AdamW
    assert ours.defaults["fused"] is True  # transformers' default optim adamw_torch_fused, not torch's for-loop

    def groups(optimizer):
        return sorted((group["weight_decay"], sorted(id(p) for p in group["params"])) for group in optimizer.param_groups)

    def settings(group):
        return {k: v for k, v in group.items() if k not in ("params", "initial_lr")}

    assert groups(ours) == groups(theirs)  # the same split into decayed and undecayed parameters
    assert {tuple(sorted(settings(g).items())) for g in ours.param_groups} == \
        {tuple(sorted(settings(g).items())) for g in theirs.param_groups}
    assert ours.defaults["lr"] == cfg.finetune.learning_rate
    assert ours.defaults["betas"] == (cfg.finetune.adam_beta1, cfg.finetune.adam_beta2)


def test_arms_see_the_same_batches(sft, setup, tiny_model, tmp_path):
    cfg, tokenizer, examples = setup
    trainer = _trainer(sft, cfg, tiny_model, tokenizer, examples, tmp_path, steps=2)
    theirs = list(trainer.get_train_dataloader())
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    ours = [sft.plain_collate(rows[i:i + MICRO], tokenizer.pad_token_id) for i in range(0, len(rows), MICRO)]
    assert len(theirs) == len(ours) == 2 * ACCUMULATION
    for mine, yours in zip(ours, theirs, strict=True):  # the sequential sampler keeps the rows' order
        assert set(mine) == {k for k in yours if k in mine} == {"input_ids", "attention_mask", "labels"}
        for key in mine:
            assert torch.equal(mine[key], yours[key]), key
    assert any(int((b["attention_mask"] == 0).sum()) for b in ours)


class _Recorder:
    """Stands in for the optimizer: keeps the gradients it was asked to apply (after clipping)."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = [p.grad.detach().clone() for p in self.model.parameters()]

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.mark.parametrize("padding_free", [False, True])
def test_one_step_gives_the_stage_trainers_loss_and_gradients(sft, setup, tiny_model, tmp_path, padding_free):
    """The plain loop's step = the trainer's: the same mean NLL over the step's assistant tokens (across
    gradient accumulation), the same gradients after the same clipping, the same tokens counted."""
    from transformers import TrainerCallback

    cfg, tokenizer, examples = setup
    per_step = MICRO * ACCUMULATION
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples[:per_step]]
    plain_model = copy.deepcopy(tiny_model)
    recorder = _Recorder(plain_model)
    micro = [sft.plain_collate(rows[i:i + MICRO], tokenizer.pad_token_id) for i in range(0, per_step, MICRO)]
    plain_loss = sft.plain_step(plain_model, recorder, micro, max_grad_norm=1.0, autocast_dtype=None)
    plain_tokens = sum(int(b["attention_mask"].sum()) for b in micro)

    trainer_grads = []

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            trainer_grads.extend(p.grad.detach().clone() for p in model.parameters())

    trainer = _trainer(sft, cfg, tiny_model, tokenizer, examples[:per_step], tmp_path, padding_free=padding_free,
                       callbacks=[Capture()])
    trainer.train()
    assert trainer.args.max_grad_norm == 1.0
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["grad_norm"] > 1.0  # the clip is active, so it is compared too
    assert abs(logged["loss"] - plain_loss) <= 1e-4 * abs(plain_loss)  # the trainer logs it rounded to 4 digits
    assert trainer._total_train_tokens == plain_tokens
    assert len(trainer_grads) == len(recorder.grads)
    for ours, theirs in zip(recorder.grads, trainer_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)


def test_round_robin_runs_one_arm_at_a_time_in_abba_order(sft):
    running, events, lock = [], [], threading.Lock()

    def arm(turns, name):
        for _ in range(3):
            turns.begin(name)
            with lock:
                running.append(name)
                assert running == [name]
            time.sleep(0.002)
            with lock:
                running.remove(name)
                events.append(name)
            turns.end(name)
            turns.pass_on()
        return [10, 10, 10]

    turns, tokens = sft.run_arms({"plain": arm, "b": arm, "c": arm}, rounds=3)
    assert events == ["plain", "b", "c", "c", "b", "plain", "plain", "b", "c"]
    assert all(len(seconds) == 3 for seconds in turns.seconds.values())
    summary = sft.summarize(turns, tokens, warmup=1)
    assert list(summary) == ["plain", "b", "c"] and summary["plain"]["over_plain"] == 1.0

    tokens["b"] = [10, 10, 11]
    with pytest.raises(RuntimeError, match="other tokens"):
        sft.summarize(turns, tokens, warmup=1)

    def broken(turns, name):
        turns.begin(name)
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # a failing arm stops the others instead of hanging them
        sft.run_arms({"plain": arm, "b": broken}, rounds=3)


def test_benchmark_arms_run_round_robin_on_the_same_tokens(sft, setup, tiny_model, tmp_path):
    """Every arm of one row set, trainers included, through the round-robin: each counts the same tokens."""
    cfg, tokenizer, examples = setup
    arms = sft.benchmark_arms(tiny_model, tokenizer, examples, cfg, accumulation=ACCUMULATION, rounds=2,
                              workdir=tmp_path, device_type="cpu", padding_free=True, trl_head=True, old_plain=True)
    assert list(arms) == ["plain", "stage", "stage_padding_free", "trl_chunked_head", "plain_torch_defaults"]
    turns, tokens = sft.run_arms(arms, rounds=2)
    summary = sft.summarize(turns, tokens, warmup=1)  # raises when an arm saw other tokens
    assert {r["tokens"] for r in summary.values()} == {sum(len(e) for e in examples[MICRO * ACCUMULATION:])}
