"""Crosscoder objective and schedules against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from reasondiff.crosscoder.loss import (
    ExplainedVarianceMeter,
    aux_k_loss,
    explained_variance,
    fraction_variance_unexplained,
    l1_coeff_at,
    l1_objective,
    lr_factor,
    reconstruction_loss,
    sparsity_penalty,
    update_threshold,
)
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig, decoder_norm_sum
from reasondiff.train.trainer import crosscoder_loss


def test_decoder_norm_sum_by_hand():
    W_dec = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [6.0, 8.0]]])  # [2 latents, 2 models, 2]
    assert decoder_norm_sum(W_dec).tolist() == [6.0, 10.0]


def test_l1_objective_by_hand():
    # token 0: errors (1, 0) and (0, 1) -> 1 + 1 = 2; token 1: (0, 0) and (0, 2) -> 4; mean 3.
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])
    recon = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, -1.0]]])
    f = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    norms = torch.tensor([0.5, 1.0, 2.0])  # token 0: 0.5 + 4 = 4.5; token 1: 3; mean 3.75
    loss, l2, l1 = l1_objective(x, recon, f, norms, l1_coeff=2.0)
    assert reconstruction_loss(x, recon).item() == pytest.approx(3.0)
    assert sparsity_penalty(f, norms).item() == pytest.approx(3.75)
    assert (l2.item(), l1.item(), loss.item()) == pytest.approx((3.0, 3.75, 3.0 + 2.0 * 3.75))
    # the paper's loss is the SQUARED error: the fork's unsquared default would give (1.414 + 2) / 2
    assert l2.item() != pytest.approx(((x - recon).flatten(1).norm(dim=-1)).mean().item())


def test_lr_schedule_by_hand():
    assert [lr_factor(s, 100, 0.8) for s in (0, 50, 79, 80, 90, 95, 100)] == pytest.approx(
        [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.0])
    assert lr_factor(3, 10, 1.0) == 1.0


def test_l1_warmup_by_hand():
    assert [l1_coeff_at(s, 100, 2.0, 0.05) for s in (0, 1, 4, 5, 60)] == pytest.approx([0.0, 0.4, 1.6, 2.0, 2.0])
    assert l1_coeff_at(0, 100, 2.0, 0.0) == 2.0


def test_explained_variance_by_hand():
    x = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # base 1, 3; tuned 2, 4 (Σ||x − mean||² = 2 each)
    recon = torch.tensor([[[1.5], [2.0]], [[2.5], [4.0]]])  # base error 0.25 + 0.25; tuned exact
    assert explained_variance(x, recon).tolist() == pytest.approx([0.75, 1.0])
    assert fraction_variance_unexplained(x, recon).item() == pytest.approx(0.5 / 4)


def test_aux_k_loss_by_hand():
    residual = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    pre = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, -1.0]])
    dead = torch.tensor([False, True, True])
    W_dec_flat = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # k_aux=1 among dead latents: token 0 -> latent 2 (2.0) -> [0, 2]; token 1 -> latent 1 (3.0) -> [3, 0]
    # error per token 0 and 1 -> 0.5; residual variance per token 2.5; scale min(2/1, 1) = 1
    assert aux_k_loss(residual, pre, dead, W_dec_flat, k_aux=1).item() == pytest.approx(0.2)
    assert aux_k_loss(residual, pre, dead, W_dec_flat, k_aux=4).item() == pytest.approx(0.5 * (
        ((residual - torch.tensor([[1.0, 2.0], [3.0, 0.0]])) ** 2).sum(-1).mean() / 2.5).item())
    assert aux_k_loss(residual, pre, torch.zeros(3, dtype=torch.bool), W_dec_flat, k_aux=1).item() == 0.0


def test_update_threshold_by_hand():
    scores = torch.tensor([[0.0, 0.5], [2.0, 0.0]])
    assert update_threshold(torch.tensor(-1.0), scores, beta=0.9).item() == pytest.approx(0.5)
    assert update_threshold(torch.tensor(1.0), scores, beta=0.9).item() == pytest.approx(0.95)
    assert update_threshold(torch.tensor(1.0), torch.zeros(2, 2), beta=0.9).item() == 1.0


def test_crosscoder_loss_matches_the_formula_and_its_gradients():
    cc = CrossCoder(CrossCoderConfig(d_model=6, n_latents=20))
    with torch.no_grad():
        cc.b_enc.normal_()
    x = torch.randn(9, 2, 6)
    out = crosscoder_loss(cc, x, l1_coeff=0.7, dead=None, aux_k=3, aux_k_coeff=0.0)
    # the reference: per-model einsums, as in the dictionary_learning fork but with the paper's loss
    f = torch.relu(torch.einsum("bmd,mdf->bf", x, cc.W_enc) + cc.b_enc)
    recon = torch.einsum("bf,fmd->bmd", f, cc.W_dec) + cc.b_dec
    ref = (recon - x).pow(2).sum((1, 2)).mean() + 0.7 * (f * cc.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, ref)
    grads = torch.autograd.grad(out.loss, [cc.W_enc_by_latent, cc.W_dec, cc.b_enc, cc.b_dec])
    ref_grads = torch.autograd.grad(ref, [cc.W_enc_by_latent, cc.W_dec, cc.b_enc, cc.b_dec])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_batchtopk_loss_keeps_k_per_token_on_average():
    cc = CrossCoder(CrossCoderConfig(d_model=6, n_latents=40, variant="batchtopk", k=4))
    x = torch.randn(16, 2, 6)
    out = crosscoder_loss(cc, x, l1_coeff=0.0, dead=torch.ones(40, dtype=torch.bool), aux_k=3, aux_k_coeff=0.1)
    assert (out.f > 0).sum() == 4 * 16
    assert out.aux.item() > 0 and out.loss.item() == pytest.approx(out.l2.item() + 0.1 * out.aux.item())
    assert out.scores is not None and (out.scores > 0).sum() == 4 * 16


def test_streamed_explained_variance_equals_the_one_batch_answer():
    torch.manual_seed(0)
    x = torch.randn(300, 2, 8) * torch.tensor([1.0, 3.0]).view(1, 2, 1) + 5.0  # a large mean: catches x² - mean² rounding
    recon = x + 0.3 * torch.randn_like(x)
    meter = ExplainedVarianceMeter()
    for chunk in (slice(0, 7), slice(7, 7), slice(7, 200), slice(200, 300)):  # uneven, one empty
        meter.update(x[chunk], recon[chunk])
    resumed = ExplainedVarianceMeter()
    resumed.load_state_dict(meter.state_dict())
    for m in (meter, resumed):
        torch.testing.assert_close(m.explained_variance().float(), explained_variance(x, recon), rtol=1e-5, atol=1e-6)
        assert m.fvu() == pytest.approx(float(fraction_variance_unexplained(x, recon)), rel=1e-5)
        assert m.mean_sq_error() == pytest.approx(float(reconstruction_loss(x, recon)), rel=1e-5)
    assert ExplainedVarianceMeter().explained_variance().numel() == 0
