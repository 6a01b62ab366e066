"""Stage 5, analyze: what the crosscoder says about reasoning fine-tuning.

Recipe (`run`):
  1. load the crosscoder (train stage's format) and both models; decoder geometry needs no data:
     relative decoder norm, cosine, provisional classes;
  2. one streamed pass over HELD-OUT general text (documents harvest never used): CE/KL recovery per
     model under both conventions, explained variance, activation statistics, top-activating
     contexts, Latent Scaling sums;
  3. the same pass over reasoning conversations in the fine-tune's layout (chat template, s1 think /
     answer delimiters; texts.py), without Latent Scaling;
  4. tables (ce_recovery.csv, reconstruction.csv, latents.csv, class_counts.csv, class_frequency.csv,
     latent_scaling_summary.csv, scaling_factors.csv), figures, latents.html and report.md.
Passes 2-3 checkpoint their streaming sums (per context, so bootstrap intervals survive a resume)
every `analyze.checkpoint_every` batches; a killed run resumes from there. Under torchrun each rank
runs a block of the passes' batches and the per-context sums are merged before the bootstrap
(reasondiff.core.streamed_pass), so the intervals are a single process's; rank 0 writes the tables.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from reasondiff.analyze.calibration import calibrate
from reasondiff.analyze.ce_recovery import (
    CE_COLUMNS,
    CERecoveryMeter,
    ce_recovery_batch,
)
from reasondiff.analyze.contexts import (
    ActivationHistogram,
    LatentCard,
    LatentStats,
    TopContexts,
    token_strings,
    window_example,
)
from reasondiff.analyze.latent_page import FACT_FORMATS, render_latents_html
from reasondiff.analyze.latent_scaling import LatentScaling, beta_columns
from reasondiff.analyze.logit_effects import LOGIT_COLUMNS, group_logit_rows, logit_effect_rows
from reasondiff.analyze.report import ce_table_markdown, read_csv_rows, write_csv, write_reports
from reasondiff.analyze.texts import Contexts, reasoning_conversations
from reasondiff.config import Config
from reasondiff.core import artifacts, distributed
from reasondiff.core.errors import UserError
from reasondiff.core.streamed_pass import PassState, resumable_pass
from reasondiff.core.tracking import require_finite
from reasondiff.crosscoder.geometry import (
    BASE,
    LATENT_CLASSES,
    TUNED,
    classify_latents,
    classify_latents_delta,
    decoder_cosine,
    decoder_norms,
    delta_norm,
    relative_decoder_norm,
)
from reasondiff.crosscoder.loss import ExplainedVarianceMeter

log = logging.getLogger(__name__)

LATENT_COLUMNS = ["latent", "class", "class_delta", "relative_norm", "delta_norm", "cosine", "decoder_norm_base",
                  "decoder_norm_tuned",
                  "freq_general", "freq_reasoning", "mean_activation", "max_activation", *beta_columns()]
MODEL_NAMES = ("base", "tuned")
TEXTS = ("general", "reasoning")
CANDIDATE_FACTOR = 4
"""Top contexts are tracked for this many times the latents shown (some candidates never fire)."""


# --- inputs ------------------------------------------------------------------------------------

def crosscoder_dir(cfg: Config) -> Path:
    return Path(cfg.analyze.crosscoder_dir) if cfg.analyze.crosscoder_dir else cfg.stage_dir("train")


def report_arguments(cfg: Config) -> dict[str, Any]:
    """What the report says of the run itself: the overrides its suggested commands carry, and the
    tuned model when it was given rather than fine-tuned here (analyze and intervene both write it)."""
    from reasondiff.app.commands import command_args
    from reasondiff.app.preflight import tuned_model_given

    return {"command_args": command_args(cfg, drop=("overwrite", "run", "pipeline.")),
            "given_tuned_model": cfg.tuned_model if tuned_model_given(cfg) else None}


def check_crosscoder_format(directory: Path) -> None:
    """A crosscoder in another tool's format is converted first (its normaliser must be folded in)."""
    from reasondiff.crosscoder.convert import detect_format

    if directory.is_dir() and not (directory / "crosscoder.safetensors").is_file():
        try:
            fmt = detect_format(directory)
        except UserError:
            return  # not a crosscoder at all: load_crosscoder names what is missing
        raise UserError(f"analyze.crosscoder_dir={directory} holds a {fmt} crosscoder: convert it first, "
                        f"`python -m reasondiff.convert {directory} OUT` (add --scaling-factors for Kissane's), "
                        "and set analyze.crosscoder_dir=OUT")


def open_harvest(cfg: Config):
    """The harvest store (its hook, documents used, first-position policy), or None when absent."""
    harvest_dir = cfg.stage_dir("harvest")
    if not artifacts.is_complete(harvest_dir):
        return None
    from reasondiff import harvest
    return harvest.ActivationStore.open(harvest_dir)


def live_documents_touched(cc_dir: Path) -> int | None:
    """Corpus documents a crosscoder trained on a live stream (train.data=live) read, from train's
    summary.json; None when it was not trained live. -1 when unknown (its stream went round the
    whole corpus, or it predates the record): no corpus document is then held out for sure."""
    config, summary = cc_dir / "config.json", cc_dir / "summary.json"
    if not config.is_file() or artifacts.read_json(config).get("data") != "live":
        return None
    touched = artifacts.read_json(summary).get("documents_touched") if summary.is_file() else None
    return int(touched) if touched is not None else -1


def heldout_contexts(cfg: Config, tokenizer, store, cc_dir: Path | None = None) -> torch.Tensor:
    """General-text contexts the crosscoder never trained on: the harvest corpus after the documents
    harvest used (and, for a crosscoder trained on a live stream, after the documents that stream
    read), or `analyze.heldout_corpus` from its start."""
    from dataclasses import replace

    from reasondiff import harvest
    a = cfg.analyze
    harvest_cfg, documents_used = cfg.harvest, 0
    live = live_documents_touched(cc_dir) if cc_dir is not None else None
    if a.heldout_corpus:
        harvest_cfg = replace(cfg.harvest, corpus=a.heldout_corpus, reasoning_fraction=0.0, reasoning_corpus=None)
    elif live is not None:
        harvest_cfg = replace(cfg.harvest, reasoning_fraction=0.0, reasoning_corpus=None)
        documents_used = max(live, int(store.manifest["documents_used"]) if store is not None else 0)
        if live < 0:
            log.warning("the crosscoder in %s was trained on a live stream that read the whole of harvest.corpus "
                        "(or records no position): its held-out general text may be training text; set "
                        "analyze.heldout_corpus to text it never saw", cc_dir)
    elif store is not None:
        harvest_cfg = replace(cfg.harvest, reasoning_fraction=0.0, reasoning_corpus=None)
        documents_used = int(store.manifest["documents_used"])
    else:
        log.warning("no finished harvest store in %s: cannot tell which corpus documents trained the "
                    "crosscoder; set analyze.heldout_corpus to text it never saw", cfg.stage_dir("harvest"))
    return harvest.heldout_contexts(harvest_cfg, tokenizer, a.n_heldout_contexts, a.context_length, documents_used=documents_used)


def reasoning_contexts(cfg: Config, tokenizer) -> Contexts | None:
    """Reasoning conversations in the fine-tune's chat layout, one per context, from
    `analyze.reasoning_text`: held-out rows (default), on-policy generations or a file (None when
    analyze.n_reasoning_contexts=0)."""
    from dataclasses import replace

    a = cfg.analyze
    if a.n_reasoning_contexts == 0:
        return None
    if a.reasoning_text == "on_policy":
        from reasondiff import bench
        from reasondiff.analyze.texts import padded_conversations

        text = bench.on_policy_conversations(cfg, tokenizer, n_contexts=a.n_reasoning_contexts,
                                             context_length=a.context_length, config_key="analyze.reasoning_text")
        return padded_conversations(text.conversations, tokenizer, text.prompt_lengths, label="on-policy",
                                    source=text.source)
    from reasondiff import finetune

    found = finetune.reasoning_rows(cfg, "analyze", max_rows=20 * a.n_reasoning_contexts)
    key = "analyze.reasoning_corpus" if a.reasoning_text == "file" else "finetune.dataset (held-out rows)"
    contexts = reasoning_conversations(iter(found.rows), tokenizer, cfg.format, n_contexts=a.n_reasoning_contexts,
                                       context_length=a.context_length, trace_source=cfg.finetune.trace_source,
                                       config_key=key)
    return replace(contexts, label=found.label, source=found.source)


def load_models(cfg: Config, device: torch.device):
    from reasondiff.lm.models import check_compatible, load_model

    base, base_tok = load_model(cfg.model.path, cfg.hardware, config_key="model.path", revision=cfg.model.revision,
                                device=device, trust_remote_code=cfg.model.trust_remote_code)
    tuned, tuned_tok = load_model(cfg.tuned_model, cfg.hardware, config_key="tuned_model", device=device,
                                  trust_remote_code=cfg.model.trust_remote_code)
    check_compatible(base, tuned, base_tok, tuned_tok)
    return (base, tuned), base_tok, tuned_tok


# --- latent selection ----------------------------------------------------------------------------

def extreme_latents(relative_norm: torch.Tensor, side: str, n: int, *, shared_min: float, shared_max: float) -> list[int]:
    """The n most base-leaning (lowest r, below the shared band) or tuned-leaning (highest r, above
    it) latents, whatever their class: after a short fine-tune the strict base-/tuned-only classes
    can be empty while the latents just outside the shared band are the ones worth reading."""
    if side == "tuned":
        idx = [i for i, r in enumerate(relative_norm.tolist()) if r > shared_max]
    else:
        idx = [i for i, r in enumerate(relative_norm.tolist()) if r < shared_min]
    idx.sort(key=lambda i: relative_norm[i].item(), reverse=side == "tuned")
    return idx[:n]


def sample_latents(classes: list[str], latent_class: str, n: int, seed: int) -> list[int]:
    idx = [i for i, c in enumerate(classes) if c == latent_class]
    return sorted(random.Random(seed).sample(idx, min(n, len(idx))))


# --- streamed passes -----------------------------------------------------------------------------

def _flat(t: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> [N, ...] over the positions that count (see ce_recovery.counted_positions)."""
    return t[counted.to(t.device)]


def _zero_uncounted(f: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Latents [B, T, F] with the positions that do not count zeroed (they never top a context)."""
    return f * counted.to(device=f.device, dtype=f.dtype).unsqueeze(-1)


def _fingerprint(cfg: Config, texts: Contexts, cc_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    weights = cc_dir / "crosscoder.safetensors"
    stat = weights.stat()
    return {"contexts_sha1": texts.digest(), "contexts_shape": list(texts.input_ids.shape),
            "batch_size": cfg.hardware.analyze_batch_size, "crosscoder": [str(weights.resolve()), stat.st_size, stat.st_mtime_ns],
            **extra}


def _resumable_pass(cfg: Config, state: PassState, n_contexts: int, step, *, desc: str) -> dict:
    return resumable_pass(state, n_contexts, cfg.hardware.analyze_batch_size, step,
                          checkpoint_every=cfg.analyze.checkpoint_every,
                          checkpoint_minutes=cfg.analyze.checkpoint_minutes, desc=desc)


def partial_file(ctx_dir: Path, text: str) -> Path:
    return ctx_dir / f"partial_{text}.pt"


def run_text_pass(cfg: Config, ctx_dir: Path, texts: Contexts, models, crosscoder, hook, *, keep_first: bool,
                  max_norm_ratio: float | None, candidates: list[int], scaling: LatentScaling | None,
                  fingerprint: dict) -> dict:
    """One streamed pass over `texts`: CE/KL recovery (both conventions, per-context sums), held-out
    explained variance, latent statistics, top contexts and (general text) Latent Scaling sums."""
    F = crosscoder.cfg.n_latents
    parts: dict[str, Any] = {"ce": CERecoveryMeter(len(texts), MODEL_NAMES), "stats": LatentStats(F),
                             "reconstruction": ExplainedVarianceMeter(),
                             "top": TopContexts(candidates, cfg.analyze.n_contexts_per_latent, texts.length),
                             "histogram": ActivationHistogram(candidates)}
    if scaling is not None:
        parts["scaling"] = scaling

    def step(rows: slice) -> None:
        out = ce_recovery_batch(models, texts.input_ids[rows], hook, crosscoder, parts["ce"],
                                context_index=torch.arange(rows.start, rows.stop), keep_first=keep_first,
                                max_norm_ratio=max_norm_ratio, valid=texts.valid[rows])
        f, counted = out["f"], out["counted"]
        parts["stats"].update(_flat(f, counted))
        parts["reconstruction"].update(_flat(out["x_norm"], counted), _flat(out["recon_norm"], counted))
        parts["top"].update(_zero_uncounted(f, counted), torch.arange(rows.start, rows.stop))
        parts["histogram"].update(_flat(f, counted))
        if scaling is not None:
            scaling.update(_flat(f, counted), _flat(out["x_norm"], counted), _flat(out["recon_norm"], counted))

    what = "held-out general text" if texts.name == "general" else "reasoning conversations"
    return _resumable_pass(cfg, PassState(partial_file(ctx_dir, texts.name), fingerprint, parts), len(texts), step,
                           desc=f"{what} (CE/KL recovery, latents)")


# --- tables --------------------------------------------------------------------------------------

def _num(x: float) -> float | str:
    return "" if x != x else x  # NaN -> empty cell, so the CSV reads cleanly in pandas/spreadsheets


RECONSTRUCTION_COLUMNS = ("text", "text_source", "model", "explained_variance", "l0", "n_tokens")


def reconstruction_rows(meter: ExplainedVarianceMeter, stats: LatentStats, text: str = "general") -> list[dict[str, Any]]:
    """Held-out fit of the crosscoder: explained variance per model and of both together (1 − FVU),
    and L0 (active latents per token) — on text the crosscoder never trained on, unlike train's metrics."""
    l0 = float(stats.n_active.sum()) / max(int(stats.n_tokens), 1)
    ev = meter.explained_variance().tolist()
    rows = [{"model": name, "explained_variance": v} for name, v in zip(MODEL_NAMES, ev, strict=True)]
    rows.append({"model": "both", "explained_variance": 1.0 - meter.fvu()})
    return [{"text": text, **row, "l0": l0, "n_tokens": meter.count} for row in rows]


def latent_rows(relative_norm, cosine, norms, classes, stats_general: LatentStats, stats_reasoning: LatentStats | None,
                scaling: LatentScaling | None, *, delta=None, classes_delta=None) -> list[dict[str, Any]]:
    freq_g, mean_g, max_g = stats_general.frequency(), stats_general.mean_activation(), stats_general.max_activation
    freq_r = stats_reasoning.frequency() if stats_reasoning is not None else None
    betas: dict[int, dict[str, float]] = {}
    if scaling is not None:
        values = scaling.betas()
        for j, latent in enumerate(scaling.latents.tolist()):
            betas[latent] = {k: float(v[j]) for k, v in values.items()}
    rows = []
    for i, cls in enumerate(classes):
        row = {"latent": i, "class": cls, "class_delta": classes_delta[i] if classes_delta is not None else "",
               "relative_norm": _num(float(relative_norm[i])),
               "delta_norm": _num(float(delta[i])) if delta is not None else "", "cosine": _num(float(cosine[i])),
               "decoder_norm_base": float(norms[i, BASE]), "decoder_norm_tuned": float(norms[i, TUNED]),
               "freq_general": float(freq_g[i]), "freq_reasoning": _num(float(freq_r[i])) if freq_r is not None else "",
               "mean_activation": _num(float(mean_g[i])), "max_activation": float(max_g[i])}
        row.update({k: _num(v) for k, v in betas.get(i, {}).items()})
        rows.append(row)
    return rows


CLASS_COUNT_COLUMNS = ["class", "n_latents", "fraction", "n_latents_delta", "fraction_delta"]


def class_count_rows(classes: list[str], classes_delta: list[str] | None = None) -> list[dict[str, Any]]:
    """Latents per class by r (the paper's bands) and, beside them, by Minder et al.'s Δ bins."""
    n = len(classes)
    rows = []
    for c in LATENT_CLASSES:
        row = {"class": c, "n_latents": classes.count(c), "fraction": classes.count(c) / max(n, 1)}
        if classes_delta is not None:
            row.update(n_latents_delta=classes_delta.count(c), fraction_delta=classes_delta.count(c) / max(n, 1))
        rows.append(row)
    return rows


def class_frequency_rows(classes: list[str], freq_general: torch.Tensor, freq_reasoning: torch.Tensor) -> list[dict[str, Any]]:
    """Does each class fire more on reasoning traces than on general text?"""
    rows = []
    for c in LATENT_CLASSES[:-1]:  # dead latents fire nowhere
        idx = torch.tensor([i for i, k in enumerate(classes) if k == c], dtype=torch.long)
        if len(idx) == 0:
            rows.append({"class": c, "n_latents": 0})
            continue
        g, r = freq_general[idx].double(), freq_reasoning[idx].double()
        rows.append({"class": c, "n_latents": len(idx), "mean_freq_general": float(g.mean()),
                     "mean_freq_reasoning": float(r.mean()),
                     "reasoning_over_general": float(r.mean() / g.mean()) if g.mean() > 0 else float("inf"),
                     "frac_latents_more_on_reasoning": float((r > g).double().mean())})
    return rows


SCALING_FACTOR_COLUMNS = ("model", "scaling_factor", "relative_to_base", "mean_norm")


def scaling_factor_rows(scaling_factors: torch.Tensor, harvest_stats: dict | None) -> list[dict[str, Any]]:
    """Each model's norm scaling factor (raw activation × factor = the crosscoder's input) and its
    ratio to the base model's; `mean_norm` is harvest's mean raw activation norm when known."""
    s = [float(v) for v in scaling_factors]
    mean_norm = (harvest_stats or {}).get("mean_norm") or [""] * len(s)
    return [{"model": name, "scaling_factor": s[m], "relative_to_base": s[m] / s[0], "mean_norm": mean_norm[m]}
            for m, name in enumerate(MODEL_NAMES)]


def latent_scaling_summary(classes: list[str], scaling: LatentScaling, specific_ratio_max: float) -> list[dict[str, Any]]:
    betas = scaling.betas()
    rows = []
    for c in ("base_only", "tuned_only"):
        idx = torch.tensor([j for j, latent in enumerate(scaling.latents.tolist()) if classes[latent] == c], dtype=torch.long)
        nu_e = betas["nu_error"][idx] if len(idx) else torch.zeros(0, dtype=torch.float64)
        nu_r = betas["nu_reconstruction"][idx] if len(idx) else torch.zeros(0, dtype=torch.float64)
        finite = nu_e.isfinite() & nu_r.isfinite()
        rows.append({"class": c, "n_live_latents": len(idx), "n_with_beta": int(finite.sum()),
                     "median_nu_error": float(nu_e[finite].median()) if finite.any() else float("nan"),
                     "median_nu_reconstruction": float(nu_r[finite].median()) if finite.any() else float("nan"),
                     "n_truly_specific": int((nu_e[finite] <= specific_ratio_max).sum()),
                     "specific_ratio_max": specific_ratio_max})
    return rows


# --- latents.html --------------------------------------------------------------------------------

def latent_cards(latents: list[int], rows: list[dict], tops: dict[str, tuple[TopContexts, Contexts]],
                 decode, window: int, *, histograms: dict[str, ActivationHistogram] | None = None,
                 logits: dict[int, dict] | None = None) -> list[LatentCard]:
    cards = []
    for latent in latents:
        row = rows[latent]
        facts = {k: row[k] for k in FACT_FORMATS if row.get(k, "") != ""}
        examples = {}
        for kind, (top, texts) in tops.items():
            examples[kind] = []
            for c, acts in top.examples(latent):
                n = int(texts.valid[c].sum())  # padding never shown
                examples[kind].append(window_example(texts.input_ids[c, :n].tolist(), acts[:n], window=window, context=c,
                                                     decode=decode))
        cards.append(LatentCard(latent=latent, latent_class=row["class"], facts=facts, examples=examples,
                                histograms={kind: h.histogram(latent) for kind, h in (histograms or {}).items()},
                                logits=(logits or {}).get(latent, {})))
    return cards


# --- the stage -----------------------------------------------------------------------------------

def run(cfg: Config, ctx) -> dict[str, Any]:
    from reasondiff.crosscoder.model import load_crosscoder
    from reasondiff.lm.models import parse_hook, resolve_device

    a = cfg.analyze
    device = resolve_device(cfg.hardware)
    cc_dir = crosscoder_dir(cfg)
    check_crosscoder_format(cc_dir)
    crosscoder = load_crosscoder(cc_dir, device=device)
    ctx.inputs.update({"crosscoder_dir": str(cc_dir), "base_model": cfg.model.path, "tuned_model": cfg.tuned_model})
    train_config = cc_dir / "config.json"
    if train_config.is_file():
        ctx.inputs["crosscoder_config"] = artifacts.read_json(train_config)

    # 1. decoder geometry (always on the UNFOLDED decoder: the normalised space)
    W_dec = crosscoder.W_dec.detach().float().cpu()
    if W_dec.shape[1] != 2:
        raise UserError(f"{cc_dir}: crosscoder has {W_dec.shape[1]} models; analyze compares exactly two (base, tuned)")
    relative_norm, cosine, norms = relative_decoder_norm(W_dec), decoder_cosine(W_dec), decoder_norms(W_dec)
    delta = delta_norm(W_dec)
    thresholds = {"base_only_max": a.base_only_max, "shared_min": a.shared_min, "shared_max": a.shared_max,
                  "tuned_only_min": a.tuned_only_min}
    designated = crosscoder.designated_shared.cpu()  # shared by construction: a class of their own
    provisional = classify_latents(relative_norm, designated=designated, **thresholds)
    band = {"shared_min": a.shared_min, "shared_max": a.shared_max}
    candidates = {"base": extreme_latents(relative_norm, "base", CANDIDATE_FACTOR * a.n_top_latents, **band),
                  "tuned": extreme_latents(relative_norm, "tuned", CANDIDATE_FACTOR * a.n_top_latents, **band),
                  "shared": sample_latents(provisional, "shared", CANDIDATE_FACTOR * a.n_shared_sample, cfg.seed)}
    tracked = sorted({i for ids in candidates.values() for i in ids})
    scaling = None
    if a.latent_scaling:
        specific = [i for i, c in enumerate(provisional) if c in ("base_only", "tuned_only")]
        own = [BASE if provisional[i] == "base_only" else TUNED for i in specific]
        scaling = LatentScaling(torch.tensor(specific, dtype=torch.long), torch.tensor(own, dtype=torch.long), W_dec)

    # 2-3. the streamed passes
    store = open_harvest(cfg)
    models, tokenizer, tuned_tokenizer = load_models(cfg, device)
    d_model = models[0].config.hidden_size
    if d_model != crosscoder.cfg.d_model:
        raise UserError(f"crosscoder in {cc_dir} has d_model {crosscoder.cfg.d_model} but the models have {d_model}: "
                        "set analyze.crosscoder_dir to one trained on these models")
    # Where the crosscoder was trained wins: its own config, else the harvest store, else harvest.hook.
    hook_name = ctx.inputs.get("crosscoder_config", {}).get("hook") or (
        getattr(store, "hook", None) if store is not None else None) or cfg.harvest.hook
    hook_name = getattr(hook_name, "name", hook_name)
    hook = parse_hook(hook_name, models[0].config.num_hidden_layers)
    keep_first = a.exclude_first_position
    if keep_first is None:
        harvested = store.manifest.get("drop_first_position") if store is not None else None
        keep_first = bool(cfg.harvest.drop_first_position if harvested is None else harvested)
    if store is not None and getattr(store, "scaling_factors", None) is not None:
        harvest_factors = torch.as_tensor(store.scaling_factors, dtype=torch.float32).cpu()
        if not torch.allclose(harvest_factors, crosscoder.scaling_factors.cpu(), rtol=1e-3):
            log.warning("crosscoder scaling factors %s differ from harvest's %s: using the crosscoder's",
                        crosscoder.scaling_factors.tolist(), harvest_factors.tolist())
    # massive-activation tokens: left out exactly as harvest left them out of the training data
    max_norm_ratio = store.manifest.get("max_norm_ratio") if store is not None else cfg.harvest.max_norm_ratio
    ctx.inputs.update({"hook": hook.name, "exclude_first_position": keep_first, "max_norm_ratio": max_norm_ratio,
                       "harvest_documents_used": int(store.manifest["documents_used"]) if store is not None else None})

    texts = {"general": Contexts.packed("general", heldout_contexts(cfg, tokenizer, store, cc_dir))}
    # the reasoning text is the tuned model's: rendered with its tokenizer's chat template and layout
    reasoning_texts = reasoning_contexts(cfg, tuned_tokenizer)
    if reasoning_texts is not None:
        texts["reasoning"] = reasoning_texts
    common = {"hook": hook.name, "keep_first": keep_first, "max_norm_ratio": max_norm_ratio, "tracked": tracked}
    passes: dict[str, dict] = {}
    for name, text in texts.items():
        with_scaling = scaling if name == "general" else None
        passes[name] = run_text_pass(
            cfg, ctx.dir, text, models, crosscoder, hook, keep_first=keep_first, max_norm_ratio=max_norm_ratio,
            candidates=tracked, scaling=with_scaling,
            fingerprint=_fingerprint(cfg, text, cc_dir, {**common, "scaling": with_scaling is not None}))
    general, reasoning = passes["general"], passes.get("reasoning")
    if not distributed.is_main_process():  # under torchrun every rank holds the merged passes: rank 0 writes
        return {}
    ctx.inputs.update({"n_heldout_contexts": len(texts["general"]),
                       "n_reasoning_contexts": len(texts["reasoning"]) if reasoning is not None else 0,
                       "context_length": texts["general"].length,
                       "texts": {name: {"label": t.label, "source": t.source, "contexts": len(t),
                                        "tokens": int(t.valid.sum())} for name, t in texts.items()},
                       "reasoning_text": a.reasoning_text if reasoning is not None else None})
    labels = {name: t.label for name, t in texts.items()}

    # 4. tables
    ce_rows = [{**row, "text_source": labels[name]} for name, parts in passes.items()
               for row in parts["ce"].rows(text=name, n_bootstrap=a.bootstrap_samples, seed=cfg.seed)]
    for row in ce_rows:
        for key in ("ce_clean", "ce_zero_ablation", "ce_spliced"):
            require_finite(f"{row['text']} {row['convention']} {row['model']} {key}", row[key], step=None)
    write_csv(ctx.dir / "ce_recovery.csv", ce_rows, CE_COLUMNS)
    artifacts.write_text(ctx.dir / "ce_recovery.md", ce_table_markdown(ce_rows))
    fit_rows = [{**row, "text_source": labels[name]} for name, parts in passes.items()
                for row in reconstruction_rows(parts["reconstruction"], parts["stats"], name)]
    write_csv(ctx.dir / "reconstruction.csv", fit_rows, RECONSTRUCTION_COLUMNS)
    write_csv(ctx.dir / "scaling_factors.csv", scaling_factor_rows(crosscoder.scaling_factors.cpu(),
                                                                   store.stats if store is not None else None),
              SCALING_FACTOR_COLUMNS)
    alive = general["stats"].n_active > 0
    if reasoning is not None:
        alive |= reasoning["stats"].n_active > 0
    classes = classify_latents(relative_norm, alive=alive, designated=designated, **thresholds)
    classes_delta = classify_latents_delta(delta, alive=alive, designated=designated)
    rows = latent_rows(relative_norm, cosine, norms, classes, general["stats"],
                       reasoning["stats"] if reasoning else None, scaling, delta=delta, classes_delta=classes_delta)
    write_csv(ctx.dir / "latents.csv", rows, LATENT_COLUMNS)
    counts = class_count_rows(classes, classes_delta)
    write_csv(ctx.dir / "class_counts.csv", counts, CLASS_COUNT_COLUMNS)
    outputs: dict[str, Any] = {"ce_recovery": ce_rows, "reconstruction": fit_rows,
                               "class_counts": {r["class"]: r["n_latents"] for r in counts},
                               "class_counts_delta": {r["class"]: r["n_latents_delta"] for r in counts}}
    if reasoning is not None:
        freq_rows = [{**row, "reasoning_text_source": labels["reasoning"]}
                     for row in class_frequency_rows(classes, general["stats"].frequency(), reasoning["stats"].frequency())]
        write_csv(ctx.dir / "class_frequency.csv", freq_rows, ["class", "n_latents", "mean_freq_general", "mean_freq_reasoning",
                                                              "reasoning_over_general", "frac_latents_more_on_reasoning",
                                                              "reasoning_text_source"])
        outputs["class_frequency"] = freq_rows
    if scaling is not None:
        summary = latent_scaling_summary(classes, scaling, a.specific_ratio_max)
        write_csv(ctx.dir / "latent_scaling_summary.csv", summary, list(summary[0]))
        outputs["latent_scaling"] = summary
    ctx.metrics.log({f"ce_recovered_{r['text']}_{r['convention']}_{r['model']}": r["ce_recovered"] for r in ce_rows}
                    | {f"heldout_explained_variance_{r['text']}_{r['model']}": r["explained_variance"] for r in fit_rows}
                    | {"heldout_l0": fit_rows[0]["l0"]}
                    | {f"n_{c}": n for c, n in outputs["class_counts"].items()}, step=0)

    # seed stability and the calibrated table (docs/null.md): decoders of the sibling train runs only
    calibrated = calibrate(cfg, ctx.dir, cc_dir, W_dec, designated, thresholds)
    if calibrated:
        outputs["calibration"] = calibrated
        ctx.inputs["calibration_runs"] = {"seeds": calibrated["seeds"], "nulls": calibrated["nulls"]}

    # figures
    from reasondiff.analyze import plots

    live = [i for i, c in enumerate(classes) if c not in ("dead", "designated_shared")]
    plots.relative_norm_histogram(relative_norm[live].tolist(), ctx.dir / "relative_norm_hist.png", **thresholds)
    plots.cosine_histogram([float(cosine[i]) for i, c in enumerate(classes) if c == "shared"], ctx.dir / "cosine_hist.png")
    plots.decoder_norm_scatter(norms[:, BASE].tolist(), norms[:, TUNED].tolist(), classes, ctx.dir / "decoder_norms.png",
                               **thresholds)
    plots.frequency_histogram(general["stats"].frequency().tolist(), classes, ctx.dir / "frequency_hist.png")
    metrics_csv = cc_dir / "metrics.csv"
    if metrics_csv.is_file():
        plots.training_curves(read_csv_rows(metrics_csv), ctx.dir / "training_curves.png")
    if scaling is not None and len(scaling.latents):
        betas = scaling.betas()
        keep = [j for j, latent in enumerate(scaling.latents.tolist()) if classes[latent] != "dead"]
        plots.latent_scaling_scatter(betas["nu_error"][keep].tolist(), betas["nu_reconstruction"][keep].tolist(),
                                     [classes[scaling.latents[j]] for j in keep], ctx.dir / "latent_scaling.png",
                                     specific_ratio_max=a.specific_ratio_max)

    # latents.html: the most extreme LIVE latents of each kind, and a sample of live shared ones
    def live_first(ids: list[int], n: int) -> list[int]:
        return [i for i in ids if classes[i] != "dead"][:n]

    tops = {name: (parts["top"], texts[name]) for name, parts in passes.items()}
    histograms = {name: parts["histogram"] for name, parts in passes.items()}
    decode = token_strings(tokenizer)
    shown = {"most base-leaning latents (lowest relative norm)": live_first(candidates["base"], a.n_top_latents),
             "most tuned-leaning latents (highest relative norm)": live_first(candidates["tuned"], a.n_top_latents),
             "shared latents (random sample)": live_first(candidates["shared"], a.n_shared_sample)}
    # direct logit effects of the shown latents' decoder directions, per model (logit_effects.py)
    shown_latents = sorted({i for ids in shown.values() for i in ids})
    logit_rows = logit_effect_rows(shown_latents, W_dec, crosscoder.scaling_factors.cpu(), models, MODEL_NAMES, decode,
                                   k=a.n_logit_tokens, vocab_size=len(tokenizer))
    write_csv(ctx.dir / "latent_logits.csv", logit_rows, LOGIT_COLUMNS)
    logits = group_logit_rows(read_csv_rows(ctx.dir / "latent_logits.csv"))  # the page shows the artifact
    sections = {title: latent_cards(ids, rows, tops, decode, a.html_window, histograms=histograms, logits=logits)
                for title, ids in shown.items()}
    intro = (f"Crosscoder {cc_dir} at {hook.name}; {len(texts['general'])} held-out general contexts of "
             f"{texts['general'].length} tokens and {len(texts['reasoning']) if reasoning is not None else 0} reasoning "
             f"conversations in the fine-tune's chat layout"
             f"{' (' + texts['reasoning'].label + ': ' + texts['reasoning'].source + ')' if reasoning is not None else ''}. "
             "Each card: the decoder-norm facts, the histogram of the "
             "latent's non-zero activations, the tokens its decoder direction promotes and suppresses through each "
             "model's unembedding (latent_logits.csv), and its top contexts; every token shows the latent's "
             "activation under it, shaded on the card's colour scale, the context's peak outlined.")
    artifacts.write_text(ctx.dir / "latents.html", render_latents_html(sections, title=f"{cfg.exp_name}: crosscoder latents",
                                                                      intro=intro, text_kinds=tuple(tops)))

    # report.md (+ appendix and the self-contained report.html) gathers everything above plus the
    # earlier stages' tables and figures
    write_reports(cfg.exp_dir, ctx.dir, title=f"reasondiff report: {cfg.exp_name}", crosscoder_dir=cc_dir,
                  thresholds=thresholds, **report_arguments(cfg))
    for name in TEXTS:  # and the torchrun ranks' own partial_<text>.rank<r>.pt
        for path in [partial_file(ctx.dir, name), *ctx.dir.glob(f"partial_{name}.rank*.pt")]:
            path.unlink(missing_ok=True)
    log.info("CE recovered (general text): %s", ", ".join(
        f"{r['model']} {r['ce_recovered']:.1%} ({r['convention']})" for r in ce_rows if r["text"] == "general"))
    outputs["files"] = sorted(p.name for p in ctx.dir.iterdir() if p.is_file() and not p.name.startswith("."))
    return outputs
