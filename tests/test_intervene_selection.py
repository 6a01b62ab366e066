"""intervene's latent sets: rules that pick the same latents are measured once."""

import numpy as np
import torch

from reasondiff.crosscoder.geometry import delta_norm, relative_decoder_norm
from reasondiff.intervene.selection import LatentTable, latent_sets


def table_from_decoder(W_dec: torch.Tensor, rng: np.random.Generator) -> LatentTable:
    n = W_dec.shape[0]
    freq = rng.uniform(0.001, 0.2, n)
    return LatentTable(relative_norm=relative_decoder_norm(W_dec).numpy().astype(float),
                       delta_norm=delta_norm(W_dec).numpy().astype(float),
                       freq_general=freq, freq_reasoning=freq * rng.uniform(0.5, 2.0, n),
                       mean_activation=np.ones(n), nu_error=np.full(n, np.nan), classes=["shared"] * n,
                       designated=np.zeros(n, dtype=bool))


def test_delta_repeats_tuned_r_and_is_measured_once():
    rng = np.random.default_rng(0)
    W_dec = torch.randn(200, 2, 16) * torch.rand(200, 2, 1)  # [latents, models, d]: norms vary per model
    table = table_from_decoder(W_dec, rng)
    sets, skipped = latent_sets(table, ["tuned_r", "delta", "selectivity"], [1, 16, 64], n_random=2, pool=10, seed=0)
    rules = {s.selection for s in sets}
    assert rules == {"tuned_r", "selectivity", "random"}
    assert "tuned_r" in skipped["delta"]
    # the reason holds: Δ's own ranking gives tuned_r's sets at every size
    by_delta = np.argsort(-table.delta_norm, kind="stable")
    for s in sets:
        if s.selection == "tuned_r":
            assert set(s.latents) == set(by_delta[: s.size].tolist())
    # each kept rule still has its random controls, matched to it
    assert {(s.matched_to, s.size) for s in sets if s.selection == "random"} == \
        {(rule, n) for rule in ("tuned_r", "selectivity") for n in (1, 16, 64)}


def test_rules_with_different_sets_are_all_kept():
    rng = np.random.default_rng(1)
    table = table_from_decoder(torch.randn(100, 2, 8), rng)
    sets, skipped = latent_sets(table, ["tuned_r", "base_r"], [1, 4], n_random=1, pool=5, seed=0)
    assert not skipped
    assert {s.selection for s in sets if s.set_index == 0} == {"tuned_r", "base_r"}
