"""The intervene stage: causal tests of what the diff found, at the crosscoder's hook.

Recipe (`run`):
  1. read what analyze read and wrote: its crosscoder, hook and position rules (analyze's manifest), its
     latent table (latents.csv), both models, and the same held-out general text and reasoning
     conversations (reasondiff.analyze's public readers, so the texts follow analyze's);
  2. the Activation Difference Lens (adl.py): tuned − base over the first k positions of each text, its
     logit lens through each model (adl_tokens.csv, adl_vectors.safetensors);
  3. the latent sets (selection.py): every rule at every size, each with frequency-matched random sets;
  4. one streamed, resumable pass per text (passes.py): every intervention — patch_set and ablate_set of
     every set, the whole residual patched (the ceiling), steering along each direction at each α — scored
     against both clean models; intervene.csv with 95% bootstrap intervals over contexts;
  5. the budget sweep of the intervened models (budget.py): bench_intervened/ in the bench's own schema;
  6. figures (plots.py), report_section.md (report.py), included in analyze's report, which is rebuilt.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from reasondiff.config import Config
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.core.streamed_pass import PassState, resumable_pass
from reasondiff.crosscoder.geometry import TUNED
from reasondiff.intervene.adl import ADL_TOKEN_COLUMNS, DifferenceMeans, adl_token_rows
from reasondiff.intervene.edits import Direction, Intervention, random_directions
from reasondiff.intervene.measures import MEASURES, InterventionMeter
from reasondiff.intervene.passes import Runner, Site, first_position_differences, intervention_batch
from reasondiff.intervene.selection import LatentTable, latent_sets, mean_frequency, ranked, read_latent_table
from reasondiff.intervene.tables import write_csv

log = logging.getLogger(__name__)

INTERVENE_COLUMNS = ["text", "kind", "model", "selection", "matched_to", "size", "set_index", "alpha", "measure",
                     "value", "ci_low", "ci_high", "n_tokens", "n_contexts", "mean_frequency", "latents"]
TEXTS = ("reasoning", "general")


# --- inputs ------------------------------------------------------------------------------------------

def analyze_inputs(cfg: Config) -> dict[str, Any]:
    """What the finished analyze run read: its crosscoder, hook and position rules (its manifest)."""
    manifest = cfg.stage_dir("analyze") / artifacts.MANIFEST
    if not manifest.is_file():
        raise UserError(f"{manifest.parent}: analyze has not finished; run `python -m reasondiff.analyze` first")
    return artifacts.read_json(manifest).get("inputs", {})


def read_texts(cfg: Config, tokenizer, tuned_tokenizer, store) -> dict[str, Any]:
    """analyze's texts (its readers, its sources, the reasoning text rendered by the tuned model's tokenizer as
    analyze renders it), with intervene's counts and context length."""
    from reasondiff import analyze

    i = cfg.intervene
    text_cfg = dataclasses.replace(cfg, analyze=dataclasses.replace(
        cfg.analyze, n_heldout_contexts=i.n_general_contexts, n_reasoning_contexts=i.n_reasoning_contexts,
        context_length=i.context_length))
    texts = {}
    if i.n_reasoning_contexts:
        reasoning = analyze.reasoning_contexts(text_cfg, tuned_tokenizer)
        if reasoning is not None:
            texts["reasoning"] = reasoning
        else:
            log.warning("intervene: no reasoning text (analyze.reasoning_text gave none): KL fractions are read on "
                        "general text")
    texts["general"] = analyze.Contexts.packed("general", analyze.heldout_contexts(text_cfg, tokenizer, store))
    return texts


def adl_window(cfg: Config, text) -> str:
    """Where the ADL window of a text starts: `assistant` (the reasoning conversations under
    intervene.adl_reasoning_window=assistant: at each assistant turn's first token, the reference's placement
    on chat data) or `start` (the context's first tokens: general text, or the old reasoning window)."""
    if text.name != "reasoning" or cfg.intervene.adl_reasoning_window == "start":
        return "start"
    if text.assistant_starts is None:
        raise UserError("intervene.adl_reasoning_window=assistant: the reasoning text does not say where its assistant "
                        "turns start (set intervene.adl_reasoning_window=start to read its first tokens)")
    return "assistant"


def trimmed(text, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """The contexts `rows` cut after the longest one's last real token (no all-padding columns)."""
    valid = text.valid[rows]
    length = max(2, int(valid.sum(dim=1).max()))
    return text.input_ids[rows, :length], valid[:, :length]


# --- steering directions -----------------------------------------------------------------------------

def directions_of(cfg: Config, adl: dict[str, DifferenceMeans], table: LatentTable, crosscoder) -> dict[str, Direction]:
    """The steering directions by name, and the random directions that are their null (edits.random_directions:
    intervene.n_random_directions per steering direction, keyed by edits.random_key)."""
    i = cfg.intervene
    out = {}
    for name in i.steer_directions + [i.bench_steer_direction]:
        if name in out:
            continue
        if name.startswith("adl_"):
            means = adl.get(name.removeprefix("adl_"))
            if means is None:
                continue
            vector = means.pooled() if i.adl_steer_position is None else means.per_position()[i.adl_steer_position]
            out[name] = Direction(vector, float(vector.norm()))
        else:  # top_latent: the most tuned-leaning live latent's tuned decoder vector, raw units
            order, _ = ranked(table, "tuned_r")
            if not order:
                continue
            latent = order[0]
            scale = float(crosscoder.scaling_factors[TUNED])
            vector = crosscoder.W_dec[latent, TUNED].detach().float().cpu() / scale
            mean_activation = table.mean_activation[latent]
            out[name] = Direction(vector, float(vector.norm()) * (float(mean_activation) if mean_activation == mean_activation
                                                                  else 1.0))
    return {**out, **random_directions(out, i.steer_directions, i.n_random_directions, cfg.seed)}


# --- the interventions -----------------------------------------------------------------------------

def interventions_of(cfg: Config, table: LatentTable, directions: dict[str, Direction]) -> tuple[list[Intervention], dict]:
    i = cfg.intervene
    sets, skipped = latent_sets(table, i.selections, i.set_sizes, n_random=i.n_random_sets, pool=i.random_match_pool,
                                seed=cfg.seed)
    every = tuple(range(table.n_latents))
    out = [Intervention("patch_residual", "base", "whole_residual"),
           Intervention("patch_set", "base", "all", len(every), latents=every),
           Intervention("ablate_set", "tuned", "all", len(every), latents=every)]
    for s in sets:
        for kind, model in (("patch_set", "base"), ("ablate_set", "tuned")):
            out.append(Intervention(kind, model, s.selection, s.size, s.set_index, s.latents, matched_to=s.matched_to))
    for name in i.steer_directions:
        if name in directions:
            out += [Intervention("steer", "base", name, alpha=alpha) for alpha in i.steer_alphas]
            out += [Intervention("steer", "base", "random", set_index=index, alpha=alpha, matched_to=name)
                    for index in range(1, i.n_random_directions + 1) for alpha in i.steer_alphas]
        else:
            skipped[f"steer:{name}"] = "no such direction (no reasoning text, or no live latent)"
    return out, skipped


def intervention_rows(text: str, meter: InterventionMeter, interventions: list[Intervention], table: LatentTable,
                      cfg: Config) -> list[dict[str, Any]]:
    i = cfg.intervene
    scored = meter.rows([iv.name for iv in interventions], n_bootstrap=i.bootstrap_samples, seed=cfg.seed,
                        min_kl=i.min_kl)
    rows = []
    for iv, result in zip(interventions, scored, strict=True):
        latents = "" if iv.selection == "all" else " ".join(map(str, iv.latents))
        meta = {"text": text, "kind": iv.kind, "model": iv.model, "selection": iv.selection, "matched_to": iv.matched_to,
                "size": iv.size, "set_index": iv.set_index, "alpha": iv.alpha if iv.kind == "steer" else "",
                "n_tokens": result["n_tokens"], "n_contexts": result["n_contexts"],
                "mean_frequency": mean_frequency(table, iv.latents) if iv.latents and iv.selection != "all" else "",
                "latents": latents}
        for measure in MEASURES:
            rows.append({**meta, "measure": measure, "value": result[measure], "ci_low": result[f"{measure}_ci_low"],
                         "ci_high": result[f"{measure}_ci_high"]})
    return rows


def best_selection(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The selection whose own patch_set closes the most KL at its largest size (reasoning text when read)."""
    texts = {r["text"] for r in rows}
    text = "reasoning" if "reasoning" in texts else "general"
    own = [r for r in rows if r["text"] == text and r["kind"] == "patch_set" and r["measure"] == "kl_closed"
           and r["set_index"] == 0 and r["selection"] not in ("all",) and r["value"] == r["value"]]
    if not own:
        return None
    largest: dict[str, dict] = {}
    for r in own:
        if r["selection"] not in largest or r["size"] > largest[r["selection"]]["size"]:
            largest[r["selection"]] = r
    return max(largest.values(), key=lambda r: r["value"])


# --- the stage -----------------------------------------------------------------------------------

def run(cfg: Config, ctx) -> dict[str, Any]:
    from reasondiff import analyze
    from reasondiff.crosscoder.model import load_crosscoder
    from reasondiff.lm.models import parse_hook, resolve_device

    i = cfg.intervene
    device = resolve_device(cfg.hardware)

    # 1. what analyze read
    inputs = analyze_inputs(cfg)
    cc_dir = Path(inputs.get("crosscoder_dir") or analyze.crosscoder_dir(cfg))
    analyze.check_crosscoder_format(cc_dir)
    crosscoder = load_crosscoder(cc_dir, device=device)
    table = read_latent_table(cfg.stage_dir("analyze") / "latents.csv", crosscoder.cfg.n_latents,
                              crosscoder.designated_shared.cpu().numpy())
    models, tokenizer, tuned_tokenizer = analyze.load_models(cfg, device)
    hook = parse_hook(inputs.get("hook") or cfg.harvest.hook, models[0].config.num_hidden_layers)
    keep_first = bool(inputs.get("exclude_first_position", cfg.harvest.drop_first_position))
    max_norm_ratio = inputs.get("max_norm_ratio")
    site = Site(hook, keep_first, max_norm_ratio)
    store = analyze.open_harvest(cfg)
    texts = read_texts(cfg, tokenizer, tuned_tokenizer, store)
    ctx.inputs.update({"crosscoder_dir": str(cc_dir), "hook": hook.name, "exclude_first_position": keep_first,
                       "max_norm_ratio": max_norm_ratio, "latent_table": str(cfg.stage_dir("analyze") / "latents.csv"),
                       "n_contexts": {name: len(t) for name, t in texts.items()}})
    runners = [Runner.for_model(m, hook, texts["general"].input_ids) for m in models]
    batch = cfg.hardware.analyze_batch_size

    # 2. the Activation Difference Lens
    adl: dict[str, DifferenceMeans] = {}
    medians = []
    windows = {name: adl_window(cfg, text) for name, text in texts.items()}
    for name, text in texts.items():
        adl[name] = DifferenceMeans(i.adl_positions, crosscoder.cfg.d_model)
        for lo in range(0, len(text), batch):
            ids, valid = trimmed(text, slice(lo, lo + batch))
            starts = text.assistant_starts[lo:lo + batch] if windows[name] == "assistant" else None
            part = first_position_differences(runners, ids, valid, site, i.adl_positions, starts)
            adl[name].update(part)
            if name == "general":
                medians.append(part["median_norm"])
        if adl[name].skipped:
            log.warning("intervene: ADL of %s text: %d of %d contexts skipped (fewer than %d tokens of the assistant "
                        "turn in the context)", name, int(adl[name].skipped), len(text), i.adl_positions)
    decode = _decoder(tokenizer)
    adl_rows = [row for name, means in adl.items()
                for row in adl_token_rows(name, means, {"base": models[0], "tuned": models[1]}, decode, i.n_logit_tokens,
                                          windows[name])]
    write_csv(ctx.dir / "adl_tokens.csv", adl_rows, ADL_TOKEN_COLUMNS)
    _save_vectors(ctx.dir / "adl_vectors.safetensors", adl)

    # 3. sets and directions
    directions = directions_of(cfg, adl, table, crosscoder)
    interventions, skipped = interventions_of(cfg, table, directions)
    for what, why in skipped.items():
        log.warning("intervene: %s skipped: %s", what, why)
    log.info("intervene: %d interventions per context (%d latent sets)", len(interventions),
             sum(iv.kind == "patch_set" for iv in interventions) - 1)

    # 4. the text passes
    weights = cc_dir / "crosscoder.safetensors"
    common = {"crosscoder": [str(weights.resolve()), weights.stat().st_size, weights.stat().st_mtime_ns],
              "site": [hook.name, keep_first, max_norm_ratio], "batch_size": batch,
              "interventions": [[iv.name, list(iv.latents), iv.alpha] for iv in interventions],
              "directions": {k: [float(v.direction.norm()), v.typical_norm, v.seed] for k, v in directions.items()}}
    rows = []
    for name, text in texts.items():
        meter = InterventionMeter(len(text), len(interventions))

        def step(part: slice, text=text, meter=meter) -> None:
            ids, valid = trimmed(text, part)
            intervention_batch(runners, ids, valid, site, crosscoder, interventions, meter,
                               context_index=torch.arange(part.start, part.stop), directions=directions)

        state = PassState(ctx.dir / f"partial_{name}.pt", {"text": text.digest(), **common}, {"sums": meter})
        resumable_pass(state, len(text), batch, step, checkpoint_every=i.checkpoint_every,
                       checkpoint_minutes=i.checkpoint_minutes,
                       desc=f"intervene {name} ({len(interventions)} interventions)")
        rows += intervention_rows(name, meter, interventions, table, cfg)
    write_csv(ctx.dir / "intervene.csv", rows, INTERVENE_COLUMNS)
    best = best_selection(rows)
    outputs: dict[str, Any] = {"n_interventions": len(interventions), "skipped": skipped,
                               "adl": {name: {"window": windows[name], "n_skipped": int(means.skipped)}
                                       for name, means in adl.items()},
                               "best_selection": {k: best[k] for k in ("selection", "size", "value", "ci_low", "ci_high")}
                               if best else None}

    # 5. budget sweeps of the intervened models
    if i.bench and best is not None:
        from reasondiff.intervene.budget import run_sweep, sweep_config

        sweep_cfg = sweep_config(cfg)
        limits = None if max_norm_ratio is None else tuple(float(max_norm_ratio) * float(v)
                                                            for v in torch.stack(medians).nanmedian(dim=0).values)
        control = random_control(rows, best)
        variants = budget_variants(sweep_cfg, models, (tokenizer, tuned_tokenizer), hook, crosscoder, keep_first, limits,
                                   best, directions, control)
        outputs["bench"] = {k: v for k, v in run_sweep(sweep_cfg, ctx.dir / "bench_intervened", variants).items()
                            if k in ("vs_clean", "format", "n_questions", "token_limits")}
    elif i.bench:
        log.warning("intervene: no selection closed a measurable KL gap: no budget sweep")

    # 6. figures and the report section
    from reasondiff.intervene import plots, report

    plots.kl_closed_figure(rows, ctx.dir / "kl_closed.png")
    if any(r["kind"] == "steer" for r in rows):
        plots.steering_figure(rows, ctx.dir / "steering.png")
    report.write_section(ctx.dir, cfg, rows, adl_rows, best, hook=hook.name)
    analyze_dir = cfg.stage_dir("analyze")
    if (analyze_dir / "report.md").is_file():
        analyze.rebuild_report(cfg.exp_dir, analyze_dir, running="intervene", **analyze.report_arguments(cfg))
    for name in TEXTS:
        (ctx.dir / f"partial_{name}.pt").unlink(missing_ok=True)
    outputs["files"] = sorted(p.name for p in ctx.dir.iterdir() if p.is_file() and not p.name.startswith("."))
    return outputs


def random_control(rows: list[dict[str, Any]], best: dict[str, Any]) -> tuple[int, ...] | None:
    """The latents of the first random set matched to the best selection at its size (the sweep's null)."""
    for r in rows:
        if r["kind"] == "patch_set" and r["selection"] == "random" and r["matched_to"] == best["selection"] \
                and r["size"] == best["size"] and r["set_index"] == 1 and r["latents"]:
            return tuple(int(x) for x in str(r["latents"]).split())
    return None


def budget_variants(cfg: Config, models, tokenizers, hook, crosscoder, keep_first: bool, norm_limits, best: dict,
                    directions: dict[str, Direction], control: tuple[int, ...] | None = None) -> list:
    """base, tuned, base+patch_set (the best set), base+steer (ADL), tuned+ablate_set (the best set), and with
    intervene.bench_random_control the same patch and ablation of a frequency-matched random set of its size."""
    from reasondiff.intervene.budget import Variant, model_specs
    from reasondiff.intervene.live import live_intervention

    i = cfg.intervene
    specs = model_specs(cfg)
    base_spec, tuned_spec = specs["base"], specs["tuned"]
    latents = tuple(int(x) for x in str(best["latents"]).split())
    patch = Intervention("patch_set", "base", best["selection"], len(latents), latents=latents)
    ablate = Intervention("ablate_set", "tuned", best["selection"], len(latents), latents=latents)
    direction = i.bench_steer_direction if i.bench_steer_direction in directions else "adl_general"
    steer = Intervention("steer", "base", direction, alpha=i.bench_steer_alpha)

    def hold(iv: Intervention, model, partner, prompt_only: bool = False):
        return lambda: live_intervention(model, hook, iv, crosscoder, partner=partner, keep_first=keep_first,
                                         norm_limits=norm_limits, directions=directions, prompt_only=prompt_only)

    described = {"hook": hook.name, "keep_first": keep_first, "norm_limits": norm_limits}
    base_tok, tuned_tok = tokenizers
    variants = [Variant("base", base_spec, models[0], base_tok), Variant("tuned", tuned_spec, models[1], tuned_tok),
                Variant("base+patch_set", base_spec, models[0], base_tok, hold(patch, models[0], models[1]),
                        {**described, "intervention": patch.name, "latents": list(latents)}, reference="base")]
    if direction in directions:
        prompt_only = i.bench_steer_positions == "prompt"
        vector = directions[direction].vector(i.bench_steer_alpha)
        variants.append(Variant("base+steer", base_spec, models[0], base_tok, hold(steer, models[0], None, prompt_only),
                                {**described, "intervention": steer.name, "positions": i.bench_steer_positions,
                                 "vector_norm": float(vector.norm())}, reference="base"))
    variants.append(Variant("tuned+ablate_set", tuned_spec, models[1], tuned_tok, hold(ablate, models[1], models[0]),
                            {**described, "intervention": ablate.name, "latents": list(latents)}, reference="tuned"))
    if i.bench_random_control and control:
        for label, kind, model, partner, spec, tok, reference in (
                ("base+patch_random", "patch_set", models[0], models[1], base_spec, base_tok, "base"),
                ("tuned+ablate_random", "ablate_set", models[1], models[0], tuned_spec, tuned_tok, "tuned")):
            iv = Intervention(kind, "base" if kind == "patch_set" else "tuned", "random", len(control), 1, control,
                              matched_to=best["selection"])
            variants.append(Variant(label, spec, model, tok, hold(iv, model, partner),
                                    {**described, "intervention": iv.name, "latents": list(control)}, reference=reference))
    return variants


def _decoder(tokenizer):
    def decode(token: int) -> str:
        return tokenizer.decode([int(token)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return decode


def _save_vectors(path: Path, adl: dict[str, DifferenceMeans]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, means in adl.items():
        tensors[f"{name}.per_position"] = means.per_position().contiguous()
        tensors[f"{name}.mean"] = means.pooled().contiguous()
    artifacts.atomic_save(path, lambda tmp: save_file(tensors, tmp))
