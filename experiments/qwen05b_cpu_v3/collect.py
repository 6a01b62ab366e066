"""Copy what the v3 write-up cites from the run into this folder (figures/, results/) and generate its tables.

    python experiments/qwen05b_cpu_v3/collect.py outputs/qwen05b_cpu_v3 [OUT_DIR]   (default: this folder)

The run's own directory is the source of truth: every number in README.md is a file there, copied here
unchanged, or a table below generated from those files. The copying, stage times and the Table 1 / Table 2
/ crosscoder tables are v2's collect.py (same stage files; its `main` runs this edition with the step and the
tables below); this edition adds the scan with its intervals,
the calibrated table of model-specific latents (seeds and the base-vs-base null), and the causal tests
(intervene.csv: every selection against its frequency-matched random sets; the intervened budget sweep).
No regrade: the bench ran with the current grader (v4).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _v2():
    spec = importlib.util.spec_from_file_location("collect_v2", HERE.parent / "qwen05b_cpu_v2" / "collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


v2 = _v2()
_read, _table, _f = v2._read, v2._table, v2._f


def _pct(row: dict[str, str], key: str, low: str, high: str) -> str:
    if row.get(key) in (None, ""):
        return "—"
    return f"{_f(row[key], 1, 100)} [{_f(row.get(low, ''), 1, 100)}, {_f(row.get(high, ''), 1, 100)}]"


def scan_table(run_dir: Path) -> str:
    """Residual rows of every scan: relative change, KL gap and both patching fractions with their intervals."""
    out = []
    for scan in sorted(run_dir.glob("scan*")):
        rows = [r for r in _read(scan / "scan.csv") if r.get("site") == "resid"]
        if not rows:
            continue
        body = [[r["text"], r["hook"].split(".")[1] + (" (post)" if r["hook"].endswith("resid_post") else ""), _f(r["relative_change"], 3), _f(r["cosine"], 3), _f(r["cka"], 3),
                 _f(r.get("kl_base_tuned", ""), 3),
                 _pct(r, "closed_tuned_into_base", "closed_tuned_into_base_low", "closed_tuned_into_base_high"),
                 _pct(r, "closed_base_into_tuned", "closed_base_into_tuned_low", "closed_base_into_tuned_high"),
                 r.get("n_patch_contexts", ""), r.get("text_source", "")]
                for r in rows if r["text"] in ("general", "reasoning")]
        out.append(f"**{scan.name}** (residual stream; closed = % of KL(base‖tuned) closed by patching one layer, "
                   "95% bootstrap over patched contexts)\n\n" + _table(
                       ["text", "layer", "relative change", "cosine", "CKA", "KL base‖tuned (nats)",
                        "closed tuned→base %", "closed base→tuned %", "patched contexts", "text source"], body))
    return "\n\n".join(out)


def calibration(run_dir: Path) -> str:
    """analyze's calibrated table (seeds × nulls), as analyze wrote it."""
    out = []
    for analyze in sorted(run_dir.glob("analyze*")):
        path = analyze / "calibration.md"
        if path.is_file():
            out.append(f"**{analyze.name}**\n\n" + path.read_text(encoding="utf-8").strip())
    return "\n\n".join(out)


def relative_norm_spread(run_dir: Path) -> tuple[str, list[dict[str, object]]]:
    """The paper's bands count nothing when every latent sits near r = 0.5, so read the spread itself
    against the null: per crosscoder the quantiles of r (crosscoder/geometry.py, from the decoder, every
    latent) and of the decoder cosine, and how many latents of each reasoning-pair (and control fine-tune)
    crosscoder lie outside the base-vs-base crosscoder's [min, max] of r at the same seed (same
    initialisation and batch order)."""
    import torch
    from safetensors.torch import load_file

    from reasondiff.crosscoder.geometry import decoder_cosine, relative_decoder_norm

    def stats(train: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = train / "crosscoder.safetensors"
        if not path.is_file():
            return None
        W = load_file(str(path))["W_dec"]
        return relative_decoder_norm(W), decoder_cosine(W)

    rows, records = [], []
    for seed, suffix in ((0, ""), (1, "@seed=1"), (2, "@seed=2")):
        sibling = "+" + suffix[1:] if suffix else ""
        pair = stats(run_dir / f"train{suffix}")
        null = stats(run_dir / f"train@base_vs_base{sibling}")
        control = stats(run_dir / f"train@control{sibling}")
        for name, got in (("reasoning pair", pair), ("base vs base", null), ("control fine-tune", control)):
            if got is None:
                continue
            r, cos = got
            q = torch.quantile(r, torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0])).tolist()
            outside = ""
            if name != "base vs base" and null is not None:
                lo, hi = float(null[0].min()), float(null[0].max())
                outside = f"{int((r < lo).sum())} below / {int((r > hi).sum())} above"
            rows.append([str(seed), name, *(f"{x:.3f}" for x in q), f"{float(r.std()):.4f}",
                         f"{float(torch.quantile(cos, 0.05)):.3f}", outside])
            records.append({"seed": seed, "pair": name, "r_min": q[0], "r_p01": q[1], "r_median": q[2], "r_p99": q[3],
                            "r_max": q[4], "r_std": float(r.std()), "cosine_p05": float(torch.quantile(cos, 0.05))})
    table = _table(["seed", "pair", "r min", "r 1%", "r median", "r 99%", "r max", "r std", "cosine 5%",
                    "latents outside the null's r range"], rows)
    return table, records


def intervene_table(run_dir: Path) -> str:
    """kl_closed on reasoning text of every selection and size against its random sets (min–max), with the
    whole-residual ceiling; ablate_set's kl_closed in the tuned model; ΔCE on general text; each steering
    direction and α against its random directions of the same norm (reasondiff.intervene.report's rule)."""
    from reasondiff.intervene.report import beats_random, steering_against_random

    out = []
    for intervene in sorted(run_dir.glob("intervene*")):
        rows = _read(intervene / "intervene.csv")
        if not rows:
            continue

        def pick(rows: list[dict[str, str]] = rows, **want: str) -> list[dict[str, str]]:
            return [r for r in rows if all(r.get(k) == v for k, v in want.items())]

        body = []
        for kind in ("patch_set", "ablate_set"):
            own = [r for r in pick(text="reasoning", kind=kind, measure="kl_closed") if r["set_index"] == "0"]
            for r in sorted(own, key=lambda r: (r["selection"], int(r["size"] or 0))):
                random = [float(x["value"]) for x in pick(text="reasoning", kind=kind, measure="kl_closed",
                                                          size=r["size"], matched_to=r["selection"])
                          if x["set_index"] != "0" and x["value"] not in ("", None)]
                band = f"{100 * min(random):.1f} – {100 * max(random):.1f}" if random else "—"
                dce = pick(text="general", kind=kind, selection=r["selection"], size=r["size"], set_index="0",
                           measure="delta_ce")
                beats = "yes" if beats_random(rows, r)[0] else "no"
                body.append([kind, r["selection"], r["size"], f"{_f(r['value'], 1, 100)} [{_f(r['ci_low'], 1, 100)}, "
                             f"{_f(r['ci_high'], 1, 100)}]", band, beats,
                             _f(dce[0]["value"], 3) if dce else "—", r["n_contexts"]])
        ceiling = [r for r in pick(text="reasoning", measure="kl_closed") if r["kind"] not in ("patch_set", "ablate_set",
                                                                                               "steer")]
        extra = "\n".join(f"- {r['kind']} ({r['model']}): kl_closed {_f(r['value'], 1, 100)}% "
                          f"[{_f(r['ci_low'], 1, 100)}, {_f(r['ci_high'], 1, 100)}]" for r in ceiling)
        out.append(f"**{intervene.name}** (reasoning text; kl_closed % [95% bootstrap over contexts]; random = "
                   "min–max over frequency-matched random sets of the same size; beats = the interval's low end above "
                   "every random set)\n\n" + _table(["intervention", "selection", "latents", "KL closed %",
                                                     "random sets %", "beats random", "ΔCE general (nats)",
                                                     "contexts"], body) + ("\n\n" + extra if extra else ""))
        steer = steering_against_random(rows, "reasoning")
        if steer:
            out.append("Steering the base model (kl_closed on reasoning text; random = min–max over random directions "
                       "added with the same α and typical norm; beats = the interval's low end above every random "
                       "direction; ΔCE on general text)\n\n" + _table(
                           ["direction", "α", "KL closed %", "random directions %", "beats random", "ΔCE general"],
                           [[s["row"]["selection"], s["row"]["alpha"],
                             f"{_f(s['row']['value'], 1, 100)} [{_f(s['row']['ci_low'], 1, 100)}, "
                             f"{_f(s['row']['ci_high'], 1, 100)}]",
                             "—" if s["low"] != s["low"] else f"{100 * s['low']:.1f} – {100 * s['high']:.1f}",
                             "yes" if s["beats"] else "no",
                             next((_f(x["value"], 3) for x in pick(text="general", kind="steer", measure="delta_ce",
                                                                    selection=s["row"]["selection"],
                                                                    alpha=s["row"]["alpha"])), "—")]
                            for s in steer]))
    return "\n\n".join(out)


def bench_intervened(run: Path, out_dir: Path) -> list[Path]:
    """intervene's budget sweep (its own bench tables, a subfolder of the run) as <run>_bench_intervened_<file>."""
    sub = run / "bench_intervened"
    if not sub.is_dir():
        return []
    written = []
    for source in sorted(sub.iterdir()):
        if source.is_file() and source.suffix in v2.SMALL and source.stat().st_size <= v2.MAX_BYTES:
            target = out_dir / ("figures" if source.suffix in (".png", ".pdf") else "results") / \
                f"{run.name}_bench_intervened_{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            written.append(target)
    return written


def tables(run_dir: Path, out_dir: Path) -> Path:
    text = ("# Tables of the v3 run (generated by collect.py from outputs/qwen05b_cpu_v3)\n\n"
            "## Layer scan (run 1)\n\n" + scan_table(run_dir)
            + "\n\n## Table 1 analogue\n\n" + v2.table1(run_dir)
            + "\n\n## Table 2 analogue\n\n" + v2.table2(run_dir)
            + "\n\n## Crosscoders\n\n" + v2.crosscoders(run_dir)
            + "\n\n## Calibrated model-specific latents\n\n" + calibration(run_dir)
            + "\n\n## Spread of the relative decoder norm against the null\n\n" + relative_norm_spread(run_dir)[0]
            + "\n\n## Causal tests\n\n" + intervene_table(run_dir) + "\n")
    target = out_dir / "results" / "tables.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


if __name__ == "__main__":
    v2.main(sys.argv, __doc__, HERE, steps=(bench_intervened,), write_tables=tables)
