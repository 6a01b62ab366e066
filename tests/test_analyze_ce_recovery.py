"""CE-loss recovery: the formula, and splicing on real (tiny) models — an exact crosscoder recovers
everything, a crosscoder that reconstructs nothing recovers nothing, and forgetting to undo the
scaling factors is caught."""

from __future__ import annotations

import math

import pytest
import torch

from reasondiff.analyze.ce_recovery import (
    CERecoveryMeter,
    ce_recovered,
    ce_recovery_batch,
    counted_positions,
    forward_ce,
    next_token_ce,
    splice,
)
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
from reasondiff.models import parse_hook

HOOK = "blocks.2.hook_resid_pre"
FACTORS = [10.0, 0.1]


def test_ce_recovered_formula():
    assert ce_recovered(ce_clean=2.0, ce_zero_ablation=10.0, ce_spliced=4.0) == pytest.approx(0.75)
    assert ce_recovered(2.0, 10.0, 2.0) == 1.0
    assert ce_recovered(2.0, 10.0, 10.0) == 0.0
    assert ce_recovered(2.0, 10.0, 12.0) == pytest.approx(-0.25)  # worse than ablating: negative
    assert math.isnan(ce_recovered(3.0, 3.0, 3.0))  # ablation changes nothing: undefined, not 0/0 noise


def test_next_token_ce_is_per_prediction_and_shifted():
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 5))
    losses = next_token_ce(logits, tokens)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none")
    assert losses.shape == (2, 4)
    torch.testing.assert_close(losses.reshape(-1), expected)


def test_meter_counts_only_the_predictions_of_counted_positions():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    counted = torch.tensor([[False, True, True, True], [False, False, True, True]])  # last position: no target
    meter = CERecoveryMeter(("base",))
    for condition in ("clean", "zero_ablation", "spliced"):
        meter.add(0, condition, losses, counted)
    row = meter.rows()[0]
    assert row["n_tokens"] == 3 and row["ce_clean"] == pytest.approx((2 + 3 + 6) / 3)


def test_splice_leaves_the_positions_that_do_not_count():
    acts, recon = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    counted = torch.tensor([[False, True, False, True], [False, True, True, True]])
    out = splice(acts, recon, counted)
    torch.testing.assert_close(out[counted], recon[counted])
    torch.testing.assert_close(out[~counted], acts[~counted])
    assert torch.equal(splice(acts, recon), recon)


def test_counted_positions_drop_the_sink_and_massive_tokens():
    x = torch.ones(2, 6, 2, 4)
    x[0, 3, 1] *= 40.0  # a massive token in the tuned model only: dropped for both
    counted = counted_positions(x, keep_first=True, max_norm_ratio=10.0)
    assert counted[:, 0].logical_not().all() and not counted[0, 3] and int(counted.sum()) == 2 * 5 - 1
    assert counted_positions(x, keep_first=False, max_norm_ratio=None).all()


def exact_crosscoder(d_model: int, scaling_factors) -> CrossCoder:
    """A crosscoder that reconstructs any pair exactly: latents ±e_i per model (ReLU(x) − ReLU(−x) = x)."""
    F = 4 * d_model
    cc = CrossCoder(CrossCoderConfig(d_model=d_model, n_latents=F))
    W_enc, W_dec = torch.zeros(2, d_model, F), torch.zeros(F, 2, d_model)
    for m in range(2):
        for sign_index, sign in enumerate((1.0, -1.0)):
            for i in range(d_model):
                latent = m * 2 * d_model + sign_index * d_model + i
                W_enc[m, i, latent] = sign
                W_dec[latent, m, i] = sign
    with torch.no_grad():
        cc.W_enc.copy_(W_enc)
        cc.W_dec.copy_(W_dec)
        cc.b_enc.zero_()
        cc.b_dec.zero_()
        cc.scaling_factors.copy_(torch.as_tensor(scaling_factors))
    return cc.eval()


@pytest.fixture(scope="module")
def trained_pair(tiny_tokenizer):
    """Two tiny models (different initialisations) briefly fitted to the same tokens, so the hook
    point matters (clean CE far below zero-ablation CE) and the two models' activations differ."""
    from reasondiff.tiny import make_model

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 300, (4, 32), generator=g)
    models = []
    for seed in (0, 1):
        model = make_model(tiny_tokenizer, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(30):
            loss = model(input_ids=tokens, labels=tokens).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        models.append(model.eval())
    return models, tokens


def _ce_rows(models, tokens, crosscoder, keep_first=True, max_norm_ratio=None):
    meter = CERecoveryMeter(("base", "tuned"))
    hook = parse_hook(HOOK, 4)
    for half in tokens.split(2):  # two batches: sums must combine
        ce_recovery_batch(models, half, hook, crosscoder, meter, keep_first=keep_first, max_norm_ratio=max_norm_ratio)
    return meter.rows()


def test_exact_crosscoder_recovers_all_of_the_ce_with_scaling_factors_undone(trained_pair):
    models, tokens = trained_pair
    d = models[0].config.hidden_size
    # Factors far from 1: splicing the NORMALISED reconstruction (factors not undone) would be off
    # by 10x / 0.1x and this test would fail (see the next test).
    rows = _ce_rows(models, tokens, exact_crosscoder(d, FACTORS))
    for row in rows:
        assert row["ce_zero_ablation"] - row["ce_clean"] > 1.0, row  # the hook matters
        assert row["ce_spliced"] == pytest.approx(row["ce_clean"], abs=1e-3)
        assert row["ce_recovered"] == pytest.approx(1.0, abs=1e-3)
        assert row["n_tokens"] == 4 * 30  # 32 positions, minus the last, minus the sink position 0


def test_forgetting_to_undo_the_scaling_factors_is_caught(trained_pair):
    models, tokens = trained_pair
    d = models[0].config.hidden_size
    cc = exact_crosscoder(d, FACTORS)
    cc.denormalise = lambda x_norm: x_norm  # the classic bug: splice the normalised reconstruction
    rows = _ce_rows(models, tokens, cc)
    assert all(abs(row["ce_recovered"] - 1.0) > 0.02 for row in rows), rows


def test_spliced_reconstruction_comes_from_the_joint_code(trained_pair):
    """A crosscoder whose base reconstruction is read off the TUNED model's activations: the base
    model must then receive exactly the tuned model's activations (the code is of the pair)."""
    from reasondiff.hooks import residual_hook

    models, tokens = trained_pair
    d = models[0].config.hidden_size
    cc = exact_crosscoder(d, [1.0, 1.0])
    with torch.no_grad():
        cc.W_dec.copy_(cc.W_dec.flip(1))  # latents reading model m decode into model 1-m
    rows = _ce_rows(models, tokens, cc)
    hook = parse_hook(HOOK, 4)
    captured = []
    with torch.no_grad(), residual_hook(models[1], hook, lambda a: captured.append(a.clone())):
        models[1](input_ids=tokens)
    counted = torch.ones(tokens.shape, dtype=torch.bool)
    counted[:, 0] = False
    losses = forward_ce(models[0], tokens, hook, lambda a: splice(a, captured[0], counted))
    assert rows[0]["ce_spliced"] == pytest.approx(float(losses[:, 1:].mean()), abs=1e-4)
    assert abs(rows[0]["ce_spliced"] - rows[0]["ce_clean"]) > 0.1


def test_a_crosscoder_that_reconstructs_nothing_recovers_nothing(trained_pair):
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, [2.0, 2.0])
    with torch.no_grad():
        cc.W_dec.zero_()
    for row in _ce_rows(models, tokens, cc):
        assert row["ce_spliced"] == pytest.approx(row["ce_zero_ablation"], abs=1e-5)
        assert row["ce_recovered"] == pytest.approx(0.0, abs=1e-5)


def test_first_position_is_left_untouched_and_out_of_the_loss(trained_pair):
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, [1.0, 1.0])
    with torch.no_grad():
        cc.W_dec.zero_()
    kept = _ce_rows(models, tokens, cc, keep_first=True)
    replaced = _ce_rows(models, tokens, cc, keep_first=False)
    assert kept[0]["n_tokens"] == 4 * 30 and replaced[0]["n_tokens"] == 4 * 31
    # Zeroing the sink position too changes the ablated loss: the two conventions differ.
    assert kept[0]["ce_zero_ablation"] != pytest.approx(replaced[0]["ce_zero_ablation"], abs=1e-3)


def test_massive_tokens_are_left_untouched_and_out_of_the_loss(trained_pair, monkeypatch):
    """With max_norm_ratio, a token the harvest would drop is neither ablated nor spliced and its
    prediction is not scored: the loss is over fewer tokens and a zero decoder no longer touches it."""
    import reasondiff.analyze.ce_recovery as ce

    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, [1.0, 1.0])
    with torch.no_grad():
        cc.W_dec.zero_()
    real = ce.counted_positions

    def fifth_is_massive(x_raw, **kwargs):  # the tiny models have no massive tokens: plant one
        x_raw = x_raw.clone()
        x_raw[:, 5] *= 100.0
        return real(x_raw, **kwargs)

    monkeypatch.setattr(ce, "counted_positions", fifth_is_massive)
    dropped = _ce_rows(models, tokens, cc, max_norm_ratio=10.0)
    kept = _ce_rows(models, tokens, cc, max_norm_ratio=None)
    assert dropped[0]["n_tokens"] == 4 * 29 and kept[0]["n_tokens"] == 4 * 30
    assert dropped[0]["ce_zero_ablation"] != pytest.approx(kept[0]["ce_zero_ablation"], abs=1e-4)


def test_forward_ce_matches_the_models_own_logits(trained_pair):
    """forward_ce unembeds one context at a time (memory); it must equal the full-logits loss."""
    models, tokens = trained_pair
    with torch.no_grad():
        logits = models[0](input_ids=tokens).logits
    expected = next_token_ce(logits, tokens)
    got = forward_ce(models[0], tokens, parse_hook(HOOK, 4), lambda a: None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_exact_crosscoder_on_the_real_qwen_architecture():
    """Qwen2.5-0.5B (d_model 896, massive first-position activations): an exact crosscoder with
    factors != 1 recovers the CE of both models; the 'tuned' one is the base with perturbed MLPs."""
    import os

    from reasondiff.config import HardwareConfig
    from reasondiff.models import load_model

    path = os.environ.get("REASONDIFF_QWEN", "/work/qwen05b")
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.skip(f"needs the offline Qwen model at {path} (REASONDIFF_QWEN)")
    hardware = HardwareConfig(device="cpu", dtype="float32")
    base, tokenizer = load_model(path, hardware)
    tuned, _ = load_model(path, hardware)
    with torch.no_grad():
        for layer in tuned.model.layers[10:16]:
            layer.mlp.down_proj.weight.mul_(1.5)
    text = "The derivative of x^2 is 2x, so the slope of the tangent at x = 3 is 6. " * 4
    tokens = torch.tensor([tokenizer(text)["input_ids"][:48]] * 2)
    meter = CERecoveryMeter(("base", "tuned"))
    ce_recovery_batch([base, tuned], tokens, parse_hook("blocks.14.hook_resid_pre", 24),
                      exact_crosscoder(896, [0.05, 0.02]), meter, keep_first=True)
    for row in meter.rows():
        assert row["ce_zero_ablation"] - row["ce_clean"] > 1.0, row
        assert row["ce_recovered"] == pytest.approx(1.0, abs=1e-3), row
