"""The scan's maths: CKA, KL and the fraction of KL a patch closes, against definitions written here."""

from __future__ import annotations

import math

import pytest
import torch

from reasondiff.scan.meters import (
    PatchMeter,
    RepresentationMeter,
    bootstrap_fractions,
    resid_hook_name,
    sites_of,
)
from reasondiff.scan.recommend import (
    Curve,
    first_large_layer,
    largest_step,
    layer_range,
    recommend,
    uncertain_layers,
)
from reasondiff.scan.similarity import (
    MinibatchCKA,
    cosine,
    fraction_closed,
    hsic_unbiased,
    hsic_unbiased_batched,
    hsic_unbiased_terms,
    kl_divergence,
    linear_cka,
    relative_change,
)


def hsic_song_gram(x: torch.Tensor, y: torch.Tensor) -> float:
    """Song et al. 2012, Eq. 5, transcribed literally on n x n Gram matrices (no centring):
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    K, L = x @ x.T, y @ y.T
    K.fill_diagonal_(0)
    L.fill_diagonal_(0)
    one = torch.ones(n, dtype=torch.float64)
    value = torch.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ K @ L @ one)
    return float(value / (n * (n - 3)))


def biased_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al. 2019, Eq. for linear CKA: ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) on centred columns."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


@pytest.mark.parametrize("n", [40, 10])  # more tokens than features (d x d products) and fewer (Gram matrices)
def test_hsic_equals_the_gram_matrix_definition(n):
    x, y = torch.randn(n, 17), torch.randn(n, 15)
    y = y + 0.5 * x[:, :15]
    for a, b in ((x, y), (x, x), (y, y)):
        assert hsic_unbiased(a, b).item() == pytest.approx(hsic_song_gram(a, b), rel=1e-9)
    assert hsic_unbiased_terms(x, y).tolist() == pytest.approx(
        [hsic_song_gram(x, y), hsic_song_gram(x, x), hsic_song_gram(y, y)], rel=1e-9)
    # the estimator is translation invariant (the implementation centres; the definition does not)
    assert hsic_unbiased(x + 3.0, y - 2.0).item() == pytest.approx(hsic_song_gram(x + 3.0, y - 2.0), rel=1e-9)


@pytest.mark.parametrize("width", [8, 40])  # T = 20 above and below the width: both product forms
def test_masked_batched_hsic_equals_each_context_alone(width):
    x, y = torch.randn(3, 20, width), torch.randn(3, 20, width + 1)
    mask = torch.rand(3, 20) > 0.3
    mask[2, 3:] = False  # 3 tokens: undefined, NaN
    hsic, n = hsic_unbiased_batched(x, y, mask)
    assert n.tolist() == mask.sum(1).tolist()
    for b in range(2):
        rows = mask[b]
        expected = [hsic_song_gram(x[b][rows], y[b][rows]), hsic_song_gram(x[b][rows], x[b][rows]),
                    hsic_song_gram(y[b][rows], y[b][rows])]
        assert hsic[b].tolist() == pytest.approx(expected, rel=1e-9)
    assert hsic[2].isnan().all()
    meter = MinibatchCKA(1)
    meter.update_batched(0, x, y, mask)
    assert int(meter.batches[0]) == 2  # the 3-token context is skipped
    assert meter.xy[0].item() == pytest.approx(float(hsic[:2, 0].sum()), rel=1e-12)


def test_cka_of_identical_representations_is_one_and_invariant_to_rotation_scale_and_shift():
    x = torch.randn(200, 16)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    y = torch.randn(200, 16) + x
    reference = linear_cka(x, y)
    assert linear_cka(x, (y.double() @ q)) == pytest.approx(reference, abs=1e-9)
    assert linear_cka(x * 7.5 + 4.0, y) == pytest.approx(reference, abs=1e-9)
    assert linear_cka(x.double() @ q, x) == pytest.approx(1.0, abs=1e-9)
    # not invariant to an anisotropic linear map: that would make it blind to real changes
    assert linear_cka(x, x * torch.linspace(0.1, 3.0, 16)) < 0.99


def test_cka_separates_related_from_independent_representations():
    x = torch.randn(500, 32)
    assert linear_cka(x, torch.randn(500, 32)) == pytest.approx(0.0, abs=0.05)  # debiased: ~0, not ~d/n
    assert linear_cka(x, x + 0.1 * torch.randn(500, 32)) > 0.98
    # with many tokens the debiased estimate agrees with the plain (biased) CKA on related data
    y = x @ torch.randn(32, 32) * 0.3 + x
    assert linear_cka(x, y) == pytest.approx(biased_linear_cka(x, y), abs=0.02)


def test_minibatch_cka_averages_hsic_terms_over_batches():
    x, y = torch.randn(90, 6), torch.randn(90, 6)
    y = y + x
    meter = MinibatchCKA(2)
    parts = [(0, 30), (30, 60), (60, 90)]
    for lo, hi in parts:
        meter.update(1, x[lo:hi], y[lo:hi])
    meter.update(1, x[:3], y[:3])  # fewer than 4 tokens: skipped, never a division by zero
    xy = sum(hsic_song_gram(x[lo:hi], y[lo:hi]) for lo, hi in parts)
    xx = sum(hsic_song_gram(x[lo:hi], x[lo:hi]) for lo, hi in parts)
    yy = sum(hsic_song_gram(y[lo:hi], y[lo:hi]) for lo, hi in parts)
    value = meter.value()
    assert math.isnan(value[0])  # a site with no batch has no CKA
    assert value[1].item() == pytest.approx(xy / math.sqrt(xx * yy), rel=1e-9)
    restored = MinibatchCKA(2)
    restored.load_state_dict(meter.state_dict())
    assert torch.equal(restored.value().nan_to_num(), value.nan_to_num())


def test_relative_change_and_cosine():
    base = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    tuned = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert relative_change(base, tuned).tolist() == pytest.approx([0.0, math.sqrt(5.0)])
    assert cosine(base, tuned).tolist() == pytest.approx([1.0, 0.0])
    zero = torch.zeros(1, 2)  # e.g. an embedding's padding row: equal rows are unchanged, not undefined
    assert relative_change(zero, zero).tolist() == [0.0] and cosine(zero, zero).tolist() == [1.0]
    assert cosine(zero, torch.ones(1, 2)).tolist() == [0.0] and relative_change(zero, torch.ones(1, 2)).tolist() == [math.inf]


def test_kl_divergence_matches_torch_and_handles_zero_probabilities():
    logp = torch.log_softmax(torch.randn(5, 11), dim=-1)
    logq = torch.log_softmax(torch.randn(5, 11), dim=-1)
    expected = torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_divergence(logp, logq), expected, atol=1e-6)
    assert torch.allclose(kl_divergence(logp, logp), torch.zeros(5))
    p = torch.tensor([[0.0, 0.5, 0.5]]).log()  # log 0 = -inf must contribute 0, not NaN
    q = torch.tensor([[0.2, 0.4, 0.4]]).log()
    assert kl_divergence(p, q).item() == pytest.approx(math.log(0.5 / 0.4))


def test_fraction_closed():
    assert fraction_closed(0.0, 2.0) == 1.0  # the patch removes the whole difference
    assert fraction_closed(2.0, 2.0) == 0.0  # the patch changes nothing
    assert fraction_closed(0.5, 2.0) == 0.75
    assert math.isnan(fraction_closed(0.0, 0.0))  # identical models: nothing to close
    assert math.isnan(fraction_closed(0.0, 1e-9, min_gap=1e-6))


def test_meters_sum_over_batches_and_round_trip():
    sites = sites_of(2, components=True)
    assert [s.hook for s in sites][:3] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert len(sites) == 3 + 2 + 2
    meter = RepresentationMeter(sites)
    a, b = torch.randn(10, 4), torch.randn(10, 4)
    meter.update(0, a, 2 * a)
    meter.update(0, b, 2 * b)
    meter.update(1, a, a)
    row = meter.rows()[0]
    assert row["n_tokens"] == 20 and row["relative_change"] == pytest.approx(1.0) and row["cosine"] == pytest.approx(1.0)
    assert row["cka"] == pytest.approx(1.0)
    assert meter.rows()[1]["relative_change"] == 0.0 and math.isnan(meter.rows()[2]["cka"])
    patch = PatchMeter(["tuned_into_base", "base_into_tuned"], n_layers=2)
    patch.update_gap(torch.tensor([1.0, 3.0]))
    patch.update_patched("tuned_into_base", 2, torch.tensor([0.0, 0.0]))
    patch.update_patched("tuned_into_base", 0, torch.tensor([1.0, 3.0]))
    patch.update_patched("tuned_into_base", 1, torch.tensor([1.0, 0.0]))
    again = PatchMeter(["tuned_into_base", "base_into_tuned"], n_layers=2)
    again.load_state_dict(patch.state_dict())
    fractions = again.fractions(min_kl=0.0)
    assert fractions["tuned_into_base"] == [0.0, 0.75, 1.0]
    assert fractions["base_into_tuned"] == [1.0, 1.0, 1.0]  # nothing patched -> KL 0 summed
    assert again.mean_gap() == 2.0
    with pytest.raises(ValueError):
        PatchMeter(["base_into_tuned"], n_layers=2).load_state_dict(patch.state_dict())


def test_recommendation_rule():
    fractions = [0.0, 0.1, 0.45, 0.8, 0.9, 1.0]
    assert first_large_layer(fractions, 0.5) == 3
    assert first_large_layer([math.nan, 0.6], 0.5) == 1
    assert first_large_layer([0.1, 0.2], 0.5) is None
    assert largest_step(fractions) == (2, pytest.approx(0.35))
    rec = recommend(fractions, threshold=0.5, text="reasoning", direction="tuned_into_base", n_layers=5,
                    exp_args="+exp=x", mean_kl=0.3, min_kl=1e-6)
    assert rec.hook == "blocks.3.hook_resid_pre" and rec.layer == 3 and rec.largest_step_block == 2
    assert "blocks.3.hook_resid_pre" in rec.line and any("harvest.hook=" in c for c in rec.follow_up)
    final = recommend([0.0, 0.0, 1.0], threshold=0.5, text="general", direction="tuned_into_base", n_layers=2,
                      exp_args="+exp=x", mean_kl=0.3, min_kl=1e-6)
    assert final.hook == resid_hook_name(2, 2) == "blocks.1.hook_resid_post"
    same = recommend([math.nan] * 3, threshold=0.5, text="general", direction="tuned_into_base", n_layers=2,
                     exp_args="+exp=x", mean_kl=0.0, min_kl=1e-6)
    assert same.hook is None and same.follow_up == [] and "agree" in same.line


# --- issue 26.6: intervals over contexts, both directions, the recommendation's uncertainty ----------

def test_patching_fractions_get_bootstrap_intervals_over_contexts():
    meter = PatchMeter(["tuned_into_base", "base_into_tuned"], n_layers=1, n_contexts=3)
    # three contexts of two tokens each (context ids as the patch pass passes them, batch by batch)
    meter.update_gap(torch.tensor([0.5, 0.5, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    meter.update_gap(torch.tensor([1.5, 1.5]), torch.tensor([2, 2]))
    for direction, after in (("tuned_into_base", [0.25, 0.25, 0.25, 0.25, 0.25, 0.25]),
                             ("base_into_tuned", [0.5, 0.5, 0.5, 0.5, 0.5, 0.5])):
        meter.update_patched(direction, 0, torch.tensor([0.5, 0.5, 1.0, 1.0, 1.5, 1.5]), torch.tensor([0, 0, 1, 1, 2, 2]))
        meter.update_patched(direction, 1, torch.tensor(after), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert meter.n_contexts == 3 and meter.total_tokens() == 6 and meter.mean_gap() == pytest.approx(1.0)
    fractions = meter.fractions(min_kl=0.0)
    # per context, tuned_into_base closes 1 - 0.5/1 = 0.5, 1 - 0.5/2 = 0.75, 1 - 0.5/3 = 0.83; pooled 1 - 1.5/6
    assert fractions["tuned_into_base"] == pytest.approx([0.0, 0.75])
    assert fractions["base_into_tuned"] == pytest.approx([0.0, 0.5])
    intervals = meter.intervals(min_kl=0.0, resamples=2000, seed=0)
    for direction, values in fractions.items():
        low, high = intervals[direction]
        assert low[0] == high[0] == pytest.approx(0.0)  # no context closes anything at layer 0: no spread
        assert low[1] < values[1] < high[1]
    low, high = intervals["tuned_into_base"]
    assert 0.5 <= low[1] < 0.75 < high[1] <= 1 - 0.5 / 3 + 1e-12  # within the range of the per-context fractions
    assert meter.intervals(min_kl=0.0, resamples=2000, seed=0) == intervals  # seeded
    # one context: no interval; per-context sums survive a save and load
    alone = PatchMeter(["tuned_into_base"], n_layers=1, n_contexts=1)
    alone.update_gap(torch.tensor([1.0]))
    alone.update_patched("tuned_into_base", 1, torch.tensor([0.5]))
    assert all(math.isnan(v) for v in alone.intervals(min_kl=0.0, resamples=200, seed=0)["tuned_into_base"][0])
    again = PatchMeter(["tuned_into_base", "base_into_tuned"], n_layers=1, n_contexts=3)
    again.load_state_dict(meter.state_dict())
    assert again.intervals(min_kl=0.0, resamples=2000, seed=0) == intervals
    with pytest.raises(ValueError, match="per context"):
        PatchMeter(["tuned_into_base", "base_into_tuned"], n_layers=1, n_contexts=2).load_state_dict(meter.state_dict())


def test_bootstrap_fractions_leave_out_resamples_without_a_gap():
    gap, tokens = torch.tensor([0.0, 2.0]).numpy(), torch.tensor([1, 1]).numpy()
    patched = torch.tensor([[[0.0, 1.0]]]).numpy()  # one direction, one layer: context 1 closes half
    low, high = bootstrap_fractions(gap, patched, tokens, min_kl=1e-6, resamples=500, seed=0)
    # draws of context 0 alone have no gap and no fraction; every other draw closes exactly 1/2
    assert low[0, 0] == pytest.approx(0.5) and high[0, 0] == pytest.approx(0.5)


def test_the_recommendations_uncertainty_on_a_hand_made_table():
    fractions = [0.0, 0.30, 0.45, 0.55, 0.70, 0.90, 1.0]
    low = [0.0, 0.20, 0.35, 0.40, 0.52, 0.80, 1.0]
    high = [0.0, 0.40, 0.55, 0.65, 0.85, 0.95, 1.0]
    # layers 2 and 3 straddle 0.5; the rule ("first layer >= 0.5") could give layer 2 (if layer 2 is
    # really above) up to layer 4 (the first whose whole interval is above)
    assert uncertain_layers(low, high, 0.5) == [2, 3]
    assert layer_range(low, high, 0.5) == [2, 4]
    assert layer_range([0.0, 0.1], [0.2, 0.6], 0.5) == [1, None]  # no interval wholly above
    reverse = Curve([0.0, 0.50, 0.70, 0.86, 0.90, 0.95, 1.0], [0.0, 0.42, 0.61, 0.80, 0.85, 0.9, 1.0],
                    [0.0, 0.58, 0.79, 0.91, 0.94, 0.98, 1.0])
    rec = recommend(fractions, threshold=0.5, text="reasoning", direction="tuned_into_base", n_layers=6,
                    exp_args="+exp=x", mean_kl=0.3, min_kl=1e-6, low=low, high=high,
                    others={"base_into_tuned": reverse}, n_contexts=2)
    assert rec.layer == 3 and (rec.closed, rec.closed_low, rec.closed_high) == (0.55, 0.40, 0.65)
    assert rec.uncertain_layers == [2, 3] and rec.layer_range == [2, 4] and rec.n_contexts == 2
    # both directions are reported, each read by the same rule
    assert set(rec.directions) == {"tuned_into_base", "base_into_tuned"}
    other = rec.directions["base_into_tuned"]
    assert other["layer"] == 1 and other["closed"] == 0.86 and (other["closed_low"], other["closed_high"]) == (0.80, 0.91)
    assert other["uncertain_layers"] == [1] and other["layer_range"] == [1, 2]
    assert "55% [40%, 65%] there" in rec.line and "layers 2–3 contain 50%" in rec.line
    assert "any layer from 2 to 4" in rec.line and "2 patched contexts" in rec.line
    assert "base → tuned, closes 86% [80%, 91%] at layer 3 and first reaches 50% at layer 1" in rec.line
    # a certain recommendation says so; without intervals it says there are none
    tight = recommend(fractions, threshold=0.5, text="general", direction="tuned_into_base", n_layers=6,
                      exp_args="+exp=x", mean_kl=0.3, min_kl=1e-6, low=[f - 0.01 for f in fractions],
                      high=[f + 0.01 for f in fractions], n_contexts=8)
    assert tight.layer_range == [3, 3] and tight.uncertain_layers == [] and "the rule gives this layer" in tight.line
    bare = recommend(fractions, threshold=0.5, text="general", direction="tuned_into_base", n_layers=6,
                     exp_args="+exp=x", mean_kl=0.3, min_kl=1e-6, n_contexts=1)
    assert bare.layer == 3 and bare.layer_range == [] and "No interval" in bare.line
