"""SFT throughput at the same tokens: the finetune stage's trainer vs a plain torch training loop.

    python benchmarks/sft_throughput.py --model /work/qwen05b --threads 2

prints, for each row set, tokens/s of every arm and the ratios of issue 31 goal 2: the stage's
trainer / the plain loop (goal >= 0.95x) and padding-free / the plain loop (goal > 1x where rows
need padding). The last line printed is a JSON object with every figure.

Arms
  plain                 the loop a researcher writes with the stage's settings: the same rows in the
                        same order, padded by a five-line collate, the model's own loss (mean NLL over
                        the assistant tokens of the whole optimizer step, `num_items_in_batch`, as the
                        trainer), gradient accumulation, `clip_grad_norm_` at the stage's max_grad_norm,
                        torch's AdamW with the stage's hyper-parameters and implementation (transformers'
                        default optim `adamw_torch_fused` = `fused=True`; no decay on biases and norms,
                        as Trainer), the hardware's autocast
  stage                 the stage's trainer (`sft_trainer_class(finetune.loss_head)`, on CPU the model's
                        own loss) with the stage's `SFTConfig` (`reasondiff.finetune.run.sft_arguments`)
  stage_padding_free    the same with `finetune.padding_free=true`: each micro batch one flat row
  trl_chunked_head      (--trl-head, CPU only) trl's SFTTrainer with its chunked LM-head loss (the stage's
                        trainer on GPU)
  plain_torch_defaults  (--old-plain) the previous baseline: `torch.optim.AdamW(model.parameters())` with
                        torch's default implementation (a per-tensor for-loop on CPU), no clipping

Fairness. Every arm trains one model and one set of AdamW moments (the shared fused AdamW is handed
to each trainer: tests/test_sft_throughput.py checks it equals the one Trainer builds, and that one
step of `plain`, `stage` and `stage_padding_free` from the same weights sees the same batches and gives
the same loss, token count and clipped gradients). Arms run round-robin,
one optimizer step each in turn, the order reversed every other round, so load, allocator warm-up
and drift hit every arm alike; the first --warmup rounds (trainer construction, first allocations)
are dropped. A turn is timed from the end of the arm's previous optimizer step to the end of this
one, so it includes what the trainer does between steps (logging, fetching and collating the next
batches) and the plain loop's collate. tokens/s counts the non-padding tokens each arm reports for
its own steps (the trainers' `num_tokens`, the plain loop's attention mask); the run stops if the
arms saw different tokens. Each ratio to `plain` is the median of the per-round ratios (paired:
the same round), with their range. The process runs under the stage's glibc mmap threshold
(hardware.malloc_mmap_threshold_kb: every large tensor mmap'ed and returned when freed, so its pages
fault in again on the next allocation); --malloc-mmap-threshold-kb 0 shows what that costs.

Row sets (--sets): `full`, rows trimmed (finetune.overlong_policy=keep_answer) to exactly
--max-length, so no batch pads, at the stage's gradient accumulation; `mixed`, every row up to
--mixed-max-length (s1K traces are long: below ~512 tokens nearly all rows fill max_length), so
padded batches compute pad tokens and padding-free does not, one micro batch per step by default
(--mixed-accumulation) so that a step holds about the tokens of a `full` step. The projection for the
paper's run (5 epochs of s1K-1.1 at max_length 2048, every row filling its 2048 tokens) divides those
tokens by the measured rate: a lower bound on the time, since attention costs more per token at 2048
than at the measured length.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reasondiff.config import Config, FinetuneConfig, HardwareConfig, ReasoningFormat  # noqa: E402
from reasondiff.core import memory  # noqa: E402
from reasondiff.finetune.data import build_sft_examples, load_s1k_rows, to_dataset  # noqa: E402
from reasondiff.lm.sft_example import IGNORE_INDEX  # noqa: E402

SHARED_SAMPLE = REPO.parent / "shared" / "data" / "s1k_schema_sample.jsonl"
S1K_ROWS, EPOCHS, PAPER_MAX_LENGTH = 1000, 5, 2048
PLAIN = "plain"


# --- the plain loop -----------------------------------------------------------------------------------

def plain_collate(rows: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro batch: pad ids, labels -100 (no loss), attention mask 0 on the padding."""
    from torch.nn.utils.rnn import pad_sequence

    ids = [torch.tensor(r["input_ids"]) for r in rows]
    return {"input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_token_id),
            "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True, padding_value=0),
            "labels": pad_sequence([torch.tensor(r["labels"]) for r in rows], batch_first=True,
                                   padding_value=IGNORE_INDEX)}


def plain_adamw(model, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                fused: bool) -> torch.optim.AdamW:
    """torch's AdamW, decay on the matrices only (biases and norm weights, the 1-D parameters, undecayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def stage_optimizer(model, sft_args) -> torch.optim.AdamW:
    """`plain_adamw` with the hyper-parameters and implementation of the stage's `SFTConfig`."""
    if sft_args.optim not in ("adamw_torch", "adamw_torch_fused"):
        raise ValueError(f"the plain loop mirrors torch's AdamW only, not optim={sft_args.optim!r}")
    return plain_adamw(model, lr=sft_args.learning_rate, betas=(sft_args.adam_beta1, sft_args.adam_beta2),
                       eps=sft_args.adam_epsilon, weight_decay=sft_args.weight_decay,
                       fused=sft_args.optim == "adamw_torch_fused")


def plain_step(model, optimizer, micro_batches: Sequence[dict[str, torch.Tensor]], *, max_grad_norm: float,
               autocast_dtype: torch.dtype | None) -> float:
    """One optimizer step over `micro_batches`; returns the step's loss (mean NLL over its assistant tokens)."""
    device = next(model.parameters()).device
    # the mean over every labelled token of the step, not a mean of per-micro-batch means
    n_items = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    model.train()
    total = 0.0
    for batch in micro_batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(**batch, use_cache=False, num_items_in_batch=n_items).loss
        loss.backward()
        total += float(loss.detach())
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


# --- round-robin turns ----------------------------------------------------------------------------------

class Turns:
    """Arms take turns, one optimizer step each, in `order` then reversed (ABBA...), one arm running at
    a time: each arm runs in its own thread and waits for its turn, so a trainer's own loop (which
    cannot be stepped from outside) is interleaved with the others'. A turn's seconds run from the
    moment the arm gets the turn to the end of its optimizer step."""

    def __init__(self, order: Sequence[str], rounds: int):
        self.schedule = [name for r in range(rounds) for name in (order if r % 2 == 0 else order[::-1])]
        self.position = 0
        self.condition = threading.Condition()
        self.failed: str | None = None
        self.seconds: dict[str, list[float]] = {name: [] for name in order}
        self._started: dict[str, float] = {}

    def begin(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.failed or (self.position < len(self.schedule)
                                                            and self.schedule[self.position] == name))
            if self.failed:
                raise RuntimeError(f"arm {self.failed} failed")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._started[name] = time.perf_counter()

    def end(self, name: str) -> None:
        """The arm's optimizer step is done: stop its clock (the turn is passed on by `pass_on`)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds[name].append(time.perf_counter() - self._started.pop(name))

    def pass_on(self) -> None:
        with self.condition:
            self.position += 1
            self.condition.notify_all()

    def fail(self, name: str) -> None:
        with self.condition:
            self.failed = self.failed or name
            self.condition.notify_all()


def run_arms(arms: dict[str, Callable[[Turns, str], list[int]]], rounds: int) -> tuple[Turns, dict[str, list[int]]]:
    """Run every arm in its own thread under one `Turns`; returns the turns and each arm's tokens per step."""
    turns = Turns(list(arms), rounds)
    tokens: dict[str, list[int]] = {}
    errors: dict[str, BaseException] = {}
    threads_seen: dict[str, int] = {}

    def body(name: str, arm) -> None:
        try:
            threads_seen[name] = torch.get_num_threads()
            tokens[name] = arm(turns, name)
        except BaseException as err:  # noqa: BLE001 (re-raised in the main thread)
            errors[name] = err
            turns.fail(name)

    workers = [threading.Thread(target=body, args=(name, arm), name=f"arm-{name}") for name, arm in arms.items()]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:  # the arm that failed first; the others only stopped waiting for it
        name = turns.failed if turns.failed in errors else next(iter(errors))
        raise RuntimeError(f"arm {name} failed: {errors[name]!r}") from errors[name]
    if len(set(threads_seen.values())) > 1:
        raise RuntimeError(f"arms ran with different torch thread counts: {threads_seen}")
    return turns, tokens


def plain_arm(model, rows: Sequence[dict], optimizer, *, micro_batch: int, accumulation: int, pad_token_id: int,
              max_grad_norm: float, autocast_dtype: torch.dtype | None):
    """The plain loop as an arm: `rows` in order, `micro_batch` rows per forward, `accumulation` forwards per step."""
    per_step = micro_batch * accumulation

    def arm(turns: Turns, name: str) -> list[int]:
        tokens = []
        for step in range(len(rows) // per_step):
            turns.begin(name)
            chunk = rows[step * per_step:(step + 1) * per_step]
            micro = [plain_collate(chunk[i:i + micro_batch], pad_token_id) for i in range(0, per_step, micro_batch)]
            plain_step(model, optimizer, micro, max_grad_norm=max_grad_norm, autocast_dtype=autocast_dtype)
            turns.end(name)
            tokens.append(sum(int(b["attention_mask"].sum()) for b in micro))
            turns.pass_on()
        return tokens

    return arm


def trainer_arm(make_trainer: Callable[[list], object]):
    """A trainer as an arm: its own `train()`, paused at the end of every optimizer step until its next
    turn. Tokens per step are the trainer's own `num_tokens` count (non-padding tokens)."""
    from transformers import TrainerCallback

    def arm(turns: Turns, name: str) -> list[int]:
        tokens: list[int] = []
        seen = [0]
        holder: list = []

        class TakeTurns(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                turns.end(name)
                total = holder[0]._total_train_tokens
                tokens.append(total - seen[0])
                seen[0] = total
                if state.global_step < state.max_steps:  # the last turn is passed on once train() returns
                    turns.pass_on()
                    turns.begin(name)

        turns.begin(name)
        try:
            trainer = make_trainer([TakeTurns()])
            holder.append(trainer)
            trainer.train()
        finally:
            turns.pass_on()
        return tokens

    return arm


# --- the benchmark ----------------------------------------------------------------------------------------

def make_rows(path: Path | None, n: int) -> list[dict]:
    if path is not None and path.exists():
        return load_s1k_rows(FinetuneConfig(dataset=str(path), limit_rows=n))
    from random import Random

    from reasondiff.tiny.data import ProblemSource, s1k_row

    source = ProblemSource(Random(0), set())
    return [s1k_row(source.draw()) for _ in range(n)]


def bench_config(max_length: int, micro_batch: int, dtype: str, device_type: str,
                 gradient_checkpointing: bool) -> Config:
    """The stage's config for the benchmark: defaults (the paper's hyper-parameters and effective batch),
    the measured max_length and micro batch, and a constant learning rate (the schedule costs nothing
    per step; constant keeps the plain loop's update the trainer's)."""
    cfg = Config()
    return dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, max_length=max_length, overlong_policy="keep_answer",
                                          lr_scheduler="constant", warmup_ratio=0.0),
        hardware=dataclasses.replace(cfg.hardware, device=device_type, dtype=dtype, finetune_micro_batch=micro_batch,
                                     gradient_checkpointing=gradient_checkpointing))


def benchmark_arms(model, tokenizer, examples, cfg: Config, *, accumulation: int, rounds: int, workdir: Path,
                   device_type: str, padding_free: bool, trl_head: bool, old_plain: bool):
    """The arms of one row set, ready for `run_arms` (built lazily: each trainer is made in its first turn)."""
    from reasondiff.finetune.run import sft_trainer_class

    micro = cfg.hardware.finetune_micro_batch
    n_rows = rounds * micro * accumulation
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    rows = [rows[i % len(rows)] for i in range(n_rows)]
    ordered = [examples[i % len(examples)] for i in range(n_rows)]
    args = sft_args(cfg, workdir / "stage", accumulation=accumulation, device_type=device_type, rounds=rounds)
    optimizer = stage_optimizer(model, args)
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.hardware.dtype)

    def trainer(loss_head: str, padding_free_rows: bool, name: str):
        ft = dataclasses.replace(cfg.finetune, padding_free=padding_free_rows, loss_head=loss_head)
        arm_cfg = dataclasses.replace(cfg, finetune=ft)
        arm_args = sft_args(arm_cfg, workdir / name, accumulation=accumulation, device_type=device_type, rounds=rounds)
        dataset = to_dataset(ordered, ft.max_length if padding_free_rows else None)
        return trainer_arm(lambda callbacks: sft_trainer_class(loss_head, device_type)(
            model=model, args=arm_args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
            optimizers=(optimizer, None)))

    arms = {PLAIN: plain_arm(model, rows, optimizer, micro_batch=micro, accumulation=accumulation,
                             pad_token_id=tokenizer.pad_token_id, max_grad_norm=args.max_grad_norm,
                             autocast_dtype=autocast_dtype),
            "stage": trainer(cfg.finetune.loss_head, False, "stage")}
    if padding_free:
        arms["stage_padding_free"] = trainer(cfg.finetune.loss_head, True, "stage_padding_free")
    if trl_head and device_type == "cpu":
        arms["trl_chunked_head"] = trainer("trl", False, "trl_chunked_head")
    if old_plain:
        # the previous baseline: torch's defaults (on CPU the per-tensor for-loop AdamW), no clipping,
        # over the same moment tensors as the shared optimizer (no second copy of the Adam state)
        defaults = torch.optim.AdamW(model.parameters(), lr=args.learning_rate,
                                     betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)
        defaults.state = optimizer.state
        arms["plain_torch_defaults"] = plain_arm(model, rows, defaults, micro_batch=micro, accumulation=accumulation,
                                                 pad_token_id=tokenizer.pad_token_id, max_grad_norm=0.0,
                                                 autocast_dtype=autocast_dtype)
    return arms


def sft_args(cfg: Config, output_dir: Path, *, accumulation: int, device_type: str, rounds: int):
    """The stage's `SFTConfig` for `rounds` steps, the rows in order, nothing saved or reported."""
    from reasondiff.finetune.run import sft_arguments

    return sft_arguments(cfg, output_dir, accumulation=accumulation, device_type=device_type, max_steps=rounds,
                         train_sampling_strategy="sequential", save_strategy="no", report_to="none")


def summarize(turns: Turns, tokens: dict[str, list[int]], warmup: int) -> dict[str, dict]:
    """Per arm over the measured rounds: tokens/s and s/step (medians; overall tokens / seconds beside
    them) and the paired per-round ratio to `plain` (median, min, max)."""
    measured = {name: (tokens[name][warmup:], turns.seconds[name][warmup:]) for name in turns.seconds}
    reference = measured[PLAIN][0]
    for name, (toks, _) in measured.items():
        if toks != reference:
            raise RuntimeError(f"arm {name} saw other tokens per step than the plain loop: {toks} vs {reference}")
    plain_rates = [t / s for t, s in zip(*measured[PLAIN], strict=True)]
    out = {}
    for name, (toks, secs) in measured.items():
        rates = [t / s for t, s in zip(toks, secs, strict=True)]
        ratios = [r / p for r, p in zip(rates, plain_rates, strict=True)]
        # medians over rounds: one round slowed by a burst of load moves neither the rate nor the ratio
        out[name] = {"tokens": sum(toks), "seconds": sum(secs), "tokens_per_s": statistics.median(rates),
                     "tokens_per_s_overall": sum(toks) / sum(secs),
                     "seconds_per_step": statistics.median(secs), "step_seconds": [round(s, 3) for s in secs],
                     "over_plain": statistics.median(ratios), "over_plain_min": min(ratios),
                     "over_plain_max": max(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF model dir (e.g. /work/qwen05b) or hub id")
    parser.add_argument("--sets", nargs="+", default=["full", "mixed"], choices=("full", "mixed"),
                        help="row sets: full = rows of exactly --max-length (no padding); mixed = rows of every "
                             "length up to --mixed-max-length")
    parser.add_argument("--max-length", type=int, default=128, help="row length of the `full` set")
    parser.add_argument("--mixed-max-length", type=int, default=512, help="longest row of the `mixed` set")
    parser.add_argument("--micro-batch", type=int, default=2, help="hardware.finetune_micro_batch")
    parser.add_argument("--accumulation", type=int, default=None,
                        help="micro batches per optimizer step of the `full` set (default: the stage's, "
                             "finetune.effective_batch_size / micro batch)")
    parser.add_argument("--mixed-accumulation", type=int, default=1,
                        help="micro batches per optimizer step of the `mixed` set (default 1: rows up to "
                             "--mixed-max-length make a step of about the `full` set's tokens)")
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps (rounds) per arm")
    parser.add_argument("--warmup", type=int, default=1, help="rounds dropped first (trainer construction included)")
    parser.add_argument("--dtype", default=None, help="hardware.dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-padding-free", dest="padding_free", action="store_false",
                        help="leave out the stage_padding_free arm")
    parser.add_argument("--trl-head", action="store_true",
                        help="add trl's chunked-LM-head SFTTrainer (on CPU the stage uses the model's own loss)")
    parser.add_argument("--old-plain", action="store_true",
                        help="add the previous baseline (torch's default AdamW: a for-loop on CPU; no clipping)")
    parser.add_argument("--malloc-mmap-threshold-kb", type=int, default=HardwareConfig.malloc_mmap_threshold_kb,
                        help="glibc's mmap threshold for the whole process, as the stage sets it "
                             "(hardware.malloc_mmap_threshold_kb; 0 keeps glibc's dynamic threshold)")
    parser.add_argument("--data", type=Path, default=SHARED_SAMPLE)
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "_bench" / "sft_throughput")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first round builds the trainers)")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    # the stage fixes glibc's mmap threshold (reasondiff.app.stage); one process, so every arm runs under it
    mmap_threshold = args.malloc_mmap_threshold_kb if args.malloc_mmap_threshold_kb and memory.set_mmap_threshold(
        args.malloc_mmap_threshold_kb * 1024) else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    rounds = args.warmup + args.steps

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasondiff.finetune.run import gradient_accumulation, set_pad_token

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    figures: dict = {"model": args.model, "n_params": n_params, "device": device.type,
                     "device_name": torch.cuda.get_device_name() if device.type == "cuda"
                     else platform.processor() or "cpu", "threads": torch.get_num_threads(), "dtype": args.dtype,
                     "micro_batch": args.micro_batch, "gradient_checkpointing": args.gradient_checkpointing,
                     "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
                     "malloc_mmap_threshold_kb": mmap_threshold}
    paper_tokens = S1K_ROWS * EPOCHS * PAPER_MAX_LENGTH
    for row_set in args.sets:
        max_length = args.max_length if row_set == "full" else args.mixed_max_length
        cfg = bench_config(max_length, args.micro_batch, args.dtype, device.type, args.gradient_checkpointing)
        set_pad_token(tokenizer, cfg.finetune.pad_token)
        accumulation = (args.mixed_accumulation if row_set == "mixed" else args.accumulation
                        or gradient_accumulation(cfg.finetune.effective_batch_size, args.micro_batch))
        n_rows = rounds * args.micro_batch * accumulation
        examples, _ = build_sft_examples(make_rows(args.data, max(4 * n_rows, 100)), tokenizer, cfg.finetune,
                                         ReasoningFormat())
        if row_set == "full":  # keep_answer trims overlong rows to exactly max_length: no batch pads
            examples = [e for e in examples if len(e) == max_length] or examples
        arms = benchmark_arms(model, tokenizer, examples, cfg, accumulation=accumulation, rounds=rounds,
                              workdir=args.workdir / row_set, device_type=device.type, padding_free=args.padding_free,
                              trl_head=args.trl_head, old_plain=args.old_plain)
        turns, tokens = run_arms(arms, rounds)
        results = summarize(turns, tokens, args.warmup)
        lengths = [len(examples[i % len(examples)]) for i in range(n_rows)]  # the rows the arms train on
        padded = sum(args.micro_batch * max(lengths[i:i + args.micro_batch])
                     for i in range(0, len(lengths), args.micro_batch))
        print(f"\nSFT throughput, rows `{row_set}` (max_length {max_length}; {sum(lengths) / padded:.0%} of the padded "
              f"batches are real tokens), {figures['device_name']} ({device.type}, {figures['threads']} threads), "
              f"{n_params / 1e6:.0f}M params, micro batch {args.micro_batch} x {accumulation} accumulation, "
              f"{args.dtype}, {args.steps} measured rounds after {args.warmup}, glibc mmap threshold "
              f"{f'{mmap_threshold} KiB' if mmap_threshold else 'dynamic'}")
        print(f"{'arm':<22}{'tok/step':>9}{'tok/s':>9}{'s/step':>9}{'vs plain (range)':>22}{'5 ep s1K@2048 (h)':>19}"
              "   (medians over rounds)")
        for name, r in results.items():
            hours = paper_tokens / r["tokens_per_s"] / 3600
            print(f"{name:<22}{r['tokens'] // args.steps:>9}{r['tokens_per_s']:>9.1f}{r['seconds_per_step']:>9.2f}"
                  f"{r['over_plain']:>10.3f}x ({r['over_plain_min']:.2f}-{r['over_plain_max']:.2f})"
                  f"{hours:>19.1f}")
            figures[f"{row_set}_{name}"] = {**{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
                                            "projected_hours_5_epochs_2048": round(hours, 2)}
        figures[f"{row_set}_accumulation"] = accumulation
        figures[f"{row_set}_max_length"] = max_length
        figures[f"{row_set}_real_token_share"] = round(sum(lengths) / padded, 4)
        for name in results:
            if name != PLAIN:
                print(f"{name} / plain loop: {results[name]['over_plain']:.3f}x "
                      f"(per round {results[name]['over_plain_min']:.3f}-{results[name]['over_plain_max']:.3f})")
    figures["projected_tokens_5_epochs_2048"] = paper_tokens
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
