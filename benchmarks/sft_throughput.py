"""SFT throughput: trl SFTTrainer (what the finetune stage runs) vs a plain torch training loop.

Arms: `trl` (SFTTrainer with trl's chunked LM-head loss), `trl_model_loss` (the stage's trainer with
finetune.loss_head=auto: on CPU the model's own loss), `trl_padding_free` (with --padding-free),
`plain` (a torch loop).

    .venv/bin/python benchmarks/sft_throughput.py --model /work/qwen05b [--max-length 256] [--steps 3]

Both paths train the same model on the same batches (s1K-layout rows tokenized by
reasondiff.finetune.data, cut to --max-length) with AdamW, fp32 master weights and the hardware's
autocast; tokens/s counts the non-padding tokens of the measured steps (after --warmup steps).
Rows are trimmed (keep_answer) to exactly --max-length so every batch has the same token count.
The projection for the paper's run (5 epochs of s1K-1.1 at max_length 2048, every row filling its
2048 tokens since most traces are longer) divides those tokens by the measured rate: a lower bound
on the time, since attention costs more per token at 2048 than at the measured length.
The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reasondiff.config import FinetuneConfig, ReasoningFormat  # noqa: E402
from reasondiff.finetune.data import build_sft_examples, load_s1k_rows  # noqa: E402

SHARED_SAMPLE = REPO.parent / "shared" / "data" / "s1k_schema_sample.jsonl"
S1K_ROWS, EPOCHS, PAPER_MAX_LENGTH = 1000, 5, 2048


def make_rows(path: Path | None, n: int) -> list[dict]:
    if path is not None and path.exists():
        return load_s1k_rows(FinetuneConfig(dataset=str(path), limit_rows=n))
    from random import Random

    from reasondiff.tiny.data import ProblemSource, s1k_row

    source = ProblemSource(Random(0), set())
    return [s1k_row(source.draw()) for _ in range(n)]


def batches(examples, micro_batch: int, max_length: int, pad_id: int, n: int):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id)
    rows = [{"input_ids": e.input_ids[:max_length], "labels": e.labels[:max_length]} for e in examples]
    out = []
    for i in range(n):
        chunk = [rows[(i * micro_batch + j) % len(rows)] for j in range(micro_batch)]
        out.append(collate(chunk))
    return out


def time_trl(model, tokenizer, examples, args, device, padding_free: bool = False, loss_head: str = "trl") -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig

    from reasondiff.finetune.run import sft_trainer_class

    stamps: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    n_steps = args.warmup + args.steps
    rows = [{"input_ids": e.input_ids[:args.max_length], "labels": e.labels[:args.max_length]} for e in examples]
    rows = [rows[i % len(rows)] for i in range(n_steps * args.micro_batch)]
    tokens = [min(len(r["input_ids"]), args.max_length) for r in rows]
    cfg = SFTConfig(output_dir=str(args.workdir), max_length=None if padding_free else args.max_length,
                    padding_free=padding_free, max_steps=n_steps,
                    per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1,
                    learning_rate=1e-5, weight_decay=1e-4, adam_beta2=0.95, lr_scheduler_type="constant",
                    bf16=args.dtype == "bfloat16", fp16=args.dtype == "float16", use_cpu=device.type == "cpu",
                    activation_checkpointing=args.gradient_checkpointing, save_strategy="no", logging_steps=1,
                    report_to="none", disable_tqdm=True, seed=0, shuffle_dataset=False)
    trainer = sft_trainer_class(loss_head, device.type)(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[Clock()])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    step_times = [stamps[2 * i + 1] - stamps[2 * i] for i in range(n_steps)][args.warmup:]
    measured_tokens = sum(tokens[args.warmup * args.micro_batch:])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del trainer
    gc.collect()
    return {"seconds": sum(step_times), "tokens": measured_tokens, "peak_gib": peak,
            "step_seconds": step_times}


def time_plain(model, examples, tokenizer, args, device) -> dict:
    n_steps = args.warmup + args.steps
    data = batches(examples, args.micro_batch, args.max_length, tokenizer.pad_token_id, n_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    autocast = args.dtype in ("bfloat16", "float16")
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times, measured_tokens = [], 0
    for step, batch in enumerate(data):
        batch = {k: v.to(device) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            step_times.append(time.perf_counter() - start)
            measured_tokens += int(batch["attention_mask"].sum())
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del optimizer
    gc.collect()
    return {"seconds": sum(step_times), "tokens": measured_tokens, "peak_gib": peak, "step_seconds": step_times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF model dir (e.g. /work/qwen05b) or hub id")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per path")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default=None, help="autocast dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-plain", action="store_true", help="only time the trl path")
    parser.add_argument("--loss-head", default="auto", choices=("auto", "trl", "model"),
                        help="finetune.loss_head of the extra trl arms (trl_model_loss, trl_padding_free)")
    parser.add_argument("--padding-free", action="store_true",
                        help="also time trl with padding_free=True (finetune.padding_free): the same rows flattened")
    parser.add_argument("--all-lengths", action="store_true",
                        help="keep rows shorter than --max-length (padding then costs something; token counts "
                             "assume the trainer keeps the rows' order: shuffle_dataset=False, sequential sampler)")
    parser.add_argument("--data", type=Path, default=SHARED_SAMPLE)
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "_bench" / "sft_throughput")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = "<|fim_pad|>"
    cfg = FinetuneConfig(max_length=args.max_length, overlong_policy="keep_answer")
    n_rows = max(8, (args.warmup + args.steps) * args.micro_batch)
    examples, report = build_sft_examples(make_rows(args.data, 4 * n_rows), tokenizer, cfg, ReasoningFormat())
    # full-length rows only (keep_answer trims overlong ones to exactly max_length): every batch then holds
    # the same tokens whatever order the trainer's sampler draws them in
    if not args.all_lengths:
        examples = [e for e in examples if len(e) == args.max_length] or examples
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    n_params = sum(p.numel() for p in model.parameters())

    results = {"trl": time_trl(model, tokenizer, examples, args, device)}
    if args.loss_head != "trl":  # the stage's default on CPU: the model's own loss (finetune.loss_head)
        results["trl_model_loss"] = time_trl(model, tokenizer, examples, args, device, loss_head=args.loss_head)
    if args.padding_free:
        results["trl_padding_free"] = time_trl(model, tokenizer, examples, args, device, padding_free=True,
                                               loss_head=args.loss_head)
    if not args.skip_plain:
        results["plain"] = time_plain(model, examples, tokenizer, args, device)

    paper_tokens = S1K_ROWS * EPOCHS * PAPER_MAX_LENGTH
    figures = {"model": args.model, "n_params": n_params, "device": device.type,
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "threads": torch.get_num_threads(), "dtype": args.dtype, "max_length": args.max_length,
               "micro_batch": args.micro_batch, "gradient_checkpointing": args.gradient_checkpointing,
               "steps": args.steps, "rows_overlong_at_max_length": report["n_overlong"]}
    print(f"\nSFT throughput, {figures['device_name']} ({device.type}, {figures['threads']} threads), "
          f"{n_params / 1e6:.0f}M params, max_length {args.max_length}, micro batch {args.micro_batch}, {args.dtype}")
    print(f"{'path':<18}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'s/step':>9}{'peak GiB':>10}"
          f"{'5 ep s1K@2048 (h)':>19}")
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        hours = paper_tokens / rate / 3600
        figures[f"{name}_tokens_per_s"] = round(rate, 2)
        figures[f"{name}_seconds_per_step"] = round(r["seconds"] / args.steps, 3)
        figures[f"{name}_peak_gib"] = round(r["peak_gib"], 2) if r["peak_gib"] is not None else None
        figures[f"{name}_projected_hours_5_epochs_2048"] = round(hours, 2)
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{name:<18}{r['tokens']:>8}{r['seconds']:>10.2f}{rate:>10.1f}{r['seconds'] / args.steps:>9.2f}"
              f"{peak:>10}{hours:>19.1f}")
    if "plain" in results:
        figures["trl_over_plain_speed"] = round(figures["trl_tokens_per_s"] / figures["plain_tokens_per_s"], 3)
        print(f"trl / plain loop speed: {figures['trl_over_plain_speed']:.2f}x")
        if "trl_model_loss" in results:
            figures["trl_model_loss_over_plain_speed"] = round(
                figures["trl_model_loss_tokens_per_s"] / figures["plain_tokens_per_s"], 3)
            print(f"trl with the model's own loss / plain loop speed: {figures['trl_model_loss_over_plain_speed']:.2f}x")
        if "trl_padding_free" in results:
            figures["trl_padding_free_over_plain_speed"] = round(
                figures["trl_padding_free_tokens_per_s"] / figures["plain_tokens_per_s"], 3)
            print(f"trl padding-free / plain loop speed: {figures['trl_padding_free_over_plain_speed']:.2f}x")
    figures["projected_tokens_5_epochs_2048"] = paper_tokens
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
