"""CE-loss recovery under both conventions: the formulas, the bootstrap, and splicing on real (tiny)
models. The `paper` convention is checked against the model's OWN loss (HF `labels=`, the mean over
every next-token prediction, like TransformerLens `return_type="loss"` in Kissane's code) with the
hook set by hand; an exact crosscoder recovers everything, one that reconstructs nothing recovers
nothing (sink_preserving) but something under `paper` (its clean sink), forgetting to undo the scaling
factors is caught, and right padding changes no number."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reasondiff.analyze.ce_recovery import (
    CONVENTIONS,
    SUMS,
    CERecoveryMeter,
    bootstrap_intervals,
    ce_recovered,
    ce_recovery_batch,
    counted_positions,
    final_hidden,
    log_probs,
    metrics_from_sums,
    score_runs,
    splice,
)
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
from reasondiff.lm.hooks import residual_hook
from reasondiff.lm.models import parse_hook

HOOK = "blocks.2.hook_resid_pre"
FACTORS = [10.0, 0.1]


def test_ce_recovered_formula():
    assert ce_recovered(ce_clean=2.0, ce_zero_ablation=10.0, ce_spliced=4.0) == pytest.approx(0.75)
    assert ce_recovered(2.0, 10.0, 2.0) == 1.0
    assert ce_recovered(2.0, 10.0, 10.0) == 0.0
    assert ce_recovered(2.0, 10.0, 12.0) == pytest.approx(-0.25)  # worse than ablating: negative
    assert math.isnan(ce_recovered(3.0, 3.0, 3.0))  # ablation changes nothing: undefined, not 0/0 noise
    np.testing.assert_allclose(ce_recovered(np.array([2.0, 1.0]), np.array([10.0, 3.0]), np.array([4.0, 2.0])), [0.75, 0.5])


def test_metrics_are_ratios_of_sums_over_predictions():
    # two contexts: (n, ce_clean, ce_zero, ce_spliced, kl_zero, kl_spliced) sums
    per_context = np.array([[10, 20.0, 60.0, 30.0, 5.0, 1.0], [30, 30.0, 150.0, 40.0, 9.0, 3.0]])
    m = metrics_from_sums(per_context.sum(0))
    assert m["ce_clean"] == pytest.approx(50 / 40) and m["ce_zero_ablation"] == pytest.approx(210 / 40)
    assert m["ce_recovered"] == pytest.approx((210 - 70) / (210 - 50))  # token-weighted, not a mean of ratios
    assert m["delta_ce"] == pytest.approx((70 - 50) / 40) and m["kl_spliced"] == pytest.approx(4 / 40)
    assert m["kl_zero_ablation"] == pytest.approx(14 / 40)


def test_bootstrap_intervals_over_contexts():
    rng = np.random.default_rng(0)
    n = rng.integers(50, 100, size=40).astype(float)
    clean = n * 2.0 + rng.normal(0, 5, 40)
    per_context = np.stack([n, clean, n * 6.0, n * 2.4 + rng.normal(0, 5, 40), n * 0.5, n * 0.1], axis=1)
    point = metrics_from_sums(per_context.sum(0))
    ci = bootstrap_intervals(per_context, n_resamples=2000, seed=1)
    for key in ("ce_recovered", "ce_clean", "ce_spliced", "delta_ce"):
        low, high = ci[key]
        assert low < point[key] < high, key
    assert ci["ce_zero_ablation"][0] == pytest.approx(6.0) == ci["ce_zero_ablation"][1]  # no spread, no width
    assert ci == bootstrap_intervals(per_context, n_resamples=2000, seed=1)  # seeded: reproducible
    narrow = bootstrap_intervals(np.repeat(per_context, 16, axis=0), n_resamples=2000, seed=1)
    assert narrow["ce_clean"][1] - narrow["ce_clean"][0] < 0.5 * (ci["ce_clean"][1] - ci["ce_clean"][0])
    assert all(math.isnan(v) for pair in bootstrap_intervals(per_context[:1], n_resamples=100, seed=0).values()
               for v in pair)  # one context: no interval


def test_meter_keeps_per_context_sums_and_resumes():
    meter = CERecoveryMeter(3, ("base",))
    values = {key: torch.tensor([1.0, 2.0]) * (i + 1) for i, key in enumerate(SUMS)}
    meter.add(torch.tensor([0, 2]), 0, "paper", values)
    meter.add(torch.tensor([2]), 0, "paper", {key: torch.tensor([3.0]) * (i + 1) for i, key in enumerate(SUMS)})
    assert meter.sums[:, 0, CONVENTIONS.index("paper"), 0].tolist() == [1.0, 0.0, 5.0]
    again = CERecoveryMeter(3, ("base",))
    again.load_state_dict(meter.state_dict())
    paper = [r for r in again.rows(n_bootstrap=50) if r["convention"] == "paper"]
    assert paper == [r for r in meter.rows(n_bootstrap=50) if r["convention"] == "paper"]  # the seeded bootstrap too
    row = next(r for r in meter.rows(n_bootstrap=0) if r["convention"] == "paper")
    assert (row["n_tokens"], row["n_contexts"]) == (6, 2)
    with pytest.raises(ValueError):
        CERecoveryMeter(4, ("base",)).load_state_dict(meter.state_dict())


def test_splice_leaves_the_positions_that_do_not_count():
    acts, recon = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    counted = torch.tensor([[False, True, False, True], [False, True, True, True]])
    out = splice(acts, recon, counted)
    torch.testing.assert_close(out[counted], recon[counted])
    torch.testing.assert_close(out[~counted], acts[~counted])
    assert torch.equal(splice(acts, recon), recon)


def test_counted_positions_drop_the_sink_massive_tokens_and_padding():
    x = torch.ones(2, 6, 2, 4)
    x[0, 3, 1] *= 40.0  # a massive token in the tuned model only: dropped for both
    counted = counted_positions(x, keep_first=True, max_norm_ratio=10.0)
    assert counted[:, 0].logical_not().all() and not counted[0, 3] and int(counted.sum()) == 2 * 5 - 1
    assert counted_positions(x, keep_first=False, max_norm_ratio=None).all()
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    assert counted_positions(x, keep_first=False, max_norm_ratio=None, valid=valid).equal(valid)


def exact_crosscoder(d_model: int, scaling_factors) -> CrossCoder:
    """A crosscoder that reconstructs any pair exactly: latents ±e_i per model (ReLU(x) − ReLU(−x) = x)."""
    F_ = 4 * d_model
    cc = CrossCoder(CrossCoderConfig(d_model=d_model, n_latents=F_))
    W_enc, W_dec = torch.zeros(2, d_model, F_), torch.zeros(F_, 2, d_model)
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


def _ce_rows(models, tokens, crosscoder, keep_first=True, max_norm_ratio=None, valid=None, batch=2):
    meter = CERecoveryMeter(tokens.shape[0], ("base", "tuned"))
    hook = parse_hook(HOOK, 4)
    for lo in range(0, tokens.shape[0], batch):  # batches: per-context sums must combine
        rows = slice(lo, lo + batch)
        ce_recovery_batch(models, tokens[rows], hook, crosscoder, meter, context_index=torch.arange(tokens.shape[0])[rows],
                          keep_first=keep_first, max_norm_ratio=max_norm_ratio,
                          valid=None if valid is None else valid[rows])
    return {(r["convention"], r["model"]): r for r in meter.rows(n_bootstrap=200)}


def _own_loss(model, tokens, fn=None):
    """The model's own mean next-token loss over every prediction, with `fn` at the hook (by hand)."""
    with torch.no_grad(), residual_hook(model, parse_hook(HOOK, 4), fn or (lambda a: None)):
        out = model(input_ids=tokens, labels=tokens)
    return out


def test_paper_convention_is_the_models_own_mean_loss_with_the_hook_set_by_hand(trained_pair):
    """Kissane's code: ce = model loss over all B·(T−1) predictions; zero ablation `act[:] = 0`;
    splice `act[:, 1:] = recon`. Checked against HF's own `labels=` loss, run independently."""
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, FACTORS)
    with torch.no_grad():
        cc.W_dec.mul_(0.5)  # a half reconstruction: spliced sits between clean and ablated
    rows = _ce_rows(models, tokens, cc)
    captured = []
    for model in models:
        with torch.no_grad(), residual_hook(model, parse_hook(HOOK, 4), lambda a: captured.append(a.clone())):
            model(input_ids=tokens)
    for m, (name, model) in enumerate(zip(("base", "tuned"), models, strict=True)):
        row = rows[("paper", name)]
        assert row["n_tokens"] == 4 * 31  # every prediction, the one made at position 0 included
        clean = _own_loss(model, tokens)
        zero = _own_loss(model, tokens, lambda a: torch.zeros_like(a))
        half = 0.5 * captured[m]

        def spliced_fn(a, half=half):
            a = a.clone()
            a[:, 1:] = half[:, 1:]  # position 0 (BOS) kept clean
            return a

        spliced = _own_loss(model, tokens, spliced_fn)
        assert row["ce_clean"] == pytest.approx(float(clean.loss), abs=1e-5)
        assert row["ce_zero_ablation"] == pytest.approx(float(zero.loss), abs=1e-5)
        assert row["ce_spliced"] == pytest.approx(float(spliced.loss), abs=1e-5)
        assert row["delta_ce"] == pytest.approx(float(spliced.loss - clean.loss), abs=1e-5)
        # KL(clean ‖ zero) per prediction from the full logits
        p, q = (torch.log_softmax(o.logits[:, :-1].float(), -1) for o in (clean, zero))
        kl = F.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean()
        assert row["kl_zero_ablation"] == pytest.approx(float(kl), rel=1e-4)
        assert 0 < row["ce_recovered"] < 1 and row["kl_spliced"] > 0


def test_exact_crosscoder_recovers_all_of_the_ce_with_scaling_factors_undone(trained_pair):
    models, tokens = trained_pair
    d = models[0].config.hidden_size
    # Factors far from 1: splicing the NORMALISED reconstruction (factors not undone) would be off
    # by 10x / 0.1x and this test would fail (see the next test).
    rows = _ce_rows(models, tokens, exact_crosscoder(d, FACTORS))
    for (convention, _), row in rows.items():
        assert row["ce_zero_ablation"] - row["ce_clean"] > 1.0, row  # the hook matters
        assert row["ce_spliced"] == pytest.approx(row["ce_clean"], abs=1e-3)
        assert row["ce_recovered"] == pytest.approx(1.0, abs=1e-3)
        assert row["kl_spliced"] == pytest.approx(0.0, abs=1e-4) and row["kl_zero_ablation"] > 0.1
        assert row["n_tokens"] == 4 * (31 if convention == "paper" else 30)  # sink_preserving: sink excluded
        assert row["ce_recovered_ci_low"] <= row["ce_recovered_ci_high"]


def test_forgetting_to_undo_the_scaling_factors_is_caught(trained_pair):
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, FACTORS)
    cc.denormalise = lambda x_norm: x_norm  # the classic bug: splice the normalised reconstruction
    rows = _ce_rows(models, tokens, cc)
    # an exact crosscoder spliced correctly gives CE within 1e-3 and KL within 1e-4 of clean (above);
    # the recovered fraction alone can hide the bug when zero-ablation CE is far above clean (the
    # paper's convention zero-ablates every position: 0.985 recovered with spliced CE 0.21 nats off)
    assert all(row["ce_spliced"] - row["ce_clean"] > 0.05 and row["kl_spliced"] > 0.05 for row in rows.values()), rows


def test_spliced_reconstruction_comes_from_the_joint_code(trained_pair):
    """A crosscoder whose base reconstruction is read off the TUNED model's activations: the base
    model must then receive exactly the tuned model's activations (the code is of the pair)."""
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, [1.0, 1.0])
    with torch.no_grad():
        cc.W_dec.copy_(cc.W_dec.flip(1))  # latents reading model m decode into model 1-m
    rows = _ce_rows(models, tokens, cc)
    captured = []
    with torch.no_grad(), residual_hook(models[1], parse_hook(HOOK, 4), lambda a: captured.append(a.clone())):
        models[1](input_ids=tokens)
    counted = torch.ones(tokens.shape, dtype=torch.bool)
    counted[:, 0] = False
    hidden = final_hidden(models[0], tokens, parse_hook(HOOK, 4), lambda a: splice(a, captured[0], counted))
    with torch.no_grad():
        losses = -log_probs(models[0], hidden[:, 1:-1].reshape(-1, hidden.shape[-1])).gather(
            -1, tokens[:, 2:].reshape(-1, 1))
    row = rows[("sink_preserving", "base")]
    assert row["ce_spliced"] == pytest.approx(float(losses.mean()), abs=1e-4)
    assert abs(row["ce_spliced"] - row["ce_clean"]) > 0.1


def test_a_crosscoder_that_reconstructs_nothing(trained_pair):
    """sink_preserving: splicing zeros where ablation zeros, so nothing is recovered. paper: the
    splice keeps the sink clean while the ablation zeroes it too, so a crosscoder that reconstructs
    nothing still 'recovers' something: the inflation the two conventions differ by."""
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, [2.0, 2.0])
    with torch.no_grad():
        cc.W_dec.zero_()
    rows = _ce_rows(models, tokens, cc)
    for name in ("base", "tuned"):
        sink = rows[("sink_preserving", name)]
        assert sink["ce_spliced"] == pytest.approx(sink["ce_zero_ablation"], abs=1e-5)
        assert sink["ce_recovered"] == pytest.approx(0.0, abs=1e-5)
        assert sink["kl_spliced"] == pytest.approx(sink["kl_zero_ablation"], rel=1e-5)
        assert rows[("paper", name)]["ce_recovered"] > 0.01


def test_first_position_policy_changes_only_the_sink_preserving_convention(trained_pair):
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, [1.0, 1.0])
    with torch.no_grad():
        cc.W_dec.zero_()
    kept = _ce_rows(models, tokens, cc, keep_first=True)
    replaced = _ce_rows(models, tokens, cc, keep_first=False)
    assert kept[("sink_preserving", "base")]["n_tokens"] == 4 * 30
    assert replaced[("sink_preserving", "base")]["n_tokens"] == 4 * 31
    # zeroing the sink too makes sink_preserving's ablation the paper's
    assert replaced[("sink_preserving", "base")]["ce_zero_ablation"] == pytest.approx(
        replaced[("paper", "base")]["ce_zero_ablation"], abs=1e-6)
    assert kept[("sink_preserving", "base")]["ce_zero_ablation"] != pytest.approx(
        replaced[("sink_preserving", "base")]["ce_zero_ablation"], abs=1e-3)
    for key in ("ce_clean", "ce_zero_ablation", "ce_spliced", "kl_spliced"):  # the paper's numbers do not move
        assert kept[("paper", "base")][key] == pytest.approx(replaced[("paper", "base")][key], abs=1e-6)


def test_massive_tokens_are_left_untouched_and_out_of_the_loss(trained_pair, monkeypatch):
    """With max_norm_ratio, a token the harvest would drop is neither ablated nor spliced and its
    prediction is not scored under sink_preserving; the paper convention touches and scores it."""
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
    assert dropped[("sink_preserving", "base")]["n_tokens"] == 4 * 29
    assert kept[("sink_preserving", "base")]["n_tokens"] == 4 * 30
    assert dropped[("sink_preserving", "base")]["ce_zero_ablation"] != pytest.approx(
        kept[("sink_preserving", "base")]["ce_zero_ablation"], abs=1e-4)
    assert dropped[("paper", "base")]["ce_spliced"] == pytest.approx(kept[("paper", "base")]["ce_spliced"], abs=1e-6)


def test_right_padding_changes_no_number(trained_pair):
    """A context padded to a longer batch gives the sums it gives alone (padding is after every real
    token, out of every mask)."""
    models, tokens = trained_pair
    cc = exact_crosscoder(models[0].config.hidden_size, FACTORS)
    with torch.no_grad():
        cc.W_dec.mul_(0.7)
    short = tokens[:2, :20]
    alone = _ce_rows(models, short, cc)
    padded = torch.cat([short, torch.full((2, 12), 7)], dim=1)
    valid = torch.zeros(2, 32, dtype=torch.bool)
    valid[:, :20] = True
    together = _ce_rows(models, padded, cc, valid=valid)
    for key, row in alone.items():
        for metric in ("n_tokens", "ce_clean", "ce_zero_ablation", "ce_spliced", "kl_spliced", "kl_zero_ablation"):
            assert together[key][metric] == pytest.approx(row[metric], abs=1e-5), (key, metric)


def test_scoring_in_chunks_is_exact(trained_pair):
    models, tokens = trained_pair
    hook = parse_hook(HOOK, 4)
    clean = final_hidden(models[0], tokens, hook, lambda a: None)
    zero = final_hidden(models[0], tokens, hook, lambda a: torch.zeros_like(a))
    whole = score_runs(models[0], tokens, clean, {"zero": zero}, chunk=10_000)
    pieces = score_runs(models[0], tokens, clean, {"zero": zero}, chunk=7)  # chunks straddle contexts
    torch.testing.assert_close(pieces[0], whole[0])
    torch.testing.assert_close(pieces[1]["zero"], whole[1]["zero"])
    torch.testing.assert_close(pieces[2]["zero"], whole[2]["zero"])
    assert (whole[2]["zero"] >= -1e-6).all()  # a KL divergence


@pytest.mark.slow
def test_exact_crosscoder_on_the_real_qwen_architecture():
    """Qwen2.5-0.5B (d_model 896, massive first-position activations, 152k vocabulary): an exact
    crosscoder with factors != 1 recovers the CE of both models under both conventions; the 'tuned'
    one is the base with perturbed MLPs. fp32 on CPU, 512-token contexts (the real Table 2 run)."""
    import os

    from reasondiff.config import HardwareConfig
    from reasondiff.lm.models import load_model

    path = os.environ.get("REASONDIFF_QWEN", "/work/qwen05b")
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.skip(f"needs the offline Qwen model at {path} (REASONDIFF_QWEN)")
    hardware = HardwareConfig(device="cpu", dtype="float32")
    base, tokenizer = load_model(path, hardware)
    tuned, _ = load_model(path, hardware)
    with torch.no_grad():
        for layer in tuned.model.layers[10:16]:
            layer.mlp.down_proj.weight.mul_(1.5)
    text = "The derivative of x^2 is 2x, so the slope of the tangent at x = 3 is 6. " * 40
    tokens = torch.tensor([tokenizer(text)["input_ids"][:512]] * 2)
    meter = CERecoveryMeter(2, ("base", "tuned"))
    ce_recovery_batch([base, tuned], tokens, parse_hook("blocks.14.hook_resid_pre", 24),
                      exact_crosscoder(896, [0.05, 0.02]), meter, context_index=torch.arange(2), keep_first=True,
                      max_norm_ratio=10.0)
    for row in meter.rows(n_bootstrap=100):
        assert row["ce_zero_ablation"] - row["ce_clean"] > 1.0, row
        assert row["ce_recovered"] == pytest.approx(1.0, abs=1e-3), row


# --- the stage's fast path (resumed runs) against the reference (full forwards with hooks) ----------

def _random_crosscoder(d_model: int, seed: int = 0) -> CrossCoder:
    """A crosscoder at its (Kissane) initialisation with a larger decoder, factors != 1: a poor but
    non-trivial reconstruction, so spliced differs from both clean and ablated."""
    torch.manual_seed(seed)
    cc = CrossCoder(CrossCoderConfig(d_model=d_model, n_latents=8 * d_model, dec_init_norm=0.5))
    with torch.no_grad():
        cc.scaling_factors.copy_(torch.tensor([0.7, 1.6]))
    return cc.eval()


def _sums(models, tokens, hook_name, crosscoder, *, resume, valid=None, keep_first=True, max_norm_ratio=None):
    meter = CERecoveryMeter(tokens.shape[0], ("base", "tuned"))
    hook = parse_hook(hook_name, 4)
    outs = []
    for lo in range(0, tokens.shape[0], 2):
        rows = slice(lo, lo + 2)
        outs.append(ce_recovery_batch(models, tokens[rows], hook, crosscoder, meter,
                                      context_index=torch.arange(tokens.shape[0])[rows], keep_first=keep_first,
                                      max_norm_ratio=max_norm_ratio, valid=None if valid is None else valid[rows],
                                      resume=resume))
    return meter, outs


@pytest.mark.parametrize(("hook_name", "keep_first"), [
    ("blocks.2.hook_resid_pre", True), ("blocks.2.hook_resid_pre", False), ("blocks.0.hook_resid_pre", True),
    ("blocks.1.hook_resid_mid", True), ("blocks.2.hook_resid_post", False), ("blocks.3.hook_resid_post", True)])
def test_resumed_runs_give_the_reference_numbers(trained_pair, hook_name, keep_first):
    """Every per-context sum (CE and KL of every run, both conventions, both models) from the fast path
    equals the reference's (a full forward with hooks per run, every prediction unembedded), for every
    hook kind, with right padding of different lengths (one context padded past every other's end, so
    trailing columns are skipped) and a massive token (a third distinct run)."""
    import reasondiff.analyze.ce_recovery as ce

    models, tokens = trained_pair
    valid = torch.ones(tokens.shape, dtype=torch.bool)
    valid[1, 20:] = False
    valid[2, 27:] = False
    valid[3, 25:] = False  # contexts 2-3 form a batch whose last 5 columns are padding in both
    cc = _random_crosscoder(models[0].config.hidden_size)
    real = ce.counted_positions

    def sixth_is_massive(x_raw, **kwargs):
        x_raw = x_raw.clone()
        x_raw[:, 6] *= 100.0
        return real(x_raw, **kwargs)

    shapes, full_forwards = [], []
    real_runs, real_full = ce.intervened_runs, ce.final_hidden

    def spy_runs(*args, **kwargs):
        out = real_runs(*args, **kwargs)
        shapes.append([tuple(h.shape) for h in out.values()])
        return out

    def spy_full(*args, **kwargs):
        full_forwards.append(1)
        return real_full(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ce, "counted_positions", sixth_is_massive)
        mp.setattr(ce, "intervened_runs", spy_runs)
        mp.setattr(ce, "final_hidden", spy_full)
        fast, fast_out = _sums(models, tokens, hook_name, cc, resume=True, valid=valid, keep_first=keep_first,
                               max_norm_ratio=10.0)
        reference, ref_out = _sums(models, tokens, hook_name, cc, resume=False, valid=valid, keep_first=keep_first,
                                   max_norm_ratio=10.0)
    # the fast path took its shortcuts: no full forward, the paper's zero ablation one vector, the
    # other runs (spliced twice: the massive token; zero-ablated without the sink) of each context
    # alone at its own length (batch by batch, model by model); the reference: (2 batches x 2
    # models) x (1 clean + 4 runs) full forwards
    d = models[0].config.hidden_size
    runs = [[(1, n, d), (d,), (1, n, d), (1, n, d)] for n in (32, 20, 32, 20, 27, 25, 27, 25)]
    assert shapes[:8] == runs
    assert len(full_forwards) == 2 * 2 * 5
    torch.testing.assert_close(fast.sums, reference.sums, rtol=1e-5, atol=2e-5)
    for row, ref_row in zip(fast.rows(n_bootstrap=200), reference.rows(n_bootstrap=200), strict=True):
        for key, value in ref_row.items():
            assert row[key] == (pytest.approx(value, rel=1e-5, abs=1e-6) if isinstance(value, float) else value), key
    # the runs are not all alike: the comparison above could fail
    paper = reference.sums[:, 0, CONVENTIONS.index("paper")].sum(0)
    assert paper[SUMS.index("ce_zero_ablation")] > paper[SUMS.index("ce_spliced")] > paper[SUMS.index("ce_clean")] + 1
    # what the clean runs hand to the other analyses is the same, padded back to the batch's length
    for out, ref in zip(fast_out, ref_out, strict=True):
        assert out.keys() == ref.keys()
        torch.testing.assert_close(out["counted"], ref["counted"])
        counted = ref["counted"]
        for key in ("x_raw", "x_norm", "f", "recon_norm"):
            assert out[key].shape == ref[key].shape
            torch.testing.assert_close(out[key][counted], ref[key][counted], rtol=1e-5, atol=1e-5)


def test_the_zero_ablation_everywhere_is_one_vector_for_every_position(trained_pair):
    """What the shortcut assumes, checked against full forwards longer than the probe: zeroing the
    hook at every position gives every position of every context the same final hidden state."""
    from reasondiff.lm.resume_forward import clean_run, final_norm, uniform_final_residual

    model = trained_pair[0][0]
    for name in ("blocks.2.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"):
        hook = parse_hook(name, 4)
        ids = torch.randint(3, 300, (3, 80))
        probe = clean_run(model, ids[:1, :8], from_layer=hook.layer)
        vector = uniform_final_residual(model, hook, probe, torch.zeros(model.config.hidden_size))
        full = final_hidden(model, ids, hook, lambda a: torch.zeros_like(a))
        torch.testing.assert_close(final_norm(model)(vector).expand_as(full), full, rtol=1e-5, atol=1e-5)


def test_a_model_that_cannot_take_a_shortcut_is_run_in_full(trained_pair, caplog):
    """A position signal added inside the layers breaks 'zero everywhere is one vector' (so that run is
    resumed per position); an output that is not the final norm of the last layer breaks resuming
    (so every run is a full forward, the reason logged). The numbers are the reference's either way."""
    import copy

    from reasondiff.lm.resume_forward import clean_run, resume_problem, uniform_final_residual

    models, tokens = trained_pair
    models = [copy.deepcopy(m) for m in models]
    hook = parse_hook(HOOK, 4)
    cc = _random_crosscoder(models[0].config.hidden_size, seed=1)

    def position_signal(module, args, kwargs):
        hidden = args[0]
        ramp = torch.linspace(0, 1, hidden.shape[1]).view(1, -1, 1)
        return (hidden + ramp, *args[1:]), kwargs

    handle = models[0].model.layers[3].register_forward_pre_hook(position_signal, with_kwargs=True)
    probe = clean_run(models[0], tokens[:1, :16], from_layer=hook.layer)
    assert resume_problem(models[0], hook, probe) is None
    assert uniform_final_residual(models[0], hook, probe, torch.zeros(models[0].config.hidden_size)) is None
    fast, _ = _sums(models, tokens, HOOK, cc, resume=True)
    reference, _ = _sums(models, tokens, HOOK, cc, resume=False)
    torch.testing.assert_close(fast.sums, reference.sums, rtol=1e-5, atol=2e-5)
    handle.remove()

    def rescale(module, args, output):  # something after the final norm, as some architectures do
        output.last_hidden_state = 1.5 * output.last_hidden_state
        return output

    models[1].model.register_forward_hook(rescale)
    probe = clean_run(models[1], tokens[:1, :16], from_layer=hook.layer)
    assert "final norm" in resume_problem(models[1], hook, probe)
    with caplog.at_level("WARNING"):
        fast, _ = _sums(models, tokens, HOOK, cc, resume=True)
    assert "cannot be resumed" in caplog.text and "final norm" in caplog.text
    reference, _ = _sums(models, tokens, HOOK, cc, resume=False)
    torch.testing.assert_close(fast.sums, reference.sums, rtol=1e-5, atol=2e-5)


def _tiny_causal_lm(architecture: str):
    """A randomly initialised 4-layer model of another family the pipeline loads (AutoModelForCausalLM)."""
    import transformers

    shape = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    if architecture == "llama":
        config = transformers.LlamaConfig(**shape)
        cls = transformers.LlamaForCausalLM
    elif architecture == "mistral":
        config = transformers.MistralConfig(**shape, sliding_window=8)  # windows shorter than the contexts
        cls = transformers.MistralForCausalLM
    else:  # gemma2: soft-capped logits and attention, sliding layers, norms after attention and MLP
        config = transformers.Gemma2Config(**shape, head_dim=16, sliding_window=8, final_logit_softcapping=30.0,
                                           attn_logit_softcapping=50.0, query_pre_attn_scalar=16)
        cls = transformers.Gemma2ForCausalLM
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("architecture", ["llama", "mistral", "gemma2"])
def test_other_architectures_give_the_reference_numbers(architecture):
    """Llama, Mistral (sliding window) and Gemma-2 (soft caps, sliding layers, extra norms): the fast
    path's per-context sums equal the full-forward reference's, every run resumed from the hook."""
    import reasondiff.analyze.ce_recovery as ce

    models = [_tiny_causal_lm(architecture) for _ in range(2)]
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(0.02 * torch.randn_like(p))
    tokens = torch.randint(0, 320, (4, 24))
    valid = torch.ones(tokens.shape, dtype=torch.bool)
    valid[3, 15:] = False
    cc = _random_crosscoder(64, seed=2)
    full = []
    real_full = ce.final_hidden
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ce, "final_hidden", lambda *a, **k: full.append(1) or real_full(*a, **k))
        fast, _ = _sums(models, tokens, "blocks.1.hook_resid_post", cc, resume=True, valid=valid)
    reference, _ = _sums(models, tokens, "blocks.1.hook_resid_post", cc, resume=False, valid=valid)
    torch.testing.assert_close(fast.sums, reference.sums, rtol=1e-5, atol=2e-5)
    paper = reference.sums[:, 0, CONVENTIONS.index("paper")].sum(0)
    assert paper[SUMS.index("ce_zero_ablation")] != pytest.approx(float(paper[SUMS.index("ce_clean")]), abs=1e-2)
    assert not full  # resumed: every family's layers replay from the hook


def test_each_context_makes_only_its_own_distinct_runs(trained_pair, monkeypatch):
    """A massive token in one context of a batch costs that context a third run (its two conventions
    splice different positions), not the others; the numbers stay the reference's."""
    import reasondiff.analyze.ce_recovery as ce

    models, tokens = trained_pair
    cc = _random_crosscoder(models[0].config.hidden_size, seed=3)
    real, real_runs = ce.counted_positions, ce.intervened_runs
    counts = []

    def massive_in_first_context(x_raw, **kwargs):  # of each batch
        x_raw = x_raw.clone()
        x_raw[0, 5] *= 100.0
        return real(x_raw, **kwargs)

    def spy_runs(model, tokens, hook, clean, edits):
        counts.append(len(edits))
        return real_runs(model, tokens, hook, clean, edits)

    monkeypatch.setattr(ce, "counted_positions", massive_in_first_context)
    monkeypatch.setattr(ce, "intervened_runs", spy_runs)
    fast, _ = _sums(models, tokens, HOOK, cc, resume=True, max_norm_ratio=10.0)
    assert counts == [4, 3] * 4  # per batch, model and context: only each batch's first has a massive token
    reference, _ = _sums(models, tokens, HOOK, cc, resume=False, max_norm_ratio=10.0)
    torch.testing.assert_close(fast.sums, reference.sums, rtol=1e-5, atol=2e-5)
