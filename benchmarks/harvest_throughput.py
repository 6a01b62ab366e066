"""Harvest throughput: this stage's path (early-stopped HF forward of both models + bf16 shard
writes with checksums) vs TransformerBridge.run_with_cache with a full forward, on the same contexts.

    .venv/bin/python benchmarks/harvest_throughput.py --model /work/qwen05b

Both sides produce paired (base, tuned) activations at the hook for the same tokens; the same
model serves as base and tuned when no --tuned is given (the work is the same). The last line
of output is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reasondiff.config import HardwareConfig, HarvestConfig  # noqa: E402
from reasondiff.harvest import store as store_io  # noqa: E402
from reasondiff.harvest.corpus import ContextStream  # noqa: E402
from reasondiff.harvest.pairs import PairedHarvester, paired_bridge_activations  # noqa: E402
from reasondiff.harvest.run import StoreWriter  # noqa: E402
from reasondiff.lm.models import check_compatible, hooked, load_model, parse_hook  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "wiki_text_sample.jsonl"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/work/qwen05b", help="base model (hub id or local dir)")
    parser.add_argument("--tuned", default=None, help="tuned model (default: --model again)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="local .jsonl with a text column, or hub id")
    parser.add_argument("--hook", default="blocks.14.hook_resid_pre")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per side (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hardware = HardwareConfig(device=args.device, dtype=args.dtype)
    base, tokenizer = load_model(args.model, hardware, config_key="--model")
    if args.tuned:
        tuned, tuned_tok = load_model(args.tuned, hardware, config_key="--tuned")
    else:
        tuned, tuned_tok = base, tokenizer
    shape = check_compatible(base, tuned, tokenizer, tuned_tok)
    hook = parse_hook(args.hook, shape.n_layers)
    harvest = HarvestConfig(corpus=args.corpus, context_length=args.context_length, store_dtype="bfloat16")
    stream = ContextStream(harvest, tokenizer)
    batches = [stream.next_batch(args.batch_size) for _ in range(args.batches + 1)]
    if any(b is None or b.shape[0] < args.batch_size for b in batches):
        raise SystemExit(f"{args.corpus}: not enough text for {args.batches + 1} batches")
    tokens_per_batch = args.batch_size * args.context_length

    # --- this stage's path: early-stopped forwards + bf16 shards (sha256, atomic) in a temp dir ---
    harvester = PairedHarvester(base, tuned, hook, drop_first_position=False)
    bare = {}
    with tempfile.TemporaryDirectory() as tmp:
        header = {"fingerprint": {"benchmark": True}, "d_model": shape.d_model, "hook": hook.name,
                  "store_dtype": "bfloat16"}
        writer = StoreWriter.open(Path(tmp), header)

        def harvest_all() -> None:
            for batch in batches[1:]:
                rows, ids = harvester(batch)
                writer.add(store_io.to_store_array(rows, "bfloat16"), ids.to(torch.int32).numpy(), stream.state(), 0)
            writer.wait()

        harvester(batches[0])  # warm-up
        ours_s = timed(harvest_all)
        stored_bytes = sum(s["acts"]["bytes"] + s["tokens"]["bytes"] for s in writer.manifest["shards"])
        writer.close()
        # the bare early-stopped forward, without storage: what the store costs on top
        bare["s"] = timed(lambda: [harvester(b) for b in batches[1:]])

    # --- TransformerLens: run_with_cache with a full forward (names_filter = the hook) ---
    # the bridge rewires the model it wraps: give it a copy
    bridge_base = hooked(copy.deepcopy(base), copy.deepcopy(tokenizer), name=args.model)
    bridge_tuned = bridge_base if tuned is base else hooked(copy.deepcopy(tuned), copy.deepcopy(tuned_tok), name=args.tuned)
    paired_bridge_activations(bridge_base, bridge_tuned, batches[0], None, hook, stop_early=False)  # warm-up
    bridge_s = timed(lambda: [paired_bridge_activations(bridge_base, bridge_tuned, b, None, hook, stop_early=False)
                              for b in batches[1:]])
    # check both paths computed the same thing
    ours_rows, _ = harvester(batches[1])
    theirs = paired_bridge_activations(bridge_base, bridge_tuned, batches[1], None, hook, stop_early=False)
    max_rel_diff = float((ours_rows.float() - theirs.reshape(ours_rows.shape).float()).norm()
                         / theirs.float().norm())

    n_tokens = args.batches * tokens_per_batch
    result = {
        "model": args.model, "hook": hook.name, "n_layers": shape.n_layers, "dtype": args.dtype,
        "device": str(next(base.parameters()).device), "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "context_length": args.context_length,
        "batch_size": args.batch_size, "timed_tokens": n_tokens,
        "harvest_seconds": round(ours_s, 3), "bare_early_stop_seconds": round(bare["s"], 3),
        "bridge_full_seconds": round(bridge_s, 3),
        "harvest_tokens_per_s": round(n_tokens / ours_s, 1),
        "bare_early_stop_tokens_per_s": round(n_tokens / bare["s"], 1),
        "bridge_full_tokens_per_s": round(n_tokens / bridge_s, 1),
        "speedup_harvest_vs_bridge": round(bridge_s / ours_s, 3),
        "speedup_bare_vs_bridge": round(bridge_s / bare["s"], 3),
        "store_overhead_vs_bare": round(ours_s / bare["s"] - 1, 3),
        "stored_bytes": stored_bytes, "max_relative_difference": max_rel_diff,
    }
    print(f"{'path':<44}{'seconds':>10}{'tokens/s':>12}{'vs bridge':>11}")
    for label, seconds in (("harvest (early stop + bf16 shards)", ours_s), ("bare early-stopped forward", bare["s"]),
                           ("TransformerBridge.run_with_cache (full)", bridge_s)):
        print(f"{label:<44}{seconds:>10.2f}{n_tokens / seconds:>12.1f}{bridge_s / seconds:>10.2f}x")
    print(f"paired tokens: {n_tokens} ({args.batches} batches of {args.batch_size}x{args.context_length}); "
          f"store overhead over the bare forward: {100 * result['store_overhead_vs_bare']:.1f}%; "
          f"relative difference ours vs bridge: {max_rel_diff:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
