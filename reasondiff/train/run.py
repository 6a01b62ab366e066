"""Stage 4 — train the sparse crosscoder on paired activations (`python -m reasondiff.train`).

The recipe: open the data source (harvest's store, the live models, or planted features), build
the crosscoder with the data's scaling factors, run the training loop (trainer.py holds one step
and its state), save, evaluate, write summary.json.

A checkpoint holds weights, Adam, scheduler, step, dead-latent counters, RNG and the data
position; a killed run (Ctrl-C, SIGTERM) saves one at the end of the current step and a re-run
resumes to exactly the result of an uninterrupted run. A non-finite loss stops the run BEFORE the
update, so the last checkpoint and the weights stay good.

Under torchrun (docs/distributed.md) train.batch_size is the GLOBAL batch: each rank reads a
contiguous slice of every batch (only those rows of the store), the trainer averages the gradients
over the ranks, and rank 0 writes the checkpoints, the crosscoder and the evaluation.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from reasondiff.app.stage import deferred_interrupts
from reasondiff.config import Config
from reasondiff.core import artifacts, distributed
from reasondiff.core.errors import UserError
from reasondiff.core.progress import Progress
from reasondiff.crosscoder.model import (
    WEIGHTS_FILE,
    CrossCoder,
)
from reasondiff.train.heldout import heldout_live, split_store, training_data
from reasondiff.train.trainer import ActivationSource, CrossCoderTrainer, crosscoder_config, evaluate

log = logging.getLogger(__name__)

PREPARED_FILES = ("ground_truth.safetensors",)
"""Written before the first step (train.data=synthetic): a run that failed with only these holds no work."""

CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
SYNTHETIC_REPORT_FILE = "synthetic_report.json"
FINAL_COUNTERS_FILE = "final_counters.pt"
"""Tokens since each latent last fired, at the end of training (dead latents)."""
# --- data ------------------------------------------------------------------------------------
def open_source(cfg: Config, ctx_dir: Path, inputs: dict[str, Any]) -> ActivationSource:
    data = cfg.train.data
    if data == "synthetic":
        from reasondiff.train.synthetic import SyntheticSource

        source = SyntheticSource(cfg.train.synthetic, seed=cfg.seed)
        source.write_ground_truth(ctx_dir)
        inputs["data"] = {"synthetic": asdict(cfg.train.synthetic)}
        return source
    from reasondiff import harvest  # harvest's public reader, never its internals

    if data == "store":
        store_dir = cfg.stage_dir("harvest")
        if not artifacts.is_complete(store_dir):
            raise UserError(f"no finished activation store in {store_dir}: run the harvest stage first "
                            "(or train.data=live / train.data=synthetic)")
        inputs["activations"] = str(store_dir)
        return harvest.ActivationStore.open(store_dir)
    inputs["data"] = {"live": cfg.harvest.hook, "base": cfg.model.path, "tuned": cfg.tuned_model}
    return harvest.LiveActivationSource(cfg)


# --- the stage -------------------------------------------------------------------------------
def run(cfg: Config, ctx) -> dict[str, Any]:
    tc = cfg.train
    from reasondiff.lm.models import resolve_device

    device = resolve_device(cfg.hardware)
    source = open_source(cfg, ctx.dir, ctx.inputs)
    heldout = None  # the final evaluation's data: never trained on (heldout.py)
    if tc.data == "store":
        source, heldout = split_store(source, tc.eval_tokens, tc.batch_size)
    d_model = int(source.d_model)
    cc_cfg = crosscoder_config(tc, d_model)
    total_steps = tc.n_tokens // tc.batch_size
    n_available = getattr(source, "n_tokens", None)
    if n_available and tc.n_tokens > n_available:
        log.warning("train.n_tokens=%d > %d stored tokens: the data is cycled %.1f times",
                    tc.n_tokens, n_available, tc.n_tokens / n_available)
    # settings of a resumed run were checked by the stage runner (reasondiff.core.fingerprint)
    checkpoint = ctx.dir / CHECKPOINT_FILE

    cc = CrossCoder(cc_cfg)
    with torch.no_grad():
        cc.scaling_factors.copy_(torch.as_tensor(source.scaling_factors, dtype=torch.float32))
    trainer = CrossCoderTrainer(cc, tc, total_steps, device)
    final_done = _final_is_complete(ctx.dir, total_steps)
    main = distributed.is_main_process()
    if checkpoint.is_file() and not final_done:
        trainer.load_checkpoint(checkpoint)
        log.info("resuming from %s at step %d/%d", checkpoint, trainer.step, total_steps)
    if not final_done:  # rows a killed run logged after its last checkpoint are done again
        ctx.metrics.truncate(trainer.step)
    if final_done and (damage := crosscoder_damage(ctx.dir)) is not None:
        log.warning("%s: training again (from the last checkpoint, or the start)", damage)
        final_done = False
        if checkpoint.is_file():
            trainer.load_checkpoint(checkpoint)
        ctx.metrics.truncate(trainer.step)
    if final_done:
        trainer.cc = cc = CrossCoder.load(ctx.dir, device=device)
        _load_final_counters(trainer, ctx.dir)
    else:
        _train_loop(trainer, source, cfg, ctx, checkpoint)
        if not main:  # every rank holds the same crosscoder: rank 0 saves and evaluates it
            return {}
        # the dead-latent counters first: a kill after the weights must not leave them to a fresh trainer
        artifacts.atomic_save(ctx.dir / FINAL_COUNTERS_FILE,
                              lambda tmp: torch.save(trainer.tokens_since_fired.cpu(), tmp))
        cc.save(ctx.dir, extra={"steps": trainer.step, "total_steps": total_steps, "tokens": trainer.step * tc.batch_size,
                                "hook": _hook_name(source) or cfg.harvest.hook, "data": tc.data,
                                "train": asdict(tc)})

    cc.eval()
    if heldout is None and tc.data == "live":
        heldout = heldout_live(cfg, source, total_steps=total_steps, batch_size=tc.batch_size, eval_tokens=tc.eval_tokens)
    heldout = heldout or training_data(source, eval_tokens=tc.eval_tokens, batch_size=tc.batch_size, data=tc.data)
    summary = {"variant": tc.variant, "l1_coeff": tc.l1_coeff, "k": tc.k, "n_latents": cc_cfg.n_latents,
               "d_model": d_model, "steps": total_steps,
               "frac_dead": float(trainer.dead_latents().float().mean()), **heldout.info,
               **evaluate(cc, heldout.source, batch_size=heldout.batch_size, n_tokens=heldout.n_tokens,
                          seed=cfg.seed + 1, device=device)}
    # the weights' checksum, as harvest records its shards' (config.json holds it too: load checks it)
    outputs: dict[str, Any] = {"crosscoder": str(ctx.dir / WEIGHTS_FILE),
                               "crosscoder_sha256": artifacts.sha256_file(ctx.dir / WEIGHTS_FILE), "summary": summary}
    if tc.data == "synthetic":
        from reasondiff.train.synthetic import recovery_report

        alive = ~trainer.dead_latents().cpu()
        report = recovery_report(cc.W_dec.detach().cpu(), cc.scaling_factors.cpu(), source.features, source.kinds,
                                 alive=alive, designated=cc.designated_shared.cpu())
        artifacts.write_json(ctx.dir / SYNTHETIC_REPORT_FILE, report)
        _log_synthetic_report(report)
        outputs["synthetic_report"] = report
    artifacts.write_json(ctx.dir / SUMMARY_FILE, summary)
    log.info("crosscoder: L0 %.1f, FVU %.4f, dead %.1f%% -> %s", summary["l0"], summary["fvu"],
             100 * summary["frac_dead"], ctx.dir)
    if checkpoint.is_file() and not tc.keep_checkpoint:
        checkpoint.unlink()
    return outputs


def _hook_name(source) -> str | None:
    """Where the activations came from: the store's own hook (a harvest@hook=... run), not the config's."""
    hook = getattr(source, "hook", None)
    return getattr(hook, "name", hook)


def _load_final_counters(trainer: CrossCoderTrainer, directory: Path) -> None:
    """The dead-latent counters of the finished training (summary.json's frac_dead, the synthetic
    report's live latents), saved just before the final weights."""
    path = directory / FINAL_COUNTERS_FILE
    if not path.is_file():
        raise UserError(f"{directory}: the final crosscoder has no {FINAL_COUNTERS_FILE} (written by an older version "
                        "or damaged): its dead-latent counts are unknown; set overwrite=true to retrain")
    trainer.tokens_since_fired.copy_(torch.load(path, map_location="cpu", weights_only=True))


def crosscoder_damage(directory: Path) -> str | None:
    """Why the crosscoder saved in `directory` cannot be used (its sha256, its header, its numbers)."""
    try:
        CrossCoder.load(directory)
    except UserError as err:
        return str(err)
    return None


def verify_finished(cfg: Config, directory: Path) -> str | None:
    """Checked when a finished train is run again: the crosscoder its manifest records (with its
    sha256, like harvest's shards) must still be there and intact, else it is trained again rather
    than skipped."""
    manifest = directory / artifacts.MANIFEST
    recorded = artifacts.read_json(manifest).get("outputs", {}) if manifest.is_file() else {}
    if not recorded.get("crosscoder_sha256"):
        return None  # finished before checksums were recorded (or not by this stage's run)
    return crosscoder_damage(directory)


def _final_is_complete(directory: Path, total_steps: int) -> bool:
    """A re-run after the final save (but before COMPLETED) only redoes the cheap evaluation."""
    config = directory / "config.json"
    return (directory / WEIGHTS_FILE).is_file() and config.is_file() and \
        artifacts.read_json(config).get("steps") == total_steps


def rank_batches(source: ActivationSource, batch_size: int, *, seed: int, start_batch: int):
    """This rank's slice of every global batch: the store reads only the slice's rows; other sources
    draw the whole batch and keep the slice (train.data=live then runs the models on the whole batch
    on every rank: data-parallel for the crosscoder, not for the harvesting)."""
    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        return source.iter_batches(batch_size, seed=seed, start_batch=start_batch)
    if batch_size % world:
        raise UserError(f"train.batch_size={batch_size} is the global batch and must divide evenly over the "
                        f"{world} torchrun ranks")
    per_rank = batch_size // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    if "rows" in inspect.signature(source.iter_batches).parameters:
        return source.iter_batches(batch_size, seed=seed, start_batch=start_batch, rows=rows)
    return (batch[rows] for batch in source.iter_batches(batch_size, seed=seed, start_batch=start_batch))


def _train_loop(trainer: CrossCoderTrainer, source: ActivationSource, cfg: Config, ctx, checkpoint: Path) -> None:
    tc = cfg.train
    batches = rank_batches(source, tc.batch_size, seed=cfg.seed, start_batch=trainer.step)
    save = distributed.is_main_process()
    started, start_step = time.perf_counter(), trainer.step
    with deferred_interrupts() as interrupt, Progress(total=trainer.total_steps, initial=trainer.step,
                                                      desc="crosscoder", unit="step", mininterval=2.0) as bar:
        try:
            while trainer.step < trainer.total_steps:
                x_raw = next(batches)
                want = (trainer.step + 1) % tc.log_every == 0 or trainer.step + 1 == trainer.total_steps
                metrics = trainer.train_step(x_raw, with_metrics=want)
                bar.update(1)
                if metrics is not None:
                    elapsed = time.perf_counter() - started
                    metrics["tokens_per_second"] = (trainer.step - start_step) * tc.batch_size / max(elapsed, 1e-9)
                    ctx.metrics.log(metrics, step=trainer.step)
                    bar.set_postfix(l2=f"{metrics['l2']:.3g}", l0=f"{metrics['l0']:.1f}")
                if save and trainer.step % tc.checkpoint_every == 0 and trainer.step < trainer.total_steps:
                    trainer.save_checkpoint(checkpoint)
                if interrupt.requested:
                    raise KeyboardInterrupt("interrupt requested")
        except KeyboardInterrupt:
            if not save:
                raise
            trainer.save_checkpoint(checkpoint)
            log.warning("checkpoint saved at step %d/%d in %s; re-run the same command to resume",
                        trainer.step, trainer.total_steps, checkpoint)
            raise
        except FloatingPointError as err:
            last = f"the checkpoint in {checkpoint} is intact" if checkpoint.is_file() else "no checkpoint was written yet"
            raise UserError(f"{err} ({last}); lower train.lr or train.l1_coeff, or check the activations "
                            "for inf/NaN (harvest stats.json)") from err


def _log_synthetic_report(report: dict[str, Any]) -> None:
    log.info("synthetic recovery: mean max cosine %.3f, classified right %.1f%% (%d distinct latents for %d features); "
             "model-specific structure found %.0f%%, classified model-specific %.0f%%",
             report["mean_max_cosine"], 100 * report["classified_right"], report["distinct_latents"],
             report["n_features"], 100 * report["model_specific_found"], 100 * report["model_specific_classified"])
    for kind, row in report["per_kind"].items():
        log.info("  %-10s n=%3d  max cos %.3f  right %.0f%%  relative norm %.2f  decoder cos %.2f", kind, row["n"],
                 row["mean_max_cosine"], 100 * row["classified_right"], row["mean_relative_norm"],
                 row["mean_decoder_cosine"])
