"""Latent Scaling: the closed form recovers known scales, streaming matches the one-shot formula,
and the ratios tell a truly tuned-only latent from one the base model also carries."""

from __future__ import annotations

import math

import pytest
import torch

from reasondiff.analyze.latent_scaling import LatentScaling, beta_columns, closed_form_beta
from reasondiff.crosscoder.geometry import BASE, TUNED


def test_closed_form_recovers_known_beta_exactly_when_noise_is_orthogonal():
    d = torch.randn(32)
    f = torch.rand(500) * (torch.rand(500) < 0.3)
    noise = torch.randn(500, 32)
    noise -= (noise @ d)[:, None] * d / d.dot(d)  # orthogonal to d: the least-squares β is exact
    y = 2.5 * f[:, None] * d + noise
    assert closed_form_beta(d, f, y) == pytest.approx(2.5, rel=1e-6)


def test_closed_form_recovers_known_beta_with_isotropic_noise():
    d = torch.randn(64)
    f = torch.rand(20_000)
    y = -0.7 * f[:, None] * d + 0.5 * torch.randn(20_000, 64)
    assert closed_form_beta(d, f, y) == pytest.approx(-0.7, abs=0.02)


def test_closed_form_matches_lstsq():
    d, f, y = torch.randn(16, dtype=torch.float64), torch.rand(300, dtype=torch.float64), torch.randn(300, 16, dtype=torch.float64)
    design = (f[:, None] * d).reshape(-1, 1)
    expected = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution.item()
    assert closed_form_beta(d, f, y) == pytest.approx(expected, rel=1e-9)


def test_closed_form_of_a_latent_that_never_fires_is_nan():
    assert math.isnan(closed_form_beta(torch.randn(4), torch.zeros(10), torch.randn(10, 4)))


def _planted(n=4000, d=24, n_latents=6, seed=0):
    """Activations built from a known decoder so every β is known in advance.

    latent 0: tuned-only and truly so (base activation has none of its direction);
    latent 1: "tuned-only" by decoder norm, but the base model carries 0.8 of its direction
              (what the L1 penalty can produce: Minder et al.'s complete shrinkage).
    """
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(n_latents, 2, d, generator=g) * 0.3
    W_dec[0, BASE] = 0.0
    W_dec[1, BASE] = 0.0
    f = torch.rand(n, n_latents, generator=g) * (torch.rand(n, n_latents, generator=g) < 0.2)
    recon = torch.einsum("nf,fmd->nmd", f, W_dec)
    x = recon.clone()
    x[:, BASE] += 0.8 * f[:, 1:2] * W_dec[1, TUNED]  # the base model needs latent 1's direction
    return W_dec, f, x, recon


def test_streaming_matches_one_shot_closed_form_for_every_target_and_model():
    W_dec, f, x, recon = _planted()
    latents, own = torch.tensor([0, 1, 3]), torch.tensor([TUNED, TUNED, BASE])
    scaling = LatentScaling(latents, own, W_dec)
    for chunk in torch.arange(len(f)).split(777):  # uneven batches
        scaling.update(f[chunk], x[chunk], recon[chunk])
    betas = scaling.betas()
    assert set(betas) == set(beta_columns())
    for j, (latent, own_model) in enumerate(zip(latents.tolist(), own.tolist(), strict=True)):
        d = W_dec[latent, own_model]
        for m, name in ((BASE, "base"), (TUNED, "tuned")):
            error = x[:, m] - recon[:, m] + f[:, latent, None] * W_dec[latent, m]
            for target, y in (("activation", x[:, m]), ("error", error), ("reconstruction", recon[:, m])):
                expected = closed_form_beta(d, f[:, latent], y)
                assert betas[f"beta_{target}_{name}"][j].item() == pytest.approx(expected, rel=1e-4, abs=1e-6), (latent, target, name)


def test_ratios_separate_a_truly_tuned_only_latent_from_a_shrunk_one():
    W_dec, f, x, recon = _planted(n=20_000)
    scaling = LatentScaling(torch.tensor([0, 1]), torch.tensor([TUNED, TUNED]), W_dec)
    scaling.update(f, x, recon)
    betas = scaling.betas()
    # Own model: its activation is fully explained by the latent (β ≈ 1 up to other latents' overlap).
    assert betas["beta_error_tuned"][0].item() == pytest.approx(1.0, abs=1e-4)
    # Truly tuned-only: the base model's error carries none of its direction.
    assert abs(betas["nu_error"][0].item()) < 0.05
    # Shrunk one: the base model's error carries 0.8 of it, and ν_error says so.
    assert betas["nu_error"][1].item() == pytest.approx(0.8, abs=0.02)
    assert betas["beta_error_base"][1].item() == pytest.approx(0.8, abs=0.02)


def test_state_dict_round_trip_resumes_exactly():
    W_dec, f, x, recon = _planted()
    latents, own = torch.tensor([0, 2]), torch.tensor([TUNED, BASE])
    whole = LatentScaling(latents, own, W_dec)
    whole.update(f, x, recon)
    first = LatentScaling(latents, own, W_dec)
    first.update(f[:1000], x[:1000], recon[:1000])
    resumed = LatentScaling(latents, own, W_dec)
    resumed.load_state_dict(first.state_dict())
    resumed.update(f[1000:], x[1000:], recon[1000:])
    for key, value in whole.betas().items():
        torch.testing.assert_close(resumed.betas()[key], value, equal_nan=True)
    with pytest.raises(ValueError):
        LatentScaling(torch.tensor([1, 2]), own, W_dec).load_state_dict(first.state_dict())
