"""Stage 1 — SFT of the base model on s1K-1.1 with trl's SFTTrainer (paper: Qwen2.5-0.5B-Instruct).

Recipe: validate and tokenize the rows (reasondiff.finetune.data), report overlong rows, check the
profile fits in memory, train with the experiment's hyper-parameters (resuming the last complete
trainer checkpoint of a killed run), then write `model/` atomically with the tokenizer and chat
template, the loss curve (Fig. 2) and a few greedy samples that show whether the layout was learned.

Multi-GPU: `accelerate launch -m reasondiff.finetune ...` runs the same code data-parallel; the
gradient accumulation is divided by the number of processes so the effective batch stays the
experiment's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasondiff.app.stage import deferred_interrupts
from reasondiff.config import Config, HardwareConfig, ReasoningFormat
from reasondiff.core import artifacts, distributed
from reasondiff.core.errors import UserError
from reasondiff.core.progress import Progress, on_terminal
from reasondiff.core.tracking import MetricsLogger, require_finite, truncate_metrics
from reasondiff.finetune.data import (
    build_sft_examples,
    load_s1k_split,
    summarize_report,
    to_dataset,
)
from reasondiff.finetune.loss_curve import loss_points, plot_loss_curve
from reasondiff.lm.s1_layout import answer_start, thinking_start
from reasondiff.lm.sft_example import SFTExample

log = logging.getLogger(__name__)

PREPARED_FILES = ("length_report.json",)
"""Written before training: a run that failed with only it holds no work."""

CHECKPOINTS = "checkpoints"
MODEL = "model"
LENGTH_REPORT = "length_report.json"
LOSS_CURVE = "loss_curve.png"
SAMPLES = "samples.json"


# --- pure helpers -----------------------------------------------------------------------------------

def gradient_accumulation(effective_batch_size: int, micro_batch: int, world_size: int = 1) -> int:
    """Accumulation steps so that micro_batch x steps x processes == the experiment's effective batch."""
    per_step = micro_batch * world_size
    if effective_batch_size % per_step:
        raise UserError(f"finetune.effective_batch_size={effective_batch_size} is not a multiple of "
                        f"hardware.finetune_micro_batch={micro_batch} x {world_size} process(es); "
                        "change one of them")
    return effective_batch_size // per_step


def estimate_training_memory_gb(*, n_params: int, n_layers: int, d_model: int, d_ffn: int, seq_len: int,
                                micro_batch: int, gradient_checkpointing: bool, mixed_precision: bool,
                                overhead_gb: float = 1.0) -> float:
    """Rough peak memory of full fine-tuning with AdamW (fp32 master weights), in GB.

    16 bytes/param (weights, grads, two Adam moments) + 2 with autocast's half-precision weight
    copies; activations of a decoder layer ~ (8 d_model + 4 d_ffn) values per token (norm inputs,
    q/k/v, attention output, MLP gate/up/activation) — all layers kept, or with checkpointing only
    the layer inputs plus one layer's recomputation. trl's fused LM head never materialises the
    full [tokens, vocab] logits, so they fall in the fixed overhead (allocator, CUDA context).
    """
    act_bytes = 2 if mixed_precision else 4
    tokens = seq_len * micro_batch
    per_layer = (8 * d_model + 4 * d_ffn) * act_bytes * tokens
    if gradient_checkpointing:
        activations = n_layers * d_model * act_bytes * tokens + per_layer
    else:
        activations = n_layers * per_layer
    states = n_params * (16 + (2 if mixed_precision else 0))
    return (states + activations) / 1e9 + overhead_gb


def tokens_seen(checkpoint: Path) -> int:
    """The training tokens counted up to `checkpoint` (its last logged `num_tokens`; 0 when none)."""
    history = json.loads((checkpoint / "trainer_state.json").read_text()).get("log_history", [])
    counts = [entry["num_tokens"] for entry in history if "num_tokens" in entry and "loss" in entry]
    return int(counts[-1]) if counts else 0


def checkpoint_problem(path: Path) -> str | None:
    """Why a trainer checkpoint cannot be resumed (None when it can).

    HF writes a checkpoint in place (no staging dir) and `trainer_state.json` last: without it, or
    with it torn (a kill or a full disk mid-write), the checkpoint is incomplete."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{state.name} is torn ({err})"
    return None


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The newest `checkpoint-N` the trainer finished writing; incomplete ones (killed mid-save, a
    torn trainer_state.json) are removed, so the resume never dies on them."""
    if not directory.is_dir():
        return None
    found = sorted((p for p in directory.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
                    and p.name.split("-", 1)[1].isdigit()), key=lambda p: int(p.name.split("-", 1)[1]))
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("removing incomplete trainer checkpoint %s (%s: killed while saving)", path, problem)
        shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def first_non_finite(model) -> str | None:
    """Name of the first parameter holding NaN/Inf (None when all are finite)."""
    import torch

    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


def precision_flags(hardware: HardwareConfig, device_type: str) -> dict[str, bool]:
    """Mixed precision from the hardware profile: fp32 master weights, bf16/fp16 autocast."""
    if hardware.dtype == "float16" and device_type == "cpu":
        raise UserError("hardware.dtype=float16 needs a GPU (CPU autocast has no fp16 training): "
                        "use hardware=cpu (float32) or hardware.dtype=bfloat16")
    return {"bf16": hardware.dtype == "bfloat16", "fp16": hardware.dtype == "float16"}


def verify_finished(cfg: Config, directory: Path) -> str | None:
    """A finished fine-tune made before finetune.holdout trained on every row; when the config now
    holds rows out, its model is not what the config says, so the stage is redone (with the split)."""
    holdout = cfg.finetune.holdout
    if holdout.n_rows == 0 or (holdout.n_rows is None and holdout.fraction == 0):
        return None
    manifest = directory / artifacts.MANIFEST
    if manifest.is_file() and not (artifacts.read_json(manifest).get("outputs") or {}).get("holdout"):
        return ("it was made before finetune.holdout and trained on every row, while finetune.holdout now holds "
                "rows out (finetune.holdout.n_rows=0 keeps it as it is)")
    return None


# --- trainer callbacks ------------------------------------------------------------------------------

def _callbacks_module():
    from transformers import TrainerCallback

    class NonFiniteLossGuard(TrainerCallback):
        """Stop on a NaN/Inf loss or gradient norm (HF would filter it out of the logs and go on).
        The loss is only seen on logging steps, so before every save (and at the last step) the
        weights themselves are checked: no checkpoint and no model/ ever holds NaN/Inf."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                if logs and key in logs:
                    require_finite(f"SFT {key}", float(logs[key]), state.global_step)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is not None and (control.should_save or state.global_step >= state.max_steps):
                bad = first_non_finite(model)
                if bad is not None:
                    raise FloatingPointError(f"SFT weight {bad} is not finite at step {state.global_step} "
                                             "(caught before it could be saved)")

    class MetricsToCsv(TrainerCallback):
        """Training logs -> metrics.csv, one row per logging step."""

        def __init__(self, logger: MetricsLogger):
            self.logger = logger

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            row = {k: v for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            row["epoch"] = state.epoch
            self.logger.log(row, step=state.global_step)

    class GracefulStop(TrainerCallback):
        """First SIGTERM/SIGINT: finish the optimizer step, save a checkpoint there, stop."""

        def __init__(self):
            self.requested = False

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True

    class ProgressToLog(TrainerCallback):
        """Where stderr is not a terminal (nohup, Slurm) the trainer's tqdm bar is off (`disable_tqdm`):
        the optimizer steps as log lines instead (reasondiff.core.progress). Opened at the first step,
        once a resumed run's trainer state is loaded (on_train_begin comes before that)."""

        def __init__(self):
            self.progress = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.progress is None and args.disable_tqdm:
                self.progress = Progress(total=state.max_steps, initial=state.global_step, desc="finetune",
                                         unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(state.global_step - self.progress.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()

    return NonFiniteLossGuard, MetricsToCsv, GracefulStop, ProgressToLog


# --- model and tokenizer ----------------------------------------------------------------------------

def sft_trainer_class(loss_head: str, device_type: str):
    """trl's SFTTrainer, or (finetune.loss_head = model, or auto on CPU) one whose loss is the model's
    own forward loss (`transformers.Trainer.compute_loss`): the same mean NLL over the labelled
    tokens (`num_items_in_batch` across accumulation included) without trl's chunked LM head, whose
    backward recomputes the logits (an extra LM-head GEMM per step) and which, without Triton,
    scores every position. tests/test_finetune_padding_free.py checks the two losses are equal."""
    from trl import SFTTrainer

    if loss_head == "trl" or (loss_head == "auto" and device_type != "cpu"):
        return SFTTrainer
    return _model_loss_sft_trainer()


@functools.cache
def _model_loss_sft_trainer():
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.model.training:  # trl's num_tokens log (its compute_loss counts them; resume reads it)
                tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(tokens).sum()) // self._tp_size
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            inputs = {**inputs, "use_cache": False}
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ModelLossSFTTrainer


def sft_arguments(cfg: Config, output_dir: Path, *, accumulation: int, device_type: str, **overrides: Any):
    """The stage trainer's `SFTConfig`: the experiment's hyper-parameters, the hardware's micro batch and
    precision, trl's and transformers' defaults for the rest (AdamW `adamw_torch_fused`, grad-norm clip
    1.0). benchmarks/sft_throughput.py times the trainer built from it (`overrides`: its own step
    count, no checkpoints), so the benchmark measures what the stage runs."""
    from trl import SFTConfig

    ft = cfg.finetune
    keys = dict(
        output_dir=str(output_dir),
        # padding-free: rows are cut in to_dataset (trl refuses a max_length it would not enforce)
        max_length=None if ft.padding_free else ft.max_length,
        packing=False,
        padding_free=ft.padding_free,
        learning_rate=ft.learning_rate,
        weight_decay=ft.weight_decay,
        num_train_epochs=ft.num_epochs,
        max_steps=ft.max_steps,
        warmup_steps=ft.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=ft.lr_scheduler,
        adam_beta1=ft.adam_beta1,
        adam_beta2=ft.adam_beta2,
        per_device_train_batch_size=cfg.hardware.finetune_micro_batch,
        gradient_accumulation_steps=accumulation,
        activation_checkpointing=cfg.hardware.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.hardware.gradient_checkpointing else None,
        use_cpu=device_type == "cpu",
        **precision_flags(cfg.hardware, device_type),
        logging_steps=ft.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=ft.save_steps,
        save_total_limit=ft.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.hardware.dataloader_workers,
        ddp_find_unused_parameters=False,  # torchrun: every parameter gets a gradient (no extra autograd walk)
        report_to=["wandb"] if cfg.wandb.mode != "disabled" else "none",
        run_name=f"{cfg.exp_name}-finetune",
        disable_tqdm=not on_terminal(sys.stderr),  # else tqdm's frames fill the log: ProgressToLog writes lines
    )
    return SFTConfig(**{**keys, **overrides})


def set_pad_token(tokenizer, pad_token: str) -> None:
    """Padding must not be EOS: collators that mask padding would also mask the turn's end token."""
    if pad_token not in tokenizer.get_vocab():
        raise UserError(f"finetune.pad_token={pad_token!r} is not in the tokenizer's vocabulary")
    if pad_token == tokenizer.eos_token:
        raise UserError(f"finetune.pad_token={pad_token!r} is the EOS token; the model would never learn to stop")
    tokenizer.pad_token = pad_token


def save_dtype_name(setting: str, base_config) -> str:
    if setting != "auto":
        return setting
    dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def save_tuned_model(trainer, tokenizer, directory: Path, dtype_name: str) -> None:
    """`model/` as an HF dir (weights, config, tokenizer, chat template), swapped in atomically."""
    import torch

    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model)  # collective under FSDP/ZeRO-3: every rank calls it
    if accelerator.is_main_process:
        dtype = getattr(torch, dtype_name)
        model = accelerator.unwrap_model(trainer.model)
        model.config.dtype = dtype_name
        model.config.use_cache = True
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        with artifacts.atomic_dir(directory) as staging:
            model.save_pretrained(staging, state_dict={k: v.to(dtype) for k, v in state_dict.items()})
            tokenizer.save_pretrained(staging)
            artifacts.mark_complete(staging)
    accelerator.wait_for_everyone()


def held_out_questions(cfg: Config, n: int) -> list[dict[str, Any]]:
    """`n` questions for samples.json from the bench's tasks (held out from SFT), round-robin over
    `bench.tasks`, each as the bench's user turn: what the tuned model will be scored on.

    Loaded before training, so an unreadable bench dataset stops the run before it starts."""
    from reasondiff.lm.data_sources import load_rows

    tasks = cfg.bench.tasks
    rows: dict[str, list[dict[str, Any]]] = {}
    for first, task in enumerate(tasks[:n]):
        data = cfg.bench.data[task]
        dataset = load_rows(data.path, split=data.split, config_name=data.config_name,
                            config_key=f"bench.data.{task}.path (finetune samples the bench's questions)")
        rows[task] = [dict(dataset[i]) for i in range(min(len(range(first, n, len(tasks))), len(dataset)))]
    out = []
    for index in range(n):
        task, position = tasks[index % len(tasks)], index // len(tasks)
        if position < len(rows[task]):
            row = rows[task][position]
            out.append({"task": task, "question": cfg.bench.prompts.user_turn(task, row), "reference": row.get("answer")})
    return out


def layout_samples(model, tokenizer, questions: Sequence[str], fmt: ReasoningFormat,
                   max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy answers to a few questions and whether each follows the s1 think/answer layout."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out = []
    for question in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        text = tokenizer.decode(new, skip_special_tokens=False)
        out.append({
            "question": question,
            "generation": text,
            "starts_with_think": text.startswith(thinking_start(fmt)),
            "has_answer": answer_start(fmt) in text,
            "stopped": tokenizer.eos_token_id in new,
        })
    return out


# --- the stage --------------------------------------------------------------------------------------

def run(cfg: Config, ctx, *, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune `cfg.model.path` on s1K-1.1 into `ctx.dir/model` (resumes a killed run's checkpoint)."""
    import torch

    from reasondiff.lm.models import load_model, load_tokenizer, resolve_device

    ft = cfg.finetune
    device = resolve_device(cfg.hardware)
    # under torchrun trl/accelerate run DDP (one process per GPU): the configured effective batch is
    # micro batch x accumulation x world size, so the accumulation shrinks as ranks are added
    world_size = distributed.world_size()
    main = distributed.is_main_process()
    accumulation = gradient_accumulation(ft.effective_batch_size, cfg.hardware.finetune_micro_batch, world_size)
    precision = precision_flags(cfg.hardware, device.type)
    ctx.inputs.update({"base_model": cfg.model.path, "dataset": ft.dataset, "split": ft.split,
                       "trace_source": ft.trace_source})

    tokenizer = load_tokenizer(cfg.model.path, revision=cfg.model.revision)
    set_pad_token(tokenizer, ft.pad_token)
    all_rows, holdout = load_s1k_split(ft)
    rows = [all_rows[i] for i in holdout.trained]
    log.info("finetune: training on %d rows of %s, %d held out (finetune.holdout; recorded in the manifest)",
             len(rows), ft.dataset, len(holdout.heldout))
    sample_questions = held_out_questions(cfg, ft.sample_generations) if ft.sample_generations else []
    examples, report = build_sft_examples(rows, tokenizer, ft, cfg.format)
    if main:
        artifacts.write_json(ctx.dir / LENGTH_REPORT, report)
    log.info(summarize_report(report))
    if report["n_overlong"] and ft.overlong_policy == "truncate":
        log.warning("%d rows are cut at max_length=%d and %d lose their whole answer; "
                    "finetune.overlong_policy=keep_answer keeps answers (see %s)", report["n_overlong"],
                    ft.max_length, report["outcome"]["n_answer_fully_cut"], LENGTH_REPORT)

    # fp32 master weights whatever the profile's dtype: bf16 weights would round lr=1e-5 updates away.
    model, _ = load_model(cfg.model.path, dataclasses.replace(cfg.hardware, dtype="float32"),
                          revision=cfg.model.revision, device=torch.device("cpu"),
                          trust_remote_code=cfg.model.trust_remote_code)
    # the checkpoint's own dtype: the loaded config reports the fp32 we asked for
    from transformers import AutoConfig

    save_dtype = save_dtype_name(ft.save_dtype, AutoConfig.from_pretrained(cfg.model.path, revision=cfg.model.revision))
    warn_if_too_big(model, cfg.hardware, ft.max_length, precision)

    # settings of a resumed run were checked by the stage runner (reasondiff.core.fingerprint)
    checkpoints = ctx.dir / CHECKPOINTS
    resume = last_complete_checkpoint(checkpoints)
    if main:
        truncate_metrics(ctx.dir / "metrics.csv", checkpoint_step(resume) if resume else 0)
    if resume:
        log.info("resuming from %s", resume)
    ctx.inputs["resumed_from"] = str(resume) if resume else None

    NonFiniteLossGuard, MetricsToCsv, GracefulStop, ProgressToLog = _callbacks_module()
    stopper = GracefulStop()
    args = sft_arguments(cfg, checkpoints, accumulation=accumulation, device_type=device.type)
    trainer = sft_trainer_class(ft.loss_head, device.type)(
        model=model,
        args=args,
        train_dataset=to_dataset(examples, ft.max_length if ft.padding_free else None),
        processing_class=tokenizer,
        # metrics.csv is written here, not through ctx.metrics, so that with W&B on the trainer's own
        # WandbCallback is the only writer to the run (two writers fight over W&B's step counter).
        # the guard after the stopper: a save the stopper asks for is checked too
        callbacks=[MetricsToCsv(MetricsLogger(ctx.dir) if main else ctx.metrics), stopper, NonFiniteLossGuard(),
                   ProgressToLog(), *callbacks],
    )
    if resume and hasattr(trainer, "_total_train_tokens"):
        # trl counts num_tokens in the trainer object, not in the checkpoint: a resume restarted it at 0
        trainer._total_train_tokens = tokens_seen(resume)
    try:
        with deferred_interrupts(stopper):
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except FloatingPointError as err:
        good = last_complete_checkpoint(checkpoints)
        kept = f"the last good checkpoint {good} is kept" if good else "no checkpoint was saved yet"
        raise UserError(f"{err}; {kept} — lower finetune.learning_rate or check finetune.dataset, then re-run "
                        "(overwrite=true to start over)") from err
    if stopper.requested:
        raise KeyboardInterrupt(f"stopped at step {trainer.state.global_step}; a checkpoint was saved in "
                                f"{checkpoints} and re-running the same command resumes from it")

    steps, losses = loss_points(trainer.state.log_history)
    if trainer.is_world_process_zero() and steps:
        plot_loss_curve(steps, losses, ctx.dir / LOSS_CURVE,
                        title=f"SFT on s1K-1.1: {cfg.model.name} ({cfg.exp_name})")
    save_tuned_model(trainer, tokenizer, ctx.dir / MODEL, save_dtype)

    samples = []
    if ft.sample_generations and trainer.is_world_process_zero():
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        samples = layout_samples(unwrapped, tokenizer, [q["question"] for q in sample_questions], cfg.format,
                                 ft.sample_max_new_tokens)
        samples = [{**question, **sample} for question, sample in zip(sample_questions, samples, strict=True)]
        artifacts.write_json(ctx.dir / SAMPLES, samples)
    if ft.push_to_hub and trainer.is_world_process_zero():
        push(ctx.dir / MODEL, ft.hub_model_id)
    if not ft.keep_checkpoints and trainer.is_world_process_zero():
        shutil.rmtree(checkpoints, ignore_errors=True)

    first, final = _mean(losses[: max(1, len(losses) // 10)]), _mean(losses[-max(1, len(losses) // 10):])
    log.info("SFT: %d steps, loss %s; model in %s", trainer.state.global_step,
             f"{first:.3f} -> {final:.3f}" if losses else "not logged (finetune.logging_steps > steps)", ctx.dir / MODEL)
    return {
        "model": str(ctx.dir / MODEL),
        "loss_curve": str(ctx.dir / LOSS_CURVE),
        "length_report": str(ctx.dir / LENGTH_REPORT),
        "global_step": trainer.state.global_step,
        "train_rows": len(examples),
        "holdout": holdout.to_record(),
        "first_loss": first,
        "final_loss": final,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "gradient_accumulation_steps": accumulation,
        "effective_batch": {"effective_batch_size": ft.effective_batch_size,
                            "micro_batch": cfg.hardware.finetune_micro_batch,
                            "gradient_accumulation_steps": accumulation, "world_size": world_size},
        "save_dtype": save_dtype,
        "layout_rate": _mean([float(s["starts_with_think"] and s["has_answer"]) for s in samples]) if samples else None,
    }


def warn_if_too_big(model, hardware: HardwareConfig, max_length: int, precision: dict[str, bool]) -> float:
    cfg = model.config
    estimate = estimate_training_memory_gb(
        n_params=sum(p.numel() for p in model.parameters()), n_layers=cfg.num_hidden_layers,
        d_model=cfg.hidden_size, d_ffn=getattr(cfg, "intermediate_size", 4 * cfg.hidden_size), seq_len=max_length,
        micro_batch=hardware.finetune_micro_batch, gradient_checkpointing=hardware.gradient_checkpointing,
        mixed_precision=precision["bf16"] or precision["fp16"])
    if estimate > hardware.memory_gb:
        log.warning("SFT needs roughly %.1f GB but hardware.memory_gb=%.0f (hardware=%s): expect an out-of-memory "
                    "error; lower hardware.finetune_micro_batch (gradient accumulation keeps the effective batch), "
                    "enable hardware.gradient_checkpointing or lower finetune.max_length",
                    estimate, hardware.memory_gb, hardware.name)
    else:
        log.info("SFT memory estimate %.1f GB of %.0f GB (hardware=%s)", estimate, hardware.memory_gb, hardware.name)
    return estimate


def push(model_dir: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    from reasondiff.lm.hub import prepare_hub

    if not prepare_hub():
        raise UserError(f"finetune.push_to_hub=true but the Hub is unreachable; the model is in {model_dir}")
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, commit_message="reasondiff: SFT on s1K-1.1")
    log.info("pushed %s to https://huggingface.co/%s", model_dir, repo_id)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


__all__ = ["SFTExample", "estimate_training_memory_gb", "gradient_accumulation", "last_complete_checkpoint",
           "run"]
