"""Roofline of the heavy stages on this machine, fp32 and bf16 side by side, in one run.

    .venv/bin/python benchmarks/roofline.py --model /work/qwen05b [--threads N] [--repeats 2] [--dtypes float32,bfloat16]

The machine's bounds, measured here at the start and at the end (the better of the two kept): the GEMM rate of a [1024, 1792] x [1792, 14336] product (the
crosscoder encoder's shape) and of a square 2048 GEMM, per dtype, and the memory bandwidth of a
large tensor copy (bytes read + written). Then, on the real architecture (--model, the offline
Qwen2.5-0.5B by default), each stage's own code on a small fixed workload:
- harvest: `PairedHarvester` (both models stopped at the hook) on --batch x --context tokens;
- bench decode: greedy `generate` of --new-tokens tokens for one prompt (batch 1): bytes = the
  weights streamed once per token, reported as GB/s against the copy bandwidth;
- crosscoder step: `CrossCoderTrainer.train_step`, sparse at L0/F = 1% and dense, 2 x d -> 16 d
  latents, batch 1024 (fp32 only: the trainer autocasts on CUDA alone); its bf16 line is the dense
  objective's forward + backward under CPU bf16 autocast, with the loss difference;
- CE recovery: `ce_recovery_batch` (resumed runs) on --contexts contexts of --context tokens.
FLOPs are counted by torch's FlopCounterMode over the very calls that are timed (matmuls and
attention; elementwise work is not counted), so "achieved GFLOP/s" means useful matmul work per
second. Numerical differences bf16 vs fp32: the mean clean CE of the model on the harvest tokens,
the harvested activations (relative norm), the crosscoder objective. Each timing is the fastest of
--repeats (the least disturbed on a shared machine); the load average at start and end is printed.
The last line is a JSON object of every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "wiki_text_sample.jsonl"


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def flops_of(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def machine_bounds(repeats: int) -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        a, b = torch.randn(1024, 1792, dtype=dtype), torch.randn(1792, 14336, dtype=dtype)
        out[f"gemm_encoder_shape_gflops_{name}"] = 2 * 1024 * 1792 * 14336 / best_of(lambda a=a, b=b: a @ b, repeats) / 1e9
        s = torch.randn(2048, 2048, dtype=dtype)
        out[f"gemm_square_2048_gflops_{name}"] = 2 * 2048**3 / best_of(lambda s=s: s @ s, repeats) / 1e9
    src = torch.ones(2**27)  # 512 MiB
    dst = torch.empty_like(src)
    out["copy_bandwidth_gbs"] = 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src), repeats) / 1e9
    return out


def load(model_path: str, dtype: str):
    from reasondiff.config import HardwareConfig
    from reasondiff.lm.models import load_model

    model, tokenizer = load_model(model_path, HardwareConfig(device="cpu", dtype=dtype))
    return model.eval(), tokenizer


def clean_ce(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(tokens).logits.float()
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()))


def stage_rows(args, dtype: str, tokens: torch.Tensor, ce_contexts: torch.Tensor) -> tuple[dict, dict]:
    """(timings and rates, numbers to compare across dtypes) of harvest, decode and CE recovery."""
    from analyze_ce import make_crosscoder, one_pass

    from reasondiff.analyze.ce_recovery import ce_recovery_batch
    from reasondiff.harvest.pairs import PairedHarvester
    from reasondiff.lm.models import parse_hook

    model, tokenizer = load(args.model, dtype)
    n_layers = model.config.num_hidden_layers
    hook = parse_hook(args.hook, n_layers)
    rows, numbers = {}, {}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    harvester = PairedHarvester(model, model, hook, drop_first_position=False)
    run = lambda: harvester(tokens)  # noqa: E731
    seconds = best_of(run, args.repeats)
    rows["harvest"] = {"seconds": seconds, "gflop": flops_of(run) / 1e9, "tokens": 2 * tokens.numel()}
    numbers["harvest_activations"] = run()[0].float()
    numbers["clean_ce"] = clean_ce(model, tokens)

    prompt = tokens[:1, :32]

    def decode():
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id or 0)

    seconds = best_of(decode, args.repeats)
    rows["decode"] = {"seconds": seconds, "gflop": flops_of(decode) / 1e9, "tokens": args.new_tokens,
                      "gbytes": param_bytes * args.new_tokens / 1e9}

    crosscoder = make_crosscoder(argparse.Namespace(crosscoder=None), model.config.hidden_size)
    with torch.no_grad():  # scaling factors of this model's activations (as harvest's stats.json would hold)
        acts = harvester(ce_contexts[:1])[0].float()
        crosscoder.scaling_factors.copy_(model.config.hidden_size**0.5 / acts.norm(dim=-1).mean(0))
    run = lambda: one_pass((model, model), ce_contexts, hook, crosscoder, batch_size=1,  # noqa: E731
                           max_norm_ratio=10.0, arm=ce_recovery_batch)
    seconds = best_of(run, args.repeats)
    rows["ce_recovery"] = {"seconds": seconds, "gflop": flops_of(run) / 1e9, "tokens": ce_contexts.numel()}
    return rows, numbers


def crosscoder_rows(args, d: int) -> tuple[dict, dict]:
    from crosscoder_step import make_ours

    from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
    from reasondiff.train.step import crosscoder_loss

    B, F = 1024, 16 * d
    torch.manual_seed(0)
    x = torch.randn(B, 2, d) * 10
    rows, numbers = {}, {}
    for sparse in ("on", "off"):
        step, seen = make_ours(d, F, B, torch.device("cpu"), x, variant="l1", density=0.01, sparse=sparse,
                               sparse_kernel="auto")  # the stage's default: the compiled kernels where they build
        seconds = best_of(lambda step=step: step(x), args.repeats)
        name = "crosscoder_step_sparse_1pct" if sparse == "on" else "crosscoder_step_dense"
        rows[name] = {"seconds": seconds, "gflop": flops_of(lambda step=step: step(x)) / 1e9, "tokens": B,
                      "density": seen["density"]}
    # the dense objective's forward + backward, fp32 vs CPU bf16 autocast (the same crosscoder and batch)
    torch.manual_seed(0)
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=F))
    with torch.no_grad():
        pre = cc.pre_activations(x[:256])
        cc.b_enc.fill_(-float(torch.quantile(pre.flatten()[::7], 0.99)))
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")

        def fwd_bwd(dtype=dtype):
            cc.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = crosscoder_loss(cc, x, l1_coeff=2.0, dead=None, aux_k=1, aux_k_coeff=0.0)
            out.loss.backward()
            return out

        seconds = best_of(fwd_bwd, args.repeats)
        rows[f"crosscoder_dense_fwd_bwd_{name}"] = {"seconds": seconds, "gflop": flops_of(fwd_bwd) / 1e9, "tokens": B}
        out = fwd_bwd()
        numbers[f"crosscoder_{name}"] = {"loss": float(out.loss.detach()), "l2": float(out.l2), "l1": float(out.l1)}
    return rows, numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("REASONDIFF_QWEN", "/work/qwen05b"))
    parser.add_argument("--hook", default="blocks.14.hook_resid_pre")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--batch", type=int, default=2, help="harvest contexts")
    parser.add_argument("--context", type=int, default=256, help="tokens per context (harvest, CE recovery)")
    parser.add_argument("--contexts", type=int, default=1, help="CE-recovery contexts")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode: generated tokens")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from analyze_ce import packed_contexts
    from transformers import AutoTokenizer

    load_start = os.getloadavg()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    contexts = packed_contexts(tokenizer, args.corpus, args.batch + args.contexts, args.context)
    tokens, ce_contexts = contexts[:args.batch], contexts[args.batch:]
    bounds = machine_bounds(args.repeats)
    d = int(json.loads((Path(args.model) / "config.json").read_text())["hidden_size"])

    rows, numbers = {}, {}
    for dtype in args.dtypes.split(","):
        stage, nums = stage_rows(args, dtype, tokens, ce_contexts)
        gc.collect()  # the model of this dtype is freed before the next loads
        rows.update({f"{k}_{dtype}": v for k, v in stage.items()})
        numbers[dtype] = nums
    cc_rows, cc_numbers = crosscoder_rows(args, d)
    rows.update(cc_rows)
    # the bounds again at the end, the better of the two kept: on a shared machine a bound taken
    # in one disturbed moment would make every stage look closer to it than it is
    bounds = {k: max(v, w) for (k, v), w in zip(bounds.items(), machine_bounds(args.repeats).values(), strict=True)}

    print(f"roofline: {args.model}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, best of {args.repeats}")
    for key, value in bounds.items():
        print(f"  {key:<40} {value:10.1f}")
    print(f"  {'stage':<42}{'seconds':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'% GEMM':>8}{'GB/s':>8}{'% copy':>8}")
    for name, r in rows.items():
        bf16 = "bfloat16" in name
        peak = bounds["gemm_encoder_shape_gflops_bfloat16" if bf16 else "gemm_encoder_shape_gflops_float32"]
        r["gflops"] = r["gflop"] / r["seconds"]
        r["fraction_of_gemm"] = r["gflops"] / peak
        line = f"  {name:<42}{r['seconds']:9.3f}{r['gflop']:9.1f}{r['gflops']:9.1f}{100 * r['fraction_of_gemm']:7.1f}%"
        if "gbytes" in r:
            r["gbs"] = r["gbytes"] / r["seconds"]
            r["fraction_of_copy"] = r["gbs"] / bounds["copy_bandwidth_gbs"]
            line += f"{r['gbs']:8.1f}{100 * r['fraction_of_copy']:7.1f}%"
        print(line)
    differences = {}
    if {"float32", "bfloat16"} <= set(numbers):
        a, b = numbers["float32"], numbers["bfloat16"]
        differences["clean_ce_float32"] = a["clean_ce"]
        differences["clean_ce_bfloat16"] = b["clean_ce"]
        differences["harvest_activations_relative_difference"] = float(
            (a["harvest_activations"] - b["harvest_activations"]).norm() / a["harvest_activations"].norm())
    for key in ("loss", "l2", "l1"):
        f32, b16 = cc_numbers["crosscoder_float32"][key], cc_numbers["crosscoder_bfloat16"][key]
        differences[f"crosscoder_{key}_relative_difference"] = abs(b16 - f32) / abs(f32)
    print("  bf16 vs fp32: " + ", ".join(f"{k} {v:.4g}" for k, v in differences.items()))
    print(json.dumps({"benchmark": "roofline", "model": args.model, "threads": torch.get_num_threads(),
                      "cpu": platform.processor() or platform.machine(), "load_average_start_end": [load_start[0], os.getloadavg()[0]],
                      "repeats": args.repeats, "bounds": bounds, "rows": rows, "bf16_vs_fp32": differences}))


if __name__ == "__main__":
    main()
