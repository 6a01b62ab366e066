"""The dictionary_learning fork's BatchTopK recipe (issue 14 §4), checked by hand and against its definitions."""

from __future__ import annotations

import pytest
import torch
from conftest import make_config

from reasondiff.config import TrainConfig
from reasondiff.crosscoder.loss import aux_k_loss, geometric_median, lr_factor, reconstruction_loss
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
from reasondiff.train.trainer import CrossCoderTrainer


def test_recipe_preset_sets_the_forks_values():
    train = make_config("+exp=qwen05b", "+recipe=fork_batchtopk", config_name="train").train
    assert (train.variant, train.k, train.reconstruction_loss, train.aux_k_style) == ("batchtopk", 100, "unsquared", "fork")
    assert (train.aux_k_coeff, train.aux_k, train.dead_tokens) == (1 / 32, None, 10_000_000)
    assert (train.b_dec_init, train.lr, train.lr_warmup_steps, train.lr_decay_start_frac) == ("geometric_median", 1e-4,
                                                                                             1000, 1.0)
    assert (train.batch_size, train.dec_init_norm, train.same_init_across_models) == (2048, 1.0, True)
    assert (train.grad_clip, train.threshold_beta, train.threshold_start_step) == (1.0, 0.999, 1000)
    default = make_config("+exp=qwen05b", config_name="train").train  # the paper's recipe stays the default
    assert (default.reconstruction_loss, default.aux_k_style, default.b_dec_init, default.lr_warmup_steps) == (
        "squared", "scaled", "zeros", 0)


def test_unsquared_reconstruction_loss_by_hand():
    # per (token, model) error norms: token 0: 1, 1; token 1: 0, 2 -> the fork's mean over tokens AND models = 1.0
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])
    recon = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, -1.0]]])
    assert reconstruction_loss(x, recon, "unsquared").item() == pytest.approx(1.0)
    assert reconstruction_loss(x, recon, "squared").item() == pytest.approx(3.0)  # the paper: (2 + 4) / 2


def test_lr_warmup_by_hand():
    # the fork's get_lr_schedule(total, warmup=10, decay_start=None): step/10, then 1
    assert [lr_factor(s, 100, 1.0, warmup_steps=10) for s in (0, 5, 9, 10, 99)] == pytest.approx([0, 0.5, 0.9, 1, 1])
    # warm-up then the paper's decay still composes
    assert [lr_factor(s, 100, 0.8, warmup_steps=10) for s in (5, 50, 90)] == pytest.approx([0.5, 1.0, 0.5])


def test_fork_aux_k_by_hand():
    residual = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    pre = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, -1.0]])
    dead = torch.tensor([False, True, True])
    W_dec_flat = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    norms = torch.tensor([1.0, 3.0, 1.0])
    # k_aux=1, fork ranks dead latents by ReLU(pre)·Σ||d||: token 0 -> latent 1 (1·3 > 2·1), token 1 -> latent 1;
    # recon [1, 0] and [3, 0]; errors 1 + 4 = 5 and 1 -> 3; / residual variance 2.5 = 1.2 (no scaling)
    assert aux_k_loss(residual, pre, dead, W_dec_flat, 1, "fork", norms).item() == pytest.approx(1.2)
    # the sparsify style ranks by pre-activation: token 0 -> latent 2 -> 0.2 (tests/test_train_loss.py)
    assert aux_k_loss(residual, pre, dead, W_dec_flat, 1, "scaled", norms).item() == pytest.approx(0.2)
    # k_aux=4 > 2 dead: both pick every dead latent (error 1 + 1 -> 1 / 2.5 = 0.4); only sparsify scales by 2/4
    assert aux_k_loss(residual, pre, dead, W_dec_flat, 4, "fork", norms).item() == pytest.approx(0.4)
    assert aux_k_loss(residual, pre, dead, W_dec_flat, 4, "scaled", norms).item() == pytest.approx(0.2)


def test_geometric_median_minimises_the_summed_distance_per_model():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(200, 2, 5, generator=gen)
    points[:20] += 40.0  # outliers drag the mean, not the median
    median = geometric_median(points)
    assert median.shape == (2, 5)
    # optimality: the (sub)gradient of Σ_n ||p_n − g|| vanishes at the geometric median, per model
    for m in range(2):
        direction = points[:, m] - median[m]
        gradient = (direction / direction.norm(dim=-1, keepdim=True)).sum(0)
        assert gradient.norm() < 1e-2 * len(points)
        assert (points[:, m] - median[m]).norm(dim=-1).sum() < (points[:, m] - points[:, m].mean(0)).norm(dim=-1).sum()
    assert median.norm(dim=-1).max() < 3.0 < points.mean(0).norm(dim=-1).min()
    # symmetric points: the median is their centre
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).unsqueeze(1) + 3.0
    torch.testing.assert_close(geometric_median(square), torch.full((1, 2), 3.0))


def _trainer(**overrides):
    train = TrainConfig(variant="batchtopk", k=4, batch_size=32, n_tokens=32 * 20, lr=1e-3, dead_tokens=32,
                        aux_k=3, **overrides)
    torch.manual_seed(0)
    cc = CrossCoder(CrossCoderConfig(d_model=6, n_latents=200, variant="batchtopk", k=4,
                                     same_init_across_models=train.same_init_across_models))
    return CrossCoderTrainer(cc, train, 20, torch.device("cpu"))


def test_fork_counts_the_current_batch_before_choosing_dead_latents():
    x = torch.randn(32, 2, 6) * 3
    # dead_tokens = one batch: the fork's latents that do not fire in batch 0 are already dead in it
    fork = _trainer(aux_k_style="fork").train_step(x, with_metrics=True)
    scaled = _trainer(aux_k_style="scaled").train_step(x, with_metrics=True)
    assert fork["aux_loss"] > 0 and scaled["aux_loss"] == 0


def test_geometric_median_b_dec_and_same_init():
    trainer = _trainer(b_dec_init="geometric_median", lr_warmup_steps=3, same_init_across_models=True)
    assert torch.equal(trainer.cc.W_dec[:, 0], trainer.cc.W_dec[:, 1])
    torch.testing.assert_close(trainer.cc.W_dec.norm(dim=-1), torch.full((200, 2), 0.08))
    x = torch.randn(32, 2, 6) * 3 + 1.0
    trainer.train_step(x)
    # step 0 has lr 0 under the warm-up, so b_dec is exactly the first normalised batch's geometric median
    torch.testing.assert_close(trainer.cc.b_dec.detach(), geometric_median(trainer.cc.normalise(x)))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)
