"""Analyze's CE recovery per context: the stage's path vs the full-forward reference, in one run.

    .venv/bin/python benchmarks/analyze_ce.py                              # tiny Qwen2 (4 layers), seconds
    .venv/bin/python benchmarks/analyze_ce.py --model /work/qwen05b --contexts 1 --batch-size 1

Both arms compute everything ce_recovery.csv reports (CE and KL of the clean, zero-ablated and spliced
runs of both models under both conventions, per-context sums) on the same contexts with the same
crosscoder, through `ce_recovery_batch`:
(a) ours, `resume=True`: one clean forward per model, every intervened run resumed at the hook
    from the clean run's layer inputs, the zero ablation of every position computed once, only the
    scored predictions unembedded;
(b) the reference, `resume=False`: what TransformerLens users do (`run_with_hooks` per run): a full
    forward with the hook per run, every prediction unembedded (the same scoring code as ours);
(c) with --baseline-file, another checkout's ce_recovery.py (e.g. the stage before this change:
    `git show 1f08b85:reasondiff/analyze/ce_recovery.py > /tmp/ce_before.py`), timed as a third arm.
The arms run round-robin (a, b, c, a, b, c, ...) so load from other processes hits both alike; the ratio
uses each arm's fastest repeat of process CPU time (the least disturbed on a shared machine), medians
are printed too. The per-context sums of the arms are compared (the speed-up changes no number).
The same model serves as base and tuned unless --tuned is given (the work is the same). Contexts:
wiki text (../shared/data) packed to --context-length tokens, as analyze's held-out general text.
The last line of output is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from reasondiff.analyze.ce_recovery import CERecoveryMeter, ce_recovery_batch  # noqa: E402
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig, load_crosscoder  # noqa: E402
from reasondiff.lm.models import parse_hook  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "wiki_text_sample.jsonl"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model dir (default: the tiny Qwen2 built in-process)")
    parser.add_argument("--tuned", default=None, help="tuned model dir (default: --model again)")
    parser.add_argument("--crosscoder", default=None, help="a trained crosscoder dir (default: one at its init)")
    parser.add_argument("--hook", default=None, help="default blocks.14.hook_resid_pre (real) / blocks.2 (tiny)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="local .jsonl with a text column")
    parser.add_argument("--context-length", type=int, default=None, help="default 512 (real) / 128 (tiny)")
    parser.add_argument("--contexts", type=int, default=None, help="contexts per repeat (default 1 real / 8 tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="contexts per batch (default 1 real / 4 tiny)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per arm")
    parser.add_argument("--max-norm-ratio", type=float, default=10.0, help="harvest.max_norm_ratio (massive tokens)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--baseline-file", default=None, help="another ce_recovery.py to time as a third arm")
    return parser.parse_args()


def load_models(args):
    from reasondiff.config import HardwareConfig
    from reasondiff.lm.models import load_model

    if args.model is None:
        from reasondiff.tiny import make_model, make_tokenizer, tokenizer_training_texts

        tokenizer = make_tokenizer(tokenizer_training_texts(seed=0, n=200))
        return (make_model(tokenizer, seed=0).eval(), make_model(tokenizer, seed=1).eval()), tokenizer, "tiny Qwen2"
    hardware = HardwareConfig(device="cpu", dtype="float32")
    base, tokenizer = load_model(args.model, hardware)
    tuned = load_model(args.tuned, hardware, config_key="tuned")[0] if args.tuned else base
    return (base.eval(), tuned.eval()), tokenizer, args.model


def packed_contexts(tokenizer, corpus: str, n: int, length: int) -> torch.Tensor:
    ids: list[int] = []
    with open(corpus) as handle:
        for line in handle:
            ids.extend(tokenizer(json.loads(line)["text"])["input_ids"])
            if len(ids) >= n * length:
                break
    if len(ids) < n * length:
        raise SystemExit(f"{corpus}: {len(ids)} tokens, {n} x {length} wanted")
    return torch.tensor(ids[:n * length]).view(n, length)


def make_crosscoder(args, d_model: int) -> CrossCoder:
    if args.crosscoder:
        return load_crosscoder(Path(args.crosscoder), device=torch.device("cpu")).eval()
    torch.manual_seed(0)
    return CrossCoder(CrossCoderConfig(d_model=d_model, n_latents=min(4096, 16 * d_model))).eval()


def load_baseline(path: str):
    """`ce_recovery_batch` of another ce_recovery.py (it imports this checkout's reasondiff.lm.hooks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_ce_recovery", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ce_recovery_batch


def one_pass(models, contexts, hook, crosscoder, *, batch_size: int, max_norm_ratio: float, arm):
    meter = CERecoveryMeter(len(contexts), ("base", "tuned"))
    for lo in range(0, len(contexts), batch_size):
        rows = slice(lo, min(len(contexts), lo + batch_size))
        arm(models, contexts[rows], hook, crosscoder, meter, context_index=torch.arange(len(contexts))[rows],
            keep_first=True, max_norm_ratio=max_norm_ratio)
    return meter


def main() -> None:
    args = parse_args()
    real = args.model is not None
    torch.set_num_threads(args.threads)
    length = args.context_length or (512 if real else 128)
    n_contexts = args.contexts or (1 if real else 8)
    batch_size = args.batch_size or (1 if real else 4)
    models, tokenizer, name = load_models(args)
    n_layers = models[0].config.num_hidden_layers
    hook = parse_hook(args.hook or ("blocks.14.hook_resid_pre" if real else "blocks.2.hook_resid_pre"), n_layers)
    contexts = packed_contexts(tokenizer, args.corpus, n_contexts, length)
    crosscoder = make_crosscoder(args, models[0].config.hidden_size)
    arms = {"ours": lambda *a, **k: ce_recovery_batch(*a, **k, resume=True),
            "reference": lambda *a, **k: ce_recovery_batch(*a, **k, resume=False)}
    if args.baseline_file:
        arms["baseline"] = load_baseline(args.baseline_file)
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    meters = {}
    with torch.no_grad():
        one_pass(models, contexts[:1, :min(length, 64)], hook, crosscoder, batch_size=1,
                 max_norm_ratio=args.max_norm_ratio, arm=arms["ours"])  # warm-up (allocator, lazy inits)
        for _ in range(args.repeats):
            for arm, run in arms.items():
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                meters[arm] = one_pass(models, contexts, hook, crosscoder, batch_size=batch_size,
                                       max_norm_ratio=args.max_norm_ratio, arm=run)
                cpu[arm].append((time.process_time() - start_cpu) / n_contexts)
                wall[arm].append((time.perf_counter() - start_wall) / n_contexts)
    reference = meters["reference"].sums
    others = [arm for arm in arms if arm != "reference"]
    max_abs = max(float((meters[arm].sums - reference).abs().max()) for arm in others)
    max_rel = max(float(((meters[arm].sums - reference).abs() / reference.abs().clamp_min(1e-3)).max()) for arm in others)
    rows = {arm: {(r["convention"], r["model"]): r for r in meters[arm].rows(n_bootstrap=0)} for arm in arms}
    recovered_diff = max(abs(rows[arm][k]["ce_recovered"] - rows["reference"][k]["ce_recovered"])
                         for arm in others for k in rows[arm])
    best = {arm: min(v) for arm, v in cpu.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CE recovery, {name} ({n_layers} layers) at {hook.name}: {n_contexts} context(s) x {length} tokens, "
          f"batch {batch_size}, {args.threads} thread(s), {args.repeats} repeats, load average {load:.2f}")
    print(f"  {'':10s} {'CPU s/context':>14s} {'(median)':>9s} {'wall s/context':>15s} {'(median)':>9s}")
    for arm in arms:
        print(f"  {arm:10s} {best[arm]:14.2f} {statistics.median(cpu[arm]):9.2f} {min(wall[arm]):15.2f} "
              f"{statistics.median(wall[arm]):9.2f}")
    ratio = best["reference"] / best["ours"]
    print(f"  reference / ours (CPU time): {ratio:.2f}x")
    if "baseline" in best:
        print(f"  baseline / ours (CPU time): {best['baseline'] / best['ours']:.2f}x")
    print(f"  same numbers as the reference: per-context sums max |diff| {max_abs:.2e} (max rel {max_rel:.1e}), "
          f"ce_recovered max |diff| {recovered_diff:.1e}")
    for (convention, model), row in rows["ours"].items():
        print(f"    {convention:16s} {model:6s} ce_recovered {row['ce_recovered']:.4f} "
              f"(reference {rows['reference'][(convention, model)]['ce_recovered']:.4f}), "
              f"kl_spliced {row['kl_spliced']:.4f}, n_tokens {row['n_tokens']}")
    print(json.dumps({"benchmark": "analyze_ce", "model": name, "hook": hook.name, "contexts": n_contexts,
                      "context_length": length, "batch_size": batch_size, "threads": args.threads,
                      "repeats": args.repeats, "cpu_s_per_context": cpu, "wall_s_per_context": wall,
                      "reference_over_ours": ratio,
                      "baseline_over_ours": best["baseline"] / best["ours"] if "baseline" in best else None,
                      "baseline_file": args.baseline_file, "max_abs_diff_sums": max_abs, "max_rel_diff_sums": max_rel,
                      "max_abs_diff_ce_recovered": recovered_diff, "load_average": load,
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
