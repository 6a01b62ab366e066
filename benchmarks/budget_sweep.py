"""Single-pass prefix scoring vs one generation per token limit, side by side on real gsm8k questions.

    .venv/bin/python benchmarks/budget_sweep.py --model /work/qwen05b [--questions 4] [--limits 64,128,256,512]

Both arms use the bench stage's own code (reasondiff.bench.generation.HFGenerator, the chat prompt,
grading); the single pass generates once at the largest limit and scores each limit on its prefix,
the baseline runs a fresh greedy generation capped at each limit. Prints wall times, tokens
generated, their ratios, whether every prefix equals the separate run, and the accuracy at each
limit; the last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from reasondiff.bench.generation import HFGenerator, decode_completion  # noqa: E402
from reasondiff.bench.grading import extract_answer, grade  # noqa: E402
from reasondiff.bench.prompts import chat_prompt, prompt_ids, select_indices, user_turn  # noqa: E402
from reasondiff.config import HardwareConfig, ReasoningFormat  # noqa: E402
from reasondiff.config.bench import PromptTemplates  # noqa: E402
from reasondiff.lm.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/work/qwen05b", help="HF model dir or hub id")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k_test.jsonl"))
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--limits", default="64,128,256,512")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    limits = sorted(int(x) for x in args.limits.split(","))

    with open(args.data) as handle:
        rows = [json.loads(line) for line in handle]
    rows = [rows[i] for i in select_indices(len(rows), args.questions, args.seed)]
    hardware = HardwareConfig(device=args.device, dtype=args.dtype, bench_batch_size=len(rows))
    model, tokenizer = load_model(args.model, hardware)
    device = next(model.parameters()).device
    templates, fmt = PromptTemplates(), ReasoningFormat()
    prompts = [prompt_ids(tokenizer, chat_prompt(tokenizer, user_turn("gsm8k", row, templates), system_prompt=None,
                                                 start_thinking=False, fmt=fmt)) for row in rows]
    generator = HFGenerator(model, tokenizer, batch_size=len(rows))
    generator.generate([p[:8] for p in prompts], 2)  # warm-up: allocator, kernels

    start = time.perf_counter()
    single = generator.generate(prompts, limits[-1])
    single_seconds = time.perf_counter() - start
    single_tokens = sum(len(g.token_ids) for g in single)

    per_limit_seconds, per_limit_tokens, prefix_equal, accuracy, no_answer = {}, {}, {}, {}, {}
    for limit in limits:
        start = time.perf_counter()
        capped = generator.generate(prompts, limit)
        per_limit_seconds[limit] = time.perf_counter() - start
        per_limit_tokens[limit] = sum(len(g.token_ids) for g in capped)
        prefix_equal[limit] = all(c.token_ids == s.token_ids[:limit] for c, s in zip(capped, single, strict=True))
        texts = [decode_completion(tokenizer, s.token_ids[:limit], generator.stop_ids) for s in single]
        # as the stage grades: a prefix is finished when the model ended its turn within the limit
        ended = [s.finished and len(s.token_ids) <= limit for s in single]
        accuracy[limit] = 100.0 * sum(grade("gsm8k", t, r["answer"], finished=f)
                                      for t, r, f in zip(texts, rows, ended, strict=True)) / len(rows)
        no_answer[limit] = sum(extract_answer("gsm8k", t, finished=f) is None for t, f in zip(texts, ended, strict=True))
    baseline_seconds = sum(per_limit_seconds.values())
    baseline_tokens = sum(per_limit_tokens.values())
    # time at each limit read off the single pass's per-token clock (what Fig. 3 plots)
    clock_at_limit = {limit: max(g.token_times[min(limit, len(g.token_ids)) - 1] for g in single) for limit in limits}

    where = f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f" ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})")
    print(f"model {args.model}  dtype {args.dtype}  device {where}")
    print(f"{len(rows)} gsm8k questions, batch {len(rows)}, greedy, limits {limits}\n")
    print(f"{'limit':>6} {'separate run s':>15} {'tokens':>7} {'single-pass clock s':>20} {'prefix == run':>14} "
          f"{'accuracy %':>11} {'no answer':>10}")
    for limit in limits:
        print(f"{limit:>6} {per_limit_seconds[limit]:>15.2f} {per_limit_tokens[limit]:>7} {clock_at_limit[limit]:>20.2f} "
              f"{str(prefix_equal[limit]):>14} {accuracy[limit]:>11.1f} {no_answer[limit]:>10}")
    print(f"\none run per limit : {baseline_seconds:8.2f} s  {baseline_tokens:6d} tokens")
    print(f"single pass       : {single_seconds:8.2f} s  {single_tokens:6d} tokens")
    print(f"ratio (per-limit / single): time {baseline_seconds / single_seconds:.2f}x  "
          f"tokens {baseline_tokens / max(single_tokens, 1):.2f}x")
    print(json.dumps({
        "benchmark": "budget_sweep", "model": args.model, "dtype": args.dtype, "device": where,
        "machine": platform.machine(), "questions": len(rows), "limits": limits,
        "single_pass_seconds": round(single_seconds, 3), "single_pass_tokens": single_tokens,
        "per_limit_seconds_total": round(baseline_seconds, 3), "per_limit_tokens_total": baseline_tokens,
        "per_limit_seconds": {str(k): round(v, 3) for k, v in per_limit_seconds.items()},
        "time_ratio": round(baseline_seconds / single_seconds, 3),
        "token_ratio": round(baseline_tokens / max(single_tokens, 1), 3),
        "prefix_equals_separate_run": all(prefix_equal.values()),
        "accuracy_pct": {str(k): v for k, v in accuracy.items()},
    }))


if __name__ == "__main__":
    main()
