"""One crosscoder training step: ours vs a per-model einsum reference vs the bare GEMMs, in one run.

    .venv/bin/python benchmarks/crosscoder_step.py [--model /work/qwen05b] [--batch-size 1024] [--repeats 5]

Shapes are the paper's: 2 models x d_model (896 for Qwen2.5-0.5B; read from --model's config.json)
-> 16 x d_model latents. Default batch 4096 on a GPU (bf16 autocast), 1024 fp32 on CPU.
(a) ours: `CrossCoderTrainer.train_step` (fused encoder/decoder GEMMs, loss, backward, clip, Adam,
    schedule, dead-latent bookkeeping, NaN check);
(b) a straightforward reference written like the public replications: per-model einsums producing
    [B, n_models, F] then summed, the same loss, backward, clip_grad_norm_, default Adam;
(c) the five bare GEMMs a step cannot avoid (encoder and decoder forward, decoder-input,
    decoder-weight and encoder-weight gradients), same shapes and precision.
The three are timed round-robin (a, b, c, a, b, c, ...) so load from other processes hits all of
them alike; ratios use each arm's fastest repeat (the least disturbed on a shared machine),
medians are printed too. The last line is a JSON object of the figures.
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

from reasondiff.config import TrainConfig  # noqa: E402
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig  # noqa: E402
from reasondiff.train.trainer import CrossCoderTrainer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_ours(d: int, F: int, B: int, device: torch.device, compile_: bool):
    train = TrainConfig(batch_size=B, n_tokens=B * 10_000, lr=5e-5, l1_coeff=2.0, compile=compile_)
    trainer = CrossCoderTrainer(CrossCoder(CrossCoderConfig(d_model=d, n_latents=F)), train, 10_000, device)

    def step(x):
        trainer.train_step(x)

    return step


def make_reference(d: int, F: int, B: int, device: torch.device):
    """Per-model einsums as in the Kissane/Nanda replication and the dictionary_learning fork."""
    W_dec = torch.randn(F, 2, d, device=device)
    W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=-1, keepdim=True) * 0.08)
    W_enc = torch.nn.Parameter(W_dec.detach().permute(1, 2, 0).clone())
    b_enc = torch.nn.Parameter(torch.zeros(F, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(2, d, device=device))
    params = [W_enc, W_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=5e-5, betas=(0.9, 0.999))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(x):
        with autocast:
            per_model = torch.einsum("bmd,mdf->bmf", x, W_enc)
            acts = torch.relu(per_model.sum(1) + b_enc)
            recon = torch.einsum("bf,fmd->bmd", acts, W_dec) + b_dec
            l2 = (recon.float() - x).pow(2).sum(-1).sum(-1).mean()
            l1 = (acts.float() * W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
            loss = l2 + 2.0 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        float(loss.detach())

    return step


def make_bare_gemms(d: int, F: int, B: int, device: torch.device):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(B, 2 * d, device=device, dtype=dtype)
    W_enc = torch.randn(2 * d, F, device=device, dtype=dtype) * 0.02
    W_dec = torch.randn(F, 2 * d, device=device, dtype=dtype) * 0.02
    g_out = torch.randn(B, 2 * d, device=device, dtype=dtype)

    def step(_x):
        f = x @ W_enc                 # encoder forward
        recon = f @ W_dec             # decoder forward
        g_f = g_out @ W_dec.T         # gradient into the latents
        g_W_dec = f.T @ g_out         # decoder weight gradient
        g_W_enc = x.T @ g_f           # encoder weight gradient
        return recon, g_W_dec, g_W_enc

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model dir: d_model is read from its config.json")
    parser.add_argument("--d-model", type=int, default=896)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4096 on cuda, 1024 on cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile our loss (needs a C compiler on CPU)")
    args = parser.parse_args()

    d = args.d_model
    if args.model:
        d = int(json.loads((Path(args.model) / "config.json").read_text())["hidden_size"])
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    B = args.batch_size or (4096 if device.type == "cuda" else 1024)
    F = args.expansion * d
    torch.manual_seed(0)
    x = torch.randn(B, 2, d, device=device) * 10
    arms = {"ours": make_ours(d, F, B, device, args.compile), "reference_einsum": make_reference(d, F, B, device),
            "bare_gemms": make_bare_gemms(d, F, B, device)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(args.warmup + args.repeats):
        for name, step in arms.items():
            _sync(device)
            start = time.perf_counter()
            step(x)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    med = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    flops = 5 * 2 * B * (2 * d) * F
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    print(f"crosscoder step: 2 x {d} -> {F}, batch {B}, {precision}, {device_name}")
    for name, seconds in med.items():
        print(f"  {name:18s} {seconds * 1e3:9.1f} ms/step (median {median[name] * 1e3:7.1f})   "
              f"{B / seconds:8.0f} tokens/s   ({flops / seconds / 1e9:.0f} GFLOP/s of GEMM work)")
    ratios = {"ours_over_bare_gemms": med["ours"] / med["bare_gemms"],
              "reference_over_ours": med["reference_einsum"] / med["ours"],
              "reference_over_bare_gemms": med["reference_einsum"] / med["bare_gemms"]}
    print(f"  a/c (ours / bare GEMMs)      {ratios['ours_over_bare_gemms']:.3f}")
    print(f"  b/a (reference / ours)       {ratios['reference_over_ours']:.3f}")
    print(f"  b/c (reference / bare GEMMs) {ratios['reference_over_bare_gemms']:.3f}")
    print(json.dumps({"benchmark": "crosscoder_step", "d_model": d, "n_latents": F, "batch_size": B,
                      "precision": precision, "device": device_name, "compile": args.compile,
                      "seconds_per_step": {k: round(v, 5) for k, v in med.items()},
                      "median_seconds_per_step": {k: round(v, 5) for k, v in median.items()},
                      "tokens_per_second": {k: round(B / v, 1) for k, v in med.items()},
                      "all_seconds": {k: [round(t, 5) for t in v] for k, v in times.items()},
                      **{k: round(v, 4) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
