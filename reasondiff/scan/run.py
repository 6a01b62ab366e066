"""Stage scan: where in the network did the fine-tune change the model? (`python -m reasondiff.scan`)

Recipe (`run`):
  1. load both models (a compatible pair) and check that final norm + unembedding of the last
     residual reproduce each model's logits (the patched distributions are computed that way);
  2. the texts: held-out general text (harvest's corpus after the documents harvest used) and
     reasoning conversations in the fine-tune's layout (`texts.py`);
  3. per text, the representation pass (every context, one forward per model per batch, every
     layer read at once) and the patching pass (the first `scan.patch_contexts` contexts, every
     residual layer patched in both directions) — both stream their sums and resume (`passes.py`);
  4. scan.csv (one row per text x site x layer; the fractions closed with 95% bootstrap intervals
     over the patched contexts), scan.png / scan.pdf, recommendation.json: the first layer whose
     patch closes `scan.large_effect` of KL(base || tuned), the layers its intervals leave open, and
     the other direction beside it (`recommend.py`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from reasondiff.config import Config
from reasondiff.core import artifacts, distributed
from reasondiff.scan.meters import sites_of
from reasondiff.scan.passes import patch_pass, representation_pass
from reasondiff.scan.plots import scan_figure
from reasondiff.scan.recommend import Curve, Recommendation, recommend
from reasondiff.scan.texts import ScanTexts, general_texts, reasoning_texts

log = logging.getLogger(__name__)

CSV_COLUMNS = ["text", "site", "layer", "hook", "n_tokens", "relative_change", "cosine", "cka",
               "n_patch_tokens", "kl_base_tuned", "closed_tuned_into_base", "closed_base_into_tuned",
               # issue 26.6 (appended): 95% bootstrap intervals over the patched contexts
               "n_patch_contexts", "closed_tuned_into_base_low", "closed_tuned_into_base_high",
               "closed_base_into_tuned_low", "closed_base_into_tuned_high",
               # issue 26.1 (appended): which reasoning text (held-out rows, on-policy, file, trained rows)
               "text_source"]
VIEW_TEXT = {("general", "all"): "general", ("reasoning", "all"): "reasoning", ("reasoning", "answer"): "reasoning_answer"}


def load_pair(cfg: Config, device: torch.device):
    from reasondiff.lm.models import check_compatible, load_model

    base, base_tok = load_model(cfg.model.path, cfg.hardware, config_key="model.path", revision=cfg.model.revision,
                                device=device, trust_remote_code=cfg.model.trust_remote_code)
    tuned, tuned_tok = load_model(cfg.tuned_model, cfg.hardware, config_key="tuned_model", device=device,
                                  trust_remote_code=cfg.model.trust_remote_code)
    shape = check_compatible(base, tuned, base_tok, tuned_tok)
    return (base, tuned), (base_tok, tuned_tok), shape


def harvest_settings(cfg: Config) -> tuple[int, bool, float | None]:
    """(documents the harvest used, exclude the first position?, massive-activation ratio): from the
    finished harvest store when there is one (what the crosscoder will see), else from cfg.harvest."""
    documents_used, drop_first, ratio = 0, cfg.harvest.drop_first_position, cfg.harvest.max_norm_ratio
    harvest_dir = cfg.stage_dir("harvest")
    if artifacts.is_complete(harvest_dir):
        from reasondiff import harvest
        manifest = harvest.ActivationStore.open(harvest_dir).manifest
        documents_used = int(manifest.get("documents_used", 0))
        drop_first = bool(manifest.get("drop_first_position", drop_first))
        ratio = manifest.get("max_norm_ratio", ratio)
    elif not cfg.scan.general_corpus:
        log.warning("scan: no finished harvest in %s, so general text starts at the first document of "
                    "harvest.corpus (text the harvest may later use)", harvest_dir)
    exclude_first = drop_first if cfg.scan.exclude_first_position is None else cfg.scan.exclude_first_position
    return documents_used, exclude_first, ratio


def verify_finished(cfg: Config, directory: Path) -> str | None:
    """A finished scan from before held-out reasoning text read the fine-tune's trained rows (its
    default was finetune.dataset): it is redone on the text `scan.reasoning_text` names."""
    manifest = directory / artifacts.MANIFEST
    if not manifest.is_file() or not cfg.scan.n_reasoning_contexts:
        return None
    texts = (artifacts.read_json(manifest).get("outputs") or {}).get("texts") or {}
    if "reasoning" in texts and "label" not in texts["reasoning"]:
        return "it was made before held-out reasoning text (it read the rows the fine-tune trained on)"
    return None


def model_identity(path: str, revision: str | None) -> list:
    """What identifies a model's weights for resuming: file sizes and times of a local directory."""
    local = Path(path).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin"))
        return [str(local.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return [path, revision]


def forward_equivalents(texts: list[ScanTexts], model, cfg: Config) -> float:
    """Rough cost of the scan in full forwards (with unembedding) of one model over one context, for
    the log. One unembedding costs u = vocab x d_model / (parameters per layer) layers (about 9 for
    Qwen2.5-0.5B); a patched layer's softmax and KL add about 40 % to its unembedding (measured)."""
    s = cfg.scan
    n_layers = model.config.num_hidden_layers
    embeddings = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    per_layer = max((sum(p.numel() for p in model.parameters()) - sum(embeddings.values())) / n_layers, 1.0)
    unembed = model.config.vocab_size * model.config.hidden_size / per_layer
    forward = n_layers + unembed
    clean = 2 * n_layers / forward
    per_direction = (n_layers * (n_layers + 1) / 2 + 1.4 * (n_layers + 1) * unembed) / forward
    return sum(len(t) * clean + min(s.patch_contexts, len(t)) * (clean + len(s.directions) * per_direction)
               for t in texts)


def table_rows(text_name: str, representation: dict, patching: dict | None, cfg: Config,
               text_source: str = "") -> list[dict[str, Any]]:
    rows = []
    for view, meter in representation.items():
        text = VIEW_TEXT[(text_name, view)]
        patch = patching.get(view) if patching else None
        fractions = patch.fractions(min_kl=cfg.scan.min_kl) if patch is not None else {}
        intervals = (patch.intervals(min_kl=cfg.scan.min_kl, resamples=cfg.scan.bootstrap_samples, seed=cfg.seed)
                     if patch is not None else {})
        for row in meter.rows():
            row = {"text": text, "text_source": text_source, **row}
            if row["site"] == "resid" and patch is not None and patch.total_tokens() > 0:
                row["n_patch_tokens"] = patch.total_tokens()
                row["n_patch_contexts"] = patch.n_contexts
                row["kl_base_tuned"] = patch.mean_gap()
                for direction, values in fractions.items():
                    low, high = intervals[direction]
                    row[f"closed_{direction}"] = values[row["layer"]]
                    row[f"closed_{direction}_low"] = low[row["layer"]]
                    row[f"closed_{direction}_high"] = high[row["layer"]]
            rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    return "" if isinstance(value, float) and not math.isfinite(value) else value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.DataFrame([{c: _cell(r.get(c, "")) for c in CSV_COLUMNS} for r in rows], columns=CSV_COLUMNS)
    artifacts.atomic_save(path, lambda tmp: frame.to_csv(tmp, index=False))


def recommendation_of(rows: list[dict[str, Any]], cfg: Config, n_layers: int) -> tuple[Recommendation, list[float]]:
    """The recommendation read from the tuned_into_base curve (else the one direction scanned) of
    `scan.recommend_on` text (general text when no reasoning text was scanned), with its intervals
    and the other direction's curve beside it; and that curve."""
    s = cfg.scan
    text = s.recommend_on if s.recommend_on in {r["text"] for r in rows} else "general"
    direction = "tuned_into_base" if "tuned_into_base" in s.directions else (s.directions[0] if s.directions else "")
    resid = sorted((r for r in rows if r["text"] == text and r["site"] == "resid"), key=lambda r: r["layer"])

    def curve(d: str) -> Curve:
        return Curve(*([float(r.get(f"closed_{d}{part}", math.nan)) for r in resid] for part in ("", "_low", "_high")))

    fractions = list(curve(direction).fractions) if direction else [math.nan] * len(resid)
    if s.patch_contexts == 0 or not direction:
        return Recommendation(hook=None, layer=None, text=text, direction=direction, threshold=s.large_effect,
                              closed=None, largest_step_block=None, largest_step=None, follow_up=[],
                              line="No layer recommended: activation patching was off (scan.patch_contexts=0 "
                                   "or scan.directions=[])."), fractions
    mean_kl = resid[0].get("kl_base_tuned", math.nan) if resid else math.nan
    mine = curve(direction)
    return recommend(fractions, threshold=s.large_effect, text=text, direction=direction, n_layers=n_layers,
                     exp_args=experiment_args(cfg), mean_kl=mean_kl, min_kl=s.min_kl, low=list(mine.low),
                     high=list(mine.high), others={d: curve(d) for d in s.directions if d != direction},
                     n_contexts=resid[0].get("n_patch_contexts") if resid else None), fractions


def experiment_args(cfg: Config) -> str:
    """The overrides this scan was made with (`+exp=`, `exp_name=`, `tuned_model=`, `model.path=` ...),
    so its follow-up commands can be pasted as printed; the keys they set themselves left out."""
    from reasondiff.app.commands import command_args

    return command_args(cfg, drop=("overwrite", "run", "scan.", "harvest.hook", "pipeline.", "stage"))


def run(cfg: Config, ctx) -> dict[str, Any]:
    from reasondiff.lm.models import resolve_device
    from reasondiff.scan.patching import check_unembedding

    s = cfg.scan
    device = resolve_device(cfg.hardware)
    # the reasoning text is the tuned model's: rendered with its tokenizer's chat template and layout
    models, (tokenizer, tuned_tokenizer), shape = load_pair(cfg, device)
    n_layers = shape.n_layers
    documents_used, exclude_first, max_norm_ratio = harvest_settings(cfg)

    texts = [general_texts(cfg, tokenizer, documents_used=documents_used)]
    reasoning = reasoning_texts(cfg, tuned_tokenizer)
    if reasoning is not None:
        texts.append(reasoning)
    for model in models:
        check_unembedding(model, texts[0].input_ids)
    sites = sites_of(n_layers, components=s.component_sites)
    ctx.inputs.update(base_model=cfg.model.path, tuned_model=cfg.tuned_model, n_layers=n_layers,
                      general_text=texts[0].source, reasoning_text=reasoning.source if reasoning else None,
                      reasoning_text_kind=s.reasoning_text if reasoning else None,
                      harvest_documents_used=documents_used, exclude_first_position=exclude_first,
                      max_norm_ratio=max_norm_ratio)
    for text in texts:
        log.info("scan: %s text: %s, %d contexts, %d tokens (%s)", text.name, text.label, len(text),
                 int(text.valid.sum()), text.source)
    log.info("scan: %d layers, %s; about %.0f forward-equivalents of one context (patching %d contexts per text "
             "in %d direction(s))", n_layers, ", ".join(f"{len(t)} {t.name} contexts" for t in texts),
             forward_equivalents(texts, models[0], cfg), s.patch_contexts, len(s.directions))

    common = {"models": [model_identity(cfg.model.path, cfg.model.revision), model_identity(cfg.tuned_model, None)],
              "dtype": cfg.hardware.dtype, "exclude_first": exclude_first}
    rows: list[dict[str, Any]] = []
    for text in texts:
        fingerprint = {**common, "text": text.digest(), "shape": list(text.input_ids.shape)}
        representation = representation_pass(
            models, text, sites, ctx.dir / f"partial_{text.name}_representation.pt",
            {**fingerprint, "sites": len(sites), "max_norm_ratio": max_norm_ratio},
            batch_size=cfg.hardware.analyze_batch_size, exclude_first=exclude_first, max_norm_ratio=max_norm_ratio,
            checkpoint_every=s.checkpoint_every, checkpoint_minutes=s.checkpoint_minutes,
            components=s.component_sites)
        patching = None
        if s.patch_contexts > 0 and s.directions:
            patching = patch_pass(models, text, list(s.directions), ctx.dir / f"partial_{text.name}_patching.pt",
                                  {**fingerprint, "directions": list(s.directions), "n_contexts": s.patch_contexts,
                                   "sums": "per_context"},
                                  n_contexts=s.patch_contexts, batch_size=s.patch_batch_size, exclude_first=exclude_first)
        rows += table_rows(text.name, representation, patching, cfg, text.label)
    if not distributed.is_main_process():  # under torchrun every rank holds the merged meters: rank 0 writes
        return {}
    write_csv(ctx.dir / "scan.csv", rows)

    recommendation, fractions = recommendation_of(rows, cfg, n_layers)
    artifacts.write_json(ctx.dir / "recommendation.json", recommendation.to_dict())
    scan_figure(rows, ctx.dir / "scan.png", n_layers=n_layers, threshold=s.large_effect,
                recommended_layer=recommendation.layer,
                title=f"{cfg.exp_name}: {cfg.model.name} base vs tuned, layer by layer ({n_layers} layers)")
    for path in ctx.dir.glob("partial_*.pt"):
        path.unlink()

    log.info("%s", recommendation.line)
    for command in recommendation.follow_up:
        log.info("  %s", command)
    curve = {f"closed_{recommendation.direction}_{recommendation.text}_layer{i}": f for i, f in enumerate(fractions)
             if isinstance(f, float) and math.isfinite(f)}
    if curve:
        ctx.metrics.log(curve, step=0)
    return {"csv": "scan.csv", "figure": ["scan.png", "scan.pdf"], "recommendation": recommendation.to_dict(),
            "texts": {t.name: {"contexts": len(t), "tokens": int(t.valid.sum()), "source": t.source,
                               "label": t.label} for t in texts}}
