"""The trainer that owns a crosscoder's training state, one optimisation step, and the evaluation.

Recipe (Lindsey et al. 2024; Kissane & Nanda's replication): activations scaled per model by
harvest's factors; Adam (0.9, 0.999); grad-norm clip; lr constant for 80% of the steps then linear
to 0; λ ramped linearly from 0. `variant=batchtopk` (Minder et al. 2025) replaces the L1 penalty
by a batch-wide top-k on f_i·Σ_m||d_i,m|| plus AuxK on dead latents, and tracks the inference
threshold. The dictionary_learning fork's recipe (unsquared loss, its AuxK, geometric-median
b_dec, lr warm-up) is a set of train keys (`+recipe=fork_batchtopk`). Each step is dense or
sparse (step.py); designated shared latents keep their per-model decoder rows tied. A non-finite
loss stops the run BEFORE the update, so the last checkpoint and the weights stay good.

Under torchrun each rank gets a contiguous slice of every global batch; the slices' gradients are
averaged with one all-reduce before the shared latents' tying and the clip (the objective is a mean
over the batch, so the average of equal slices' gradients IS the global batch's gradient), and the
latents that fired anywhere reset the dead-latent counters on every rank: every rank keeps the same
weights, Adam state and counters as a single process on the global batch, up to float summation order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from reasondiff.config import TrainConfig
from reasondiff.core import artifacts, distributed
from reasondiff.core.errors import UserError
from reasondiff.core.tracking import require_finite
from reasondiff.crosscoder import pairs_kernel, sparse
from reasondiff.crosscoder.loss import (
    ExplainedVarianceMeter,
    explained_variance,
    geometric_median,
    l1_coeff_at,
    lr_factor,
    update_threshold,
)
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
from reasondiff.train.step import (
    Objective,
    StepOutput,
    crosscoder_loss,
    dense_objective,
    select_active,
    sparse_objective,
)

__all__ = ["CrossCoderTrainer", "StepOutput", "crosscoder_config", "crosscoder_loss", "evaluate"]

ADAM_BETAS = (0.9, 0.999)


class ActivationSource(Protocol):
    """What the trainer reads: harvest's ActivationStore, the live source, or the synthetic one."""

    d_model: int
    scaling_factors: torch.Tensor

    def iter_batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[torch.Tensor]: ...


def crosscoder_config(train: TrainConfig, d_model: int) -> CrossCoderConfig:
    """The crosscoder a train config describes, for activations of width `d_model`."""
    n_latents = train.n_latents or train.expansion_factor * d_model
    return CrossCoderConfig(d_model=d_model, n_latents=n_latents, variant=train.variant, k=train.k,
                            dec_init_norm=train.dec_init_norm, same_init_across_models=train.same_init_across_models,
                            n_shared_latents=train.n_shared_latents(n_latents),
                            shared_penalty_ratio=train.shared_penalty_ratio if train.shared_latents > 0 else 1.0)


class CrossCoderTrainer:
    """Owns the crosscoder, Adam, the lr schedule and the loop state; `step(x_raw)` does one update."""

    def __init__(self, cc: CrossCoder, train: TrainConfig, total_steps: int, device: torch.device):
        self.cc = cc.to(device)
        self.train = train
        self.total_steps = total_steps
        self.device = device
        params = [cc.W_enc_by_latent, cc.W_dec, cc.b_enc, cc.b_dec]
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=train.lr, betas=ADAM_BETAS, **_adam_impl(device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, train.lr_decay_start_frac, train.lr_warmup_steps))
        self.step = 0
        self.tokens_since_fired = torch.zeros(cc.cfg.n_latents, dtype=torch.long, device=device)
        self.aux_k = train.aux_k or max(1, cc.cfg.d_model // 2)
        self.threshold_start = min(train.threshold_start_step, total_steps // 10)
        self.objective = Objective(reconstruction=train.reconstruction_loss, aux_k=self.aux_k,
                                   aux_k_coeff=train.aux_k_coeff, aux_k_style=train.aux_k_style)
        self._dense = torch.compile(dense_objective) if train.compile else dense_objective
        self.world = distributed.world_size()
        """torchrun ranks sharing each global batch (train_step gets this rank's slice)."""
        if self.world > 1 and cc.cfg.variant == "batchtopk":
            raise UserError("train.variant=batchtopk is not data-parallel yet (its top-k, AuxK and threshold are "
                            "batch-wide): run it in one process, or use train.variant=l1 under torchrun")
        if device.type == "cpu":
            keep_freed_memory()
        self.kernel = self._pairs_kernel()
        """The compiled pairs kernels the sparse step uses (None: torch ops)."""

    def l1_coeff(self) -> float:
        return l1_coeff_at(self.step, self.total_steps, self.train.l1_coeff, self.train.l1_warmup_frac)

    def dead_latents(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.train.dead_tokens

    def use_sparse(self, density: float) -> bool:
        """train.sparse=auto: the sparse step on a CPU when the batch's L0/F is at most
        sparse_max_density (the measured crossover is 10-12% from 2x64 -> 1024 to 2x896 -> 14336
        latents: docs/train.md); a GPU stays dense until the sparse path is measured there."""
        mode = self.train.sparse
        if mode != "auto":
            return mode == "on"
        return self.device.type == "cpu" and density <= self.train.sparse_max_density

    def _pairs_kernel(self):
        """train.sparse_kernel resolved once: the compiled kernels, or None for torch ops (a GPU, a
        run that never takes the sparse step, `torch`, or `auto` where they cannot be built)."""
        choice = self.train.sparse_kernel
        if choice == "torch" or self.device.type != "cpu" or not self.may_use_sparse():
            return None
        kernel = pairs_kernel.load()
        if kernel is None and choice == "cpp":
            raise UserError(f"train.sparse_kernel=cpp: the C++ kernels could not be built here ({pairs_kernel.failure()}); "
                            "install a C++ compiler with OpenMP and `pip install ninja`, or set train.sparse_kernel=auto")
        return kernel

    def may_use_sparse(self) -> bool:
        """Whether `use_sparse` can say yes for some density (then the trainer builds the pairs first)."""
        return self.train.sparse == "on" or (self.train.sparse == "auto" and self.device.type == "cpu")

    def train_step(self, x_raw: torch.Tensor, *, with_metrics: bool = False) -> dict[str, float] | None:
        x = self.cc.normalise(x_raw.to(self.device, non_blocking=True).float())
        global_batch = x.shape[0] * self.world
        if self.step == 0 and self.train.b_dec_init == "geometric_median":
            with torch.no_grad():  # the fork: b_dec at the first normalised batch's geometric median
                whole = torch.cat([part.to(self.device) for part in distributed.all_gather(x.cpu())])
                self.cc.b_dec.copy_(geometric_median(whole))
        l1_coeff = self.l1_coeff()
        lr = self.optimizer.param_groups[0]["lr"]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        # the l1 variant on the kernels: the scan reads x W_enc and adds b_enc itself, so the biased
        # [B, F] pre-activations exist only if the dense step runs (no mask either)
        scan = self.kernel is not None and self.cc.cfg.variant == "l1"
        with autocast:  # one dense GEMM both paths need; only the dense path backpropagates through it
            pre = self.cc.pre_activations(x, with_bias=not scan)
            active, scores = (None, None) if scan else select_active(self.cc, pre)
        # the pairs, when a sparse step is possible, give the density (and later the fired latents)
        # without more passes over the [B, F] mask
        if scan:
            pairs = sparse.ActivePairs.above(pre.detach(), 0.0, self.kernel, offset=self.cc.b_enc.detach())
        else:
            pairs = sparse.ActivePairs.from_mask(active, self.kernel) if self.may_use_sparse() else None
        n_active = pairs.nnz if pairs is not None else int(torch.count_nonzero(active))  # not .sum(): int64 cast
        density = n_active / pre.numel()
        dead = self.dead_latents()
        if self.train.aux_k_style == "fork":  # the fork counts this batch before choosing dead latents
            fired_now = pairs.latent_counts() > 0 if pairs is not None else active.any(dim=0)
            dead = (self.tokens_since_fired + x.shape[0] >= self.train.dead_tokens) & ~fired_now
        if self.use_sparse(density):
            out = sparse_objective(self.cc, x, None if scan else pre.detach(), active, l1_coeff=l1_coeff, dead=dead,
                                   objective=self.objective, pairs=pairs)
        else:
            if scan:
                with autocast:
                    pre = pre + self.cc.b_enc.to(pre.dtype)
                active, scores = select_active(self.cc, pre)
            with autocast:
                out = self._dense(self.cc, x, pre, active, l1_coeff=l1_coeff, dead=dead, objective=self.objective)
        if scores is not None and out.scores is None:
            out.scores = scores
        # Checked BEFORE the update: a NaN never reaches the weights, so the last checkpoint and
        # the in-memory state both stay good.
        require_finite("crosscoder loss", float(out.loss.detach()), self.step)
        if not out.sparse:
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
        self._average_grads()
        self._tie_shared_decoder_grads()
        # the kernels' sums of squares are of the gradients as written: valid unless the ranks'
        # average or the shared latents' tying changed them since
        known = out.grad_sq_norms if self.world == 1 and self.cc.cfg.n_shared_latents == 0 else None
        self._clipped_optimizer_step(known)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():
            fired = out.fired if out.fired is not None else out.active.any(dim=0)
            if self.world > 1:  # fired on any rank's slice of the batch
                fired = distributed.all_reduce_(fired.to(torch.int32), "max").bool()
            self.tokens_since_fired += global_batch
            self.tokens_since_fired[fired] = 0
            if out.scores is not None and self.step >= self.threshold_start:
                self.cc.threshold.copy_(update_threshold(self.cc.threshold, out.scores, self.train.threshold_beta))
        self.step += 1
        if not with_metrics:
            return None
        ev = explained_variance(x, out.recon)
        loss, l2, l1, l0 = self._batch_means(float(out.loss.detach()), float(out.l2), float(out.l1),
                                             n_active / x.shape[0])
        metrics = {"loss": loss, "l2": l2, "l1": l1,
                   "l0": l0, "density": density, "sparse_step": float(out.sparse),
                   "frac_dead": float(self.dead_latents().float().mean()), "lr": lr, "l1_coeff": l1_coeff,
                   "tokens": self.step * global_batch}
        metrics.update({f"explained_variance_{name}": float(v) for name, v in zip(model_names(len(ev)), ev, strict=True)})
        if self.cc.cfg.variant == "batchtopk":
            metrics.update(aux_loss=float(out.aux), threshold=float(self.cc.threshold))
        return metrics

    @torch.no_grad()
    def _average_grads(self) -> None:
        """The global batch's gradient from the ranks' slices: one all-reduce of all gradients (a
        flat buffer), divided by the number of ranks (a no-op in one process)."""
        if self.world == 1:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        distributed.all_reduce_(flat, "sum").div_(self.world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _batch_means(self, *values: float) -> list[float]:
        """Metrics of the slices averaged over the ranks (the global batch's, for means over tokens)."""
        if self.world == 1:
            return list(values)
        return (distributed.all_reduce_(torch.tensor(values, dtype=torch.float64), "sum") / self.world).tolist()

    @torch.no_grad()
    def _tie_shared_decoder_grads(self) -> None:
        """A designated shared latent has ONE decoder vector: its gradient is the sum over the
        models' rows, given to every row, so Adam keeps the (identically initialised) rows equal."""
        n = self.cc.cfg.n_shared_latents
        if n and self.cc.W_dec.grad is not None:
            g = self.cc.W_dec.grad[:n]
            g.copy_(g.sum(dim=1, keepdim=True).expand_as(g))

    @torch.no_grad()
    def _clip_coefficient(self, known: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """clip_grad_norm_'s factor, counting each tied decoder vector once (not once per model row).
        `known`: ||grad||² of some parameters by name, already summed (the sparse kernels')."""
        n, M = self.cc.cfg.n_shared_latents, self.cc.cfg.n_models
        grads = [p.grad for p in self.params if p.grad is not None]
        if known:
            names = {id(p): name for name, p in self.cc.named_parameters()}
            rest = [p.grad for p in self.params if p.grad is not None and names[id(p)] not in known]
            total_sq = sum(known.values()) + sum(g.float().pow(2).sum() for g in rest)
            total = total_sq.clamp_min(0).sqrt()
        elif n == 0 or M == 1:
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        else:
            total_sq = sum(g.float().pow(2).sum() for g in grads) - (M - 1) * self.cc.W_dec.grad[:n, 0].float().pow(2).sum()
            total = total_sq.clamp_min(0).sqrt()
        return (self.train.grad_clip / (total + 1e-6)).clamp(max=1.0)

    @torch.no_grad()
    def _clip_grad_norm(self) -> None:
        """Scale the gradients in place by `_clip_coefficient` (what the non-fused optimizers get)."""
        torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], self._clip_coefficient())

    def _clipped_optimizer_step(self, known: dict[str, torch.Tensor] | None = None) -> None:
        """Clip, then Adam. The fused Adam kernel divides each gradient by `grad_scale` as it reads
        it (the hook GradScaler uses), so there the clip costs no extra pass over the gradients."""
        if self.optimizer.defaults.get("fused"):
            self.optimizer.grad_scale = 1.0 / self._clip_coefficient(known)
            try:
                self.optimizer.step()
            finally:
                self.optimizer.grad_scale = None
        else:
            self._clip_grad_norm()
            self.optimizer.step()

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
        _upgrade_optimizer_state(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def keep_freed_memory() -> None:
    """Keep freed memory in the heap on glibc (a no-op elsewhere).

    glibc hands every freed block over 32 MB back to the OS, and a step allocates a dozen such
    tensors (grads, [B, F] latents): each new one then costs a page fault per 4 KB, about 90 ms per
    100 MB measured on a shared 2-core CPU, as much as the sparse step's own arithmetic. This is
    the runtime form of MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>; jemalloc/tcmalloc via
    LD_PRELOAD (PyTorch's CPU tuning guide) do the same for the whole process.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return
    if mallopt is None:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def _upgrade_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Adam moments of a checkpoint written before W_enc was stored latent-major ([n_models, d_model,
    n_latents] then) are permuted to the parameter's [n_latents, n_models, d_model]."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.dim() == 3 and value.shape != param.shape and \
                        value.permute(2, 0, 1).shape == param.shape:
                    state[name] = value.permute(2, 0, 1).contiguous()


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
