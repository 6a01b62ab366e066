"""One crosscoder training step: dense vs sparse (ours) against the GEMM bounds, over a density sweep.

    .venv/bin/python benchmarks/crosscoder_step.py [--densities 0.005,0.01,0.02,0.05,0.1,0.2]
        [--variant l1|batchtopk] [--batch-size 1024] [--repeats 3] [--reference] [--model /work/qwen05b]
        [--kernels torch,cpp] [--phases]

Shapes are the paper's: 2 models x d_model (896 for Qwen2.5-0.5B; read from --model's config.json)
-> 16 x d_model latents. Default batch 4096 on a GPU (bf16 autocast), 1024 fp32 on CPU. Per density
(L0 / n_latents; l1: the encoder bias is offset so the batch has that density, batchtopk: k = density x F):
(a) dense-ours: `CrossCoderTrainer.train_step` with train.sparse=off (fused encoder/decoder GEMMs,
    loss, autograd backward, clip, Adam, schedule, dead-latent bookkeeping, NaN check), without the
    logged metrics, as the stage runs all but one step in `train.log_every` (one untimed step with
    metrics reports the density each arm saw);
(b) sparse-ours: the same with train.sparse=on (encoder GEMM dense, everything else over the
    active (token, latent) pairs), once per `--kernels` entry: train.sparse_kernel=torch (the
    `embedding_bag` path) and =cpp (the compiled C++/OpenMP pairs kernels; the arm is dropped, with
    a note, where they cannot be built);
(c) the five-GEMM bound: the five bare dense GEMMs a dense step cannot avoid (encoder and decoder
    forward, decoder-input, decoder-weight and encoder-weight gradients), same shapes and precision;
(d) the one-GEMM bound: the encoder forward GEMM alone (what a sparse step cannot avoid);
(e) the GEMM + Adam bound: (d) and one fused Adam update of every parameter, the trainer's
    optimizer (an exact fp32 step cannot skip it: Adam's moments move on rows with no gradient).
With --reference, (f) a per-model einsum step written like the public replications (Kissane/Nanda,
dictionary_learning) joins the first density. The arms are timed round-robin (a, b, c, d, a, ...)
so load from other processes hits all of them alike; ratios use each arm's fastest repeat (the
least disturbed on a shared machine), medians are printed too. With --phases, each density's
sparse_cpp step is then run alone with timers around its encoder GEMM, kernel calls and Adam.
Each step's ratio to the one-GEMM bound is issue 31's goal (sparse ≤ 1.5× at L0/F ≤ 2%). The
crossover is the density above which the fastest sparse step stops being faster than the dense one
(linear interpolation between sweep points). The last line is a JSON object of every figure.
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
from reasondiff.crosscoder import pairs_kernel  # noqa: E402
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig  # noqa: E402
from reasondiff.train.trainer import CrossCoderTrainer, _adam_impl  # noqa: E402

STEPS = 10_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_ours(d: int, F: int, B: int, device: torch.device, x: torch.Tensor, *, variant: str, density: float,
              sparse: str, compile_: bool = False, sparse_kernel: str = "torch"):
    """A trainer whose batches have L0/F ~= density; returns (step, what the last step saw: density,
    whether it was sparse, and whether the compiled kernels ran it)."""
    torch.manual_seed(0)
    k = max(1, round(density * F))
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=F, variant=variant, k=k))
    if variant == "l1":
        with torch.no_grad():  # offset the encoder bias so that a fraction `density` of pre-activations is > 0
            pre = cc.pre_activations(x[:256].float())
            cc.b_enc.fill_(-float(torch.quantile(pre.flatten()[::7], 1 - density)))
    # lr tiny: the weights (hence the density) stay put over the repeats; the cost of a step does not depend on it
    train = TrainConfig(variant=variant, k=k, batch_size=B, n_tokens=B * STEPS, lr=1e-7, l1_coeff=2.0,
                        compile=compile_, sparse=sparse, sparse_kernel=sparse_kernel, threshold_start_step=STEPS)
    trainer = CrossCoderTrainer(cc, train, STEPS, device)
    seen = {"density": float("nan"), "sparse": float("nan"), "kernel": trainer.kernel is not None, "trainer": trainer}

    def step(batch):  # as the stage runs 99 of every 100 steps (train.log_every=100): no metrics
        trainer.train_step(batch)

    metrics = trainer.train_step(x, with_metrics=True)  # what a step sees (one extra step, not timed)
    seen.update(density=metrics["density"], sparse=metrics["sparse_step"])
    return step, seen


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


def make_bare_gemms(d: int, F: int, B: int, device: torch.device, *, only_encoder: bool = False):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(B, 2 * d, device=device, dtype=dtype)
    W_enc = torch.randn(2 * d, F, device=device, dtype=dtype) * 0.02
    W_dec = torch.randn(F, 2 * d, device=device, dtype=dtype) * 0.02
    g_out = torch.randn(B, 2 * d, device=device, dtype=dtype)

    def five(_x):
        f = x @ W_enc                 # encoder forward
        recon = f @ W_dec             # decoder forward
        g_f = g_out @ W_dec.T         # gradient into the latents
        g_W_dec = f.T @ g_out         # decoder weight gradient
        g_W_enc = x.T @ g_f           # encoder weight gradient
        return recon, g_W_dec, g_W_enc

    def one(_x):
        return x @ W_enc              # the encoder forward: all a sparse step must do densely

    return one if only_encoder else five


def make_gemm_adam(d: int, F: int, B: int, device: torch.device):
    """The encoder GEMM + one fused Adam update of all the crosscoder's parameters (grads given, the
    trainer's optimizer): what an exact fp32 step cannot avoid however sparse, since Adam must read
    and write every parameter and both moments (its moments decay on rows with zero gradient)."""
    one = make_bare_gemms(d, F, B, device, only_encoder=True)
    shapes = [(F, 2, d), (F, 2, d), (F,), (2, d)]  # W_enc (latent-major), W_dec, b_enc, b_dec
    params = [torch.nn.Parameter(torch.randn(shape, device=device) * 0.02) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.Adam(params, lr=1e-7, betas=(0.9, 0.999), **_adam_impl(device))

    def step(x):
        one(x)
        optimizer.step()

    return step


def phase_times(step, trainer: CrossCoderTrainer, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """ms per step of each phase of a sparse step on the compiled kernels (`--phases`): the encoder
    GEMM, each kernel call, Adam, and the rest (the loss, the clip's scalars, bookkeeping), from
    timers wrapped around the calls for `repeats` steps after one warm-up step."""
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            key = name(args) if callable(name) else name
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
            return result
        return wrapper

    kernel, cc, optimizer = trainer.kernel, trainer.cc, trainer.optimizer
    sums = lambda args: "decoder-weight gradient" if args[4].numel() else "encoder-weight gradient"  # noqa: E731
    patches = [(kernel, "pairs_above", "pairs"), (kernel, "pairs_from_mask", "pairs"), (kernel, "decode", "decode"),
               (kernel, "latent_sums", sums), (cc, "pre_activations", "encoder GEMM"), (optimizer, "step", "Adam")]
    originals = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, name in patches:
            setattr(obj, attr, timed(name, getattr(obj, attr)))
        step(x)
        spent.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            step(x)
        total = time.perf_counter() - start
    finally:
        for obj, attr, fn in originals:
            setattr(obj, attr, fn)
        for obj in (cc, optimizer):  # drop the instance attributes: the class methods again
            obj.__dict__.pop("pre_activations" if obj is cc else "step", None)
    phases = {name: 1e3 * t / repeats for name, t in spent.items()}
    phases["rest"] = 1e3 * total / repeats - sum(phases.values())
    phases["step"] = 1e3 * total / repeats
    return phases


def time_arms(arms: dict, x: torch.Tensor, device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(warmup + repeats):
        for name, step in arms.items():
            _sync(device)
            start = time.perf_counter()
            step(x)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def crossover(points: list[tuple[float, float]]) -> float | None:
    """Density where sparse/dense crosses 1, interpolated between (density, sparse/dense) points."""
    points = sorted(points)
    for (d0, r0), (d1, r1) in zip(points, points[1:], strict=False):
        if r0 < 1.0 <= r1:
            return d0 + (1.0 - r0) * (d1 - d0) / (r1 - r0)
    if points and points[0][1] >= 1.0:
        return 0.0
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model dir: d_model is read from its config.json")
    parser.add_argument("--d-model", type=int, default=896)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4096 on cuda, 1024 on cpu")
    parser.add_argument("--densities", default="0.005,0.01,0.02,0.05,0.1,0.2",
                        help="L0 / n_latents of the sweep, comma-separated")
    parser.add_argument("--variant", default="l1", choices=("l1", "batchtopk"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reference", action="store_true", help="also time the per-model einsum step (first density)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile our dense loss (needs a C compiler on CPU)")
    parser.add_argument("--kernels", default="torch,cpp",
                        help="train.sparse_kernel of each sparse arm, comma-separated (torch, cpp)")
    parser.add_argument("--phases", action="store_true",
                        help="after each density, time the phases of the sparse_cpp step (the GEMM, each kernel, Adam)")
    args = parser.parse_args()

    d = args.d_model
    if args.model:
        d = int(json.loads((Path(args.model) / "config.json").read_text())["hidden_size"])
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    B = args.batch_size or (4096 if device.type == "cuda" else 1024)
    F = args.expansion * d
    densities = [float(v) for v in args.densities.split(",")]
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if "cpp" in kernels and (device.type != "cpu" or pairs_kernel.load() is None):
        why = "not a CPU" if device.type != "cpu" else pairs_kernel.failure()
        print(f"  (no cpp arm: the compiled kernels do not run here: {why})")
        kernels.remove("cpp")
    torch.manual_seed(0)
    x = torch.randn(B, 2, d, device=device) * 10
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"crosscoder step: 2 x {d} -> {F}, batch {B}, {precision}, variant {args.variant}, {device_name}"
          + (f", load average {load[0]:.1f} at start" if load else ""))
    gemm_flops = 2 * B * (2 * d) * F
    bounds = {"five_gemms": make_bare_gemms(d, F, B, device), "one_gemm": make_bare_gemms(d, F, B, device, only_encoder=True),
              "gemm_adam": make_gemm_adam(d, F, B, device)}
    sparse_arms = [f"sparse_{k}" for k in kernels]
    steps = ["dense", *sparse_arms]
    rows, reference = [], None
    header = (f"  {'L0/F':>6} {'L0':>6} | " + " ".join(f"{name:>13}" for name in steps)
              + f" {'5 GEMMs':>8} {'1 GEMM':>8} {'1G+Adam':>8} ms | "
              + " ".join(f"{name + '/1G':>16}" for name in steps)
              + "".join(f" {name + '/(1G+A)':>18}" for name in sparse_arms) + f" {'dense/5G':>9}")
    print(header)
    for density in densities:
        dense_step, dense_seen = make_ours(d, F, B, device, x, variant=args.variant, density=density, sparse="off",
                                           compile_=args.compile)
        arms, seen = {"dense": dense_step}, {}
        for kernel, name in zip(kernels, sparse_arms, strict=True):
            arms[name], seen[name] = make_ours(d, F, B, device, x, variant=args.variant, density=density, sparse="on",
                                               sparse_kernel=kernel)
        arms.update(bounds)
        if args.reference and reference is None:
            arms["reference_einsum"] = make_reference(d, F, B, device)
        times = time_arms(arms, x, device, args.warmup, args.repeats)
        best = {name: min(t) for name, t in times.items()}
        median = {name: statistics.median(t) for name, t in times.items()}
        if "reference_einsum" in best:
            reference = {"seconds": best["reference_einsum"], "median": median["reference_einsum"],
                         "over_dense": best["reference_einsum"] / best["dense"],
                         "over_five_gemms": best["reference_einsum"] / best["five_gemms"]}
        first = seen[sparse_arms[0]] if sparse_arms else dense_seen
        fastest_sparse = min(sparse_arms, key=lambda name: best[name]) if sparse_arms else None
        row = {"target_density": density, "density": first["density"], "l0": first["density"] * F,
               "dense_step_density": dense_seen["density"],
               "sparse_step_taken": {name: seen[name]["sparse"] for name in sparse_arms},
               "compiled_kernels_ran": {name: seen[name]["kernel"] for name in sparse_arms},
               "seconds": {k: round(v, 5) for k, v in best.items() if k != "reference_einsum"},
               "median_seconds": {k: round(v, 5) for k, v in median.items() if k != "reference_einsum"},
               "over_one_gemm": {name: best[name] / best["one_gemm"] for name in steps},
               "over_gemm_adam": {name: best[name] / best["gemm_adam"] for name in sparse_arms},
               "dense_over_five_gemms": best["dense"] / best["five_gemms"],
               "fastest_sparse": fastest_sparse,
               "dense_over_fastest_sparse": best["dense"] / best[fastest_sparse] if fastest_sparse else None}
        if args.phases and "sparse_cpp" in seen:
            row["phases_ms"] = phase_times(arms["sparse_cpp"], seen["sparse_cpp"]["trainer"], x, args.repeats)
        rows.append(row)
        ms = {k: v * 1e3 for k, v in best.items()}
        print(f"  {row['density']:6.2%} {row['l0']:6.0f} | " + " ".join(f"{ms[name]:13.0f}" for name in steps)
              + f" {ms['five_gemms']:8.0f} {ms['one_gemm']:8.0f} {ms['gemm_adam']:8.0f}    | "
              + " ".join(f"{row['over_one_gemm'][name]:16.2f}" for name in steps)
              + "".join(f" {row['over_gemm_adam'][name]:18.2f}" for name in sparse_arms)
              + f" {row['dense_over_five_gemms']:9.2f}", flush=True)
        if "phases_ms" in row:
            print("           sparse_cpp phases (ms/step, mean of the repeats): "
                  + ", ".join(f"{name} {v:.1f}" for name, v in row["phases_ms"].items()), flush=True)
    cross = None
    if sparse_arms:
        cross = crossover([(r["density"], 1.0 / r["dense_over_fastest_sparse"]) for r in rows])
    print(f"  GEMM rate: {gemm_flops / min(r['seconds']['one_gemm'] for r in rows) / 1e9:.0f} GFLOP/s (one-GEMM arm, best)")
    print("  crossover (fastest sparse no longer faster than dense): " +
          (f"L0/F ~ {cross:.1%}" if cross is not None else f"none up to {max(densities):.0%}"))
    if reference:
        print(f"  per-model einsum reference: {reference['seconds'] * 1e3:.0f} ms, "
              f"{reference['over_dense']:.2f}x dense-ours, {reference['over_five_gemms']:.2f}x the five GEMMs")
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(json.dumps({"benchmark": "crosscoder_step", "d_model": d, "n_latents": F, "batch_size": B, "variant": args.variant,
                      "precision": precision, "device": device_name, "compile": args.compile, "kernels": kernels,
                      "load_average_start_end": [load[0] if load else None, load_end[0] if load_end else None],
                      "crossover_density": cross, "reference_einsum": reference,
                      "sweep": [_rounded(r) for r in rows]}))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    main()
