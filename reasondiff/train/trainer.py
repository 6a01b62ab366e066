"""One crosscoder training step, the trainer that owns its state, and the evaluation.

Recipe (Lindsey et al. 2024; Kissane & Nanda's replication): activations scaled per model by
harvest's factors; Adam (0.9, 0.999); grad-norm clip; lr constant for 80% of the steps then linear
to 0; λ ramped linearly from 0. `variant=batchtopk` (Minder et al. 2025) replaces the L1 penalty
by a batch-wide top-k on f_i·Σ_m||d_i,m|| plus AuxK on dead latents, and tracks the inference
threshold. A non-finite loss stops the run BEFORE the update, so the last checkpoint and the
weights stay good.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from reasondiff import artifacts
from reasondiff.config import TrainConfig
from reasondiff.crosscoder.loss import (
    ExplainedVarianceMeter,
    aux_k_loss,
    explained_variance,
    l1_coeff_at,
    l1_objective,
    lr_factor,
    reconstruction_loss,
    update_threshold,
)
from reasondiff.crosscoder.model import CrossCoder, batch_topk_mask, decoder_norm_sum
from reasondiff.errors import UserError
from reasondiff.tracking import require_finite

ADAM_BETAS = (0.9, 0.999)


class ActivationSource(Protocol):
    """What the trainer reads: harvest's ActivationStore, the live source, or the synthetic one."""

    d_model: int
    scaling_factors: torch.Tensor

    def iter_batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[torch.Tensor]: ...


# --- one optimisation step -------------------------------------------------------------------
@dataclass
class StepOutput:
    loss: torch.Tensor
    l2: torch.Tensor
    l1: torch.Tensor
    aux: torch.Tensor
    f: torch.Tensor
    """Latent activations actually used (after BatchTopK), detached."""
    recon: torch.Tensor
    scores: torch.Tensor | None = None
    """batchtopk: the selected f_i·Σ_m||d_i,m|| (for the inference threshold)."""


def crosscoder_loss(cc: CrossCoder, x: torch.Tensor, *, l1_coeff: float, dead: torch.Tensor | None,
                    aux_k: int, aux_k_coeff: float) -> StepOutput:
    """Forward + objective of one batch `x` [B, n_models, d] (normalised space).

    Two GEMMs (encoder over the concatenated pair, decoder to both models) and the decoder norms
    computed once; everything else is elementwise or a reduction.
    """
    pre = cc.pre_activations(x)
    f = torch.relu(pre)
    norms = decoder_norm_sum(cc.W_dec)
    zero = x.new_zeros(()).float()
    scores = None
    if cc.cfg.variant == "batchtopk":
        with torch.no_grad():
            scored = f * norms.to(f.dtype)
            mask = batch_topk_mask(scored, cc.cfg.k)
            scores = scored * mask
        f = f * mask
    recon = cc.decode(f)
    if cc.cfg.variant == "l1":
        loss, l2, l1 = l1_objective(x, recon, f, norms, l1_coeff)
        aux = zero
    else:
        l2 = reconstruction_loss(x, recon)
        l1 = (f.detach().float().sum(0) * norms.detach().float()).sum() / f.shape[0]
        aux = zero
        if dead is not None and aux_k_coeff > 0 and bool(dead.any()):
            residual = (x - recon).detach().flatten(1)
            aux = aux_k_loss(residual, pre, dead, cc.W_dec.flatten(1), aux_k)
        loss = l2 + aux_k_coeff * aux
    return StepOutput(loss=loss, l2=l2.detach(), l1=l1.detach(), aux=aux.detach(), f=f.detach(),
                      recon=recon.detach(), scores=scores)


class CrossCoderTrainer:
    """Owns the crosscoder, Adam, the lr schedule and the loop state; `step(x_raw)` does one update."""

    def __init__(self, cc: CrossCoder, train: TrainConfig, total_steps: int, device: torch.device):
        self.cc = cc.to(device)
        self.train = train
        self.total_steps = total_steps
        self.device = device
        params = [cc.W_enc, cc.W_dec, cc.b_enc, cc.b_dec]
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=train.lr, betas=ADAM_BETAS, **_adam_impl(device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, train.lr_decay_start_frac))
        self.step = 0
        self.tokens_since_fired = torch.zeros(cc.cfg.n_latents, dtype=torch.long, device=device)
        self.aux_k = train.aux_k or max(1, cc.cfg.d_model // 2)
        self.threshold_start = min(train.threshold_start_step, total_steps // 10)
        self._loss_fn = torch.compile(crosscoder_loss) if train.compile else crosscoder_loss

    def l1_coeff(self) -> float:
        return l1_coeff_at(self.step, self.total_steps, self.train.l1_coeff, self.train.l1_warmup_frac)

    def dead_latents(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.train.dead_tokens

    def train_step(self, x_raw: torch.Tensor, *, with_metrics: bool = False) -> dict[str, float] | None:
        x = self.cc.normalise(x_raw.to(self.device, non_blocking=True).float())
        l1_coeff = self.l1_coeff()
        lr = self.optimizer.param_groups[0]["lr"]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            out = self._loss_fn(self.cc, x, l1_coeff=l1_coeff, dead=self.dead_latents(),
                                aux_k=self.aux_k, aux_k_coeff=self.train.aux_k_coeff)
        # Checked BEFORE the update: a NaN never reaches the weights, so the last checkpoint and
        # the in-memory state both stay good.
        require_finite("crosscoder loss", float(out.loss.detach()), self.step)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.train.grad_clip, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            fired = (out.f > 0).any(dim=0)
            self.tokens_since_fired += x.shape[0]
            self.tokens_since_fired[fired] = 0
            if out.scores is not None and self.step >= self.threshold_start:
                self.cc.threshold.copy_(update_threshold(self.cc.threshold, out.scores, self.train.threshold_beta))
        self.step += 1
        if not with_metrics:
            return None
        ev = explained_variance(x, out.recon)
        metrics = {"loss": float(out.loss.detach()), "l2": float(out.l2), "l1": float(out.l1),
                   "l0": float((out.f > 0).float().sum(-1).mean()),
                   "frac_dead": float(self.dead_latents().float().mean()), "lr": lr, "l1_coeff": l1_coeff,
                   "tokens": self.step * x.shape[0]}
        metrics.update({f"explained_variance_{name}": float(v) for name, v in zip(model_names(len(ev)), ev, strict=True)})
        if self.cc.cfg.variant == "batchtopk":
            metrics.update(aux_loss=float(out.aux), threshold=float(self.cc.threshold))
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "data_position": {"start_batch": self.step},
            "crosscoder": {k: v.detach().cpu() for k, v in self.cc.state_dict().items()},
            "crosscoder_config": asdict(self.cc.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "tokens_since_fired": self.tokens_since_fired.cpu(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def save_checkpoint(self, path: Path) -> None:
        state = self.state_dict()
        artifacts.atomic_save(path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint (the stage runner already checked it was made with these settings)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torn by a full disk or a kill outside atomic_save: name the file
            raise UserError(f"{path}: unreadable train checkpoint ({str(err).splitlines()[0] if str(err) else err}); "
                            "delete it to start over, or set overwrite=true") from err
        self.cc.load_state_dict(state["crosscoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _adam_impl(device: torch.device) -> dict[str, Any]:
    """Fused Adam where torch has it for this device (one kernel for 50M parameters), else foreach."""
    return {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}


def model_names(n_models: int) -> list[str]:
    return ["base", "tuned"] if n_models == 2 else [f"model{m}" for m in range(n_models)]


# --- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(cc: CrossCoder, source: ActivationSource, *, batch_size: int, n_tokens: int, seed: int,
             device: torch.device) -> dict[str, float]:
    """Inference-mode metrics (batchtopk uses its threshold) on `n_tokens` from a separate stream."""
    batches = source.iter_batches(batch_size, seed=seed)
    meter = ExplainedVarianceMeter()
    l0 = 0.0
    for _ in range(max(1, math.ceil(n_tokens / batch_size))):
        x = cc.normalise(next(batches).to(device).float())
        recon, f = cc(x)
        meter.update(x, recon)
        l0 += float((f > 0).float().sum())
    ev = meter.explained_variance()
    out = {"l0": l0 / meter.count, "fvu": meter.fvu(), "eval_tokens": meter.count, "l2": meter.mean_sq_error()}
    out.update({f"explained_variance_{name}": float(v) for name, v in zip(model_names(len(ev)), ev, strict=True)})
    return out
