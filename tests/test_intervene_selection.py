"""intervene's latent sets: rules that pick the same latents are measured once; every set and every steering
direction is read against its own random controls."""

import numpy as np
import torch
from conftest import make_config

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


def test_every_steering_direction_gets_its_random_directions_at_every_alpha():
    from reasondiff.intervene.edits import Direction
    from reasondiff.intervene.run import interventions_of

    rng = np.random.default_rng(0)
    table = table_from_decoder(torch.randn(50, 2, 16) * torch.rand(50, 2, 1), rng)
    measured = {"adl_general": Direction(torch.randn(16), 1.0), "adl_reasoning": Direction(torch.randn(16), 2.0)}
    for n in (2, 0):
        cfg = make_config("intervene.selections=[tuned_r]", "intervene.set_sizes=[1]", "intervene.n_random_sets=1",
                          "intervene.steer_directions=[adl_general,adl_reasoning]", "intervene.steer_alphas=[1.0,4.0]",
                          f"intervene.n_random_directions={n}", config_name="intervene")
        interventions, _ = interventions_of(cfg, table, measured)
        steer = [iv for iv in interventions if iv.kind == "steer"]
        for name in measured:
            own = [iv for iv in steer if iv.selection == name]
            randoms = [iv for iv in steer if iv.selection == "random" and iv.matched_to == name]
            assert sorted(iv.alpha for iv in own) == [1.0, 4.0]
            assert sorted((iv.set_index, iv.alpha) for iv in randoms) == \
                [(i, a) for i in range(1, n + 1) for a in (1.0, 4.0)]
        assert len({iv.name for iv in interventions}) == len(interventions)


def test_a_steering_direction_is_read_against_its_random_directions_at_the_same_alpha():
    from reasondiff.intervene.report import steering_against_random, steering_table

    def row(selection, alpha, value, ci_low=None, matched_to="", text="reasoning"):
        return {"text": text, "kind": "steer", "selection": selection, "matched_to": matched_to, "size": 0,
                "alpha": alpha, "measure": "kl_closed", "value": value, "ci_low": value if ci_low is None else ci_low,
                "ci_high": value + 0.1}

    rows = [row("adl_reasoning", 1.0, 0.30, 0.20), row("adl_reasoning", 4.0, 0.30, 0.20),
            row("random", 1.0, 0.05, matched_to="adl_reasoning"), row("random", 1.0, 0.15, matched_to="adl_reasoning"),
            row("random", 4.0, 0.05, matched_to="adl_reasoning"), row("random", 4.0, 0.25, matched_to="adl_reasoning"),
            row("random", 1.0, 0.90, matched_to="adl_general"),  # another direction's control: not this one's null
            row("random", 1.0, 0.90, matched_to="adl_reasoning", text="general")]
    read = {s["row"]["alpha"]: s for s in steering_against_random(rows, "reasoning")}
    assert set(read) == {1.0, 4.0}
    assert (read[1.0]["low"], read[1.0]["high"], read[1.0]["beats"]) == (0.05, 0.15, True)
    assert (read[4.0]["low"], read[4.0]["high"], read[4.0]["beats"]) == (0.05, 0.25, False)  # 0.20 < 0.25
    table = steering_table(rows)
    assert "| `adl_reasoning` | 1 | 30.0% [20.0%, 40.0%] | 5.0% – 15.0% | yes |" in table
    without = steering_against_random([r for r in rows if r["selection"] != "random"], "reasoning")
    assert all(not s["beats"] and s["low"] != s["low"] for s in without)
