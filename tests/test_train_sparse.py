"""The sparse training step equals the dense one: kernels, gradients of one step, parameters after several."""

from __future__ import annotations

import pytest
import torch

from reasondiff.config import TrainConfig
from reasondiff.core.errors import UserError
from reasondiff.crosscoder import pairs_kernel, sparse
from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
from reasondiff.train.step import Objective, dense_objective, select_active, sparse_objective
from reasondiff.train.trainer import CrossCoderTrainer

# fp32 throughout. One step: the two paths sum the same products in a different order (GEMM blocks
# vs per-pair dot products), so gradients agree to float rounding. Several Adam steps: Adam divides
# by sqrt(v), which turns a rounding difference in a near-zero gradient into a visible step, so the
# parameters are compared with an absolute tolerance of a small fraction of one lr-sized update.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6
PARAM_ATOL = 1e-6


def _mask(B=12, F=40, density=0.15, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, F, generator=gen) < density


@pytest.fixture(scope="module")
def cpp():
    """The compiled pairs kernels (built once per machine; CI has gcc)."""
    kernel = pairs_kernel.load()
    if kernel is None:
        pytest.skip(f"needs a C++ compiler with OpenMP and ninja: {pairs_kernel.failure()}")
    return kernel


@pytest.fixture(params=["torch", "cpp"])
def backend(request):
    """None (torch ops) or the compiled kernels: every product is tested both ways."""
    return request.getfixturevalue("cpp") if request.param == "cpp" else None


@pytest.mark.parametrize("density", [0.0, 0.02, 0.15])  # none; latent-major order by sort / by the transposed mask
def test_active_pairs_orders_and_values(density, backend):
    mask = _mask(B=30, F=200, density=density)
    mask[3] = False  # a token with no active latent
    mask[:, 7] = False  # a latent active nowhere
    mask[:, 199] = density > 0  # the last latent (the kernel's offsets end there)
    dense = torch.randn(mask.shape)
    for pairs in (sparse.ActivePairs.from_mask(mask, backend),
                  sparse.ActivePairs.above(torch.where(mask, dense.abs() + 0.1, -dense.abs()), 0.0, backend)):
        assert pairs.kernel is backend
        assert pairs.nnz == int(mask.sum()) and pairs.density == pytest.approx(float(mask.float().mean()))
        tokens, latents = mask.nonzero(as_tuple=True)  # row-major = token-major
        assert torch.equal(pairs.token_major_latent, latents)
        assert torch.equal(pairs.token_major(dense), dense[tokens, latents])
        order = torch.argsort(latents * mask.shape[0] + tokens)  # latent-major
        assert torch.equal(pairs.latent_major_token, tokens[order])
        assert torch.equal(pairs.latent_major_latent, latents[order])
        assert torch.equal(pairs.latent_major(dense), dense[tokens[order], latents[order]])
        assert torch.equal(pairs.token_offsets, torch.cumsum(mask.sum(1), 0) - mask.sum(1))
        assert torch.equal(pairs.latent_offsets, torch.cumsum(mask.sum(0), 0) - mask.sum(0))
        torch.testing.assert_close(pairs.per_latent_sum(pairs.latent_major(dense)), (dense * mask).sum(0))
        assert torch.equal(pairs.latent_counts(), mask.sum(0))


@pytest.mark.parametrize("with_offset", [False, True])
def test_pairs_above_an_offset_carry_the_offset_scores(with_offset, backend):
    """`above` with the encoder bias as its offset: the pairs of scores + offset > threshold, their
    values scores + offset (latent-major), bit for bit, and a snapshot: later writes to the scores
    do not change them. Offsets on both sides of zero move latents in and out of the support."""
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(30, 203, generator=gen) - 1.0  # 203: a tail after the 16-wide SIMD scan
    offset = torch.randn(203, generator=gen) if with_offset else None
    biased = scores + offset if with_offset else scores
    pairs = sparse.ActivePairs.above(scores, 0.25, backend, offset=offset)
    want = sparse.ActivePairs.from_mask(biased > 0.25)
    for name in ("token_offsets", "token_major_latent", "latent_offsets", "latent_major_token", "latent_major_latent"):
        assert torch.equal(getattr(pairs, name), getattr(want, name)), name
    assert torch.equal(pairs.values, want.latent_major(biased))
    snapshot = pairs.values.clone()
    scores.mul_(2.0)
    assert torch.equal(pairs.values, snapshot)


def test_the_parallel_counting_sort_does_not_depend_on_the_thread_count(cpp):
    """Enough pairs for the latent-major order to be split over token ranges: 1 and 3 threads give
    the same order, offsets and values as the torch path."""
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(512, 300, generator=gen)  # ~ 48k pairs: 2-3 ranges of ≥ 16k
    offset = torch.randn(300, generator=gen)
    threads = torch.get_num_threads()
    try:
        got = []
        for n in (1, 3):
            torch.set_num_threads(n)
            got.append(sparse.ActivePairs.above(scores, 0.0, cpp, offset=offset))
    finally:
        torch.set_num_threads(threads)
    want = sparse.ActivePairs.above(scores, 0.0, None, offset=offset)
    for pairs in got:
        for name in ("latent_offsets", "latent_major_token", "latent_major_latent", "latent_major_flat", "values"):
            assert torch.equal(getattr(pairs, name), getattr(want, name)), name


def _assert_sums_close(got, terms):
    """`got` equals Σ terms (float64, summed over dim 1 of terms [..., n, ...] given as a pair
    (exact, sum of |terms|)) to 1e-5 of the sum of the terms' magnitudes: the rounding bound of a
    float32 sum in any order, which is what both backends promise."""
    exact, magnitude = terms
    assert got.shape == exact.shape
    err = (got.double() - exact).abs()
    bound = 1e-5 * magnitude + 1e-30
    assert bool((err <= bound).all()), f"max error/bound {float((err / bound).max()):.3g}"


def _product(a, b):
    """(a @ b, |a| @ |b|) in float64."""
    return a.double() @ b.double(), a.double().abs() @ b.double().abs()


@pytest.mark.parametrize("density", [0.0, 0.01, 0.05, 0.3])
def test_kernels_equal_the_dense_products(density, backend):
    """Every product over the pairs against its dense [B, F] formula, with an empty batch of pairs,
    a token and a latent with no pairs, and rows (M·d = 2 x 150) wider than one column block."""
    B, F_, M, d = 24, 70, 2, 150
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(B, F_, generator=gen) < density
    mask[5] = False
    mask[:, 11] = False
    f = torch.rand(B, F_, generator=gen) * mask
    W, T, X = torch.randn(F_, M * d, generator=gen), torch.randn(B, M * d, generator=gen), torch.randn(B, M * d, generator=gen)
    bias, w_pairs = torch.randn(M, d, generator=gen), torch.randn(B, F_, generator=gen) * mask
    scale = torch.randn(F_, M, generator=gen)
    pairs = sparse.ActivePairs.from_mask(mask, backend)
    ones = torch.ones(B, 1)

    recon, norms = sparse.decode(pairs, f, W, bias=bias, n_models=M)
    _assert_sums_close(recon, _product(torch.cat([f, ones], 1), torch.cat([W, bias.reshape(1, -1)])))
    torch.testing.assert_close(norms, W.view(F_, M, d).norm(dim=-1), rtol=1e-6, atol=0)
    assert sparse.decode(pairs, f, W)[1] is None
    _assert_sums_close(sparse.decode(pairs, f, W)[0], _product(f, W))
    _assert_sums_close(sparse.latent_sums(pairs, pairs.latent_major(f), T), _product(f.T, T))

    # ∂L/∂W_dec with the norm penalty's term: [f | scale] against [T ; W] per latent
    g_W, dots, sq = sparse.decoder_weight_gradient(pairs, pairs.latent_major(f), T, W, row_scale=scale)
    exact, magnitude = _product(f.T, T)
    norm_term = (scale.unsqueeze(-1) * W.view(F_, M, d)).reshape(F_, M * d).double()
    _assert_sums_close(g_W, (exact + norm_term, magnitude + norm_term.abs()))
    exact, magnitude = _product(T, W.T)
    _assert_sums_close(dots, (pairs.latent_major(exact), pairs.latent_major(magnitude)))
    assert dots.shape == (pairs.nnz,)
    if sq is not None:  # the kernel's ||∂L/∂W||², for the clip
        torch.testing.assert_close(sq, g_W.pow(2).sum(), rtol=1e-5, atol=0)
    start = torch.randn(F_, M * d, generator=gen)
    g_W, _, sq = sparse.decoder_weight_gradient(pairs, pairs.latent_major(f), T, W, accumulate=start.clone())
    exact, magnitude = _product(f.T, T)
    _assert_sums_close(g_W, (exact + start.double(), magnitude + start.double().abs()))
    if sq is not None:
        torch.testing.assert_close(sq, g_W.pow(2).sum(), rtol=1e-5, atol=0)

    g_enc, g_b, sq = sparse.encoder_weight_gradient(pairs, pairs.latent_major(w_pairs), X)
    _assert_sums_close(g_enc, _product(w_pairs.T, X))
    _assert_sums_close(g_b, tuple(t.squeeze(1) for t in _product(w_pairs.T, ones)))
    if sq is not None:
        torch.testing.assert_close(sq, g_enc.pow(2).sum(), rtol=1e-5, atol=0)
    start_b = torch.randn(F_, generator=gen)
    g_enc, g_b, _ = sparse.encoder_weight_gradient(pairs, pairs.latent_major(w_pairs), X,
                                                   accumulate=(start.clone(), start_b.clone()))
    exact, magnitude = _product(w_pairs.T, X)
    _assert_sums_close(g_enc, (exact + start.double(), magnitude + start.double().abs()))
    exact, magnitude = _product(w_pairs.T, ones)
    _assert_sums_close(g_b, (exact.squeeze(1) + start_b.double(), magnitude.squeeze(1) + start_b.double().abs()))


def test_kernel_results_do_not_depend_on_the_thread_count(cpp):
    """Each output float is summed by one thread in a fixed order: 1 and 3 threads agree bit for bit."""
    gen = torch.Generator().manual_seed(4)
    B, F_, K = 40, 600, 2 * 140
    scores = torch.randn(B, F_, generator=gen) - 1.5
    W, T = torch.randn(F_, K, generator=gen), torch.randn(B, K, generator=gen)
    scale = torch.randn(F_, 2, generator=gen)
    threads = torch.get_num_threads()

    def run():
        pairs = sparse.ActivePairs.above(scores, 0.0, cpp)
        f = pairs.values
        recon, norms = sparse.decode(pairs, None, W, n_models=2, values=f)
        g_W, dots, sq = sparse.decoder_weight_gradient(pairs, f, T, W, row_scale=scale)
        return [pairs.token_major_flat, pairs.latent_major_flat, recon, norms, g_W, dots, sq,
                *sparse.encoder_weight_gradient(pairs, dots, T)]

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


def test_sampled_dots_split_over_threads_and_public_fallback(monkeypatch):
    mask = _mask(B=64, F=300, density=0.3)  # > 4096 pairs: split over the intra-op threads
    T, W = torch.randn(64, 8), torch.randn(300, 8)
    pairs = sparse.ActivePairs.from_mask(mask)
    want = pairs.latent_major(T @ W.T)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    torch.testing.assert_close(sparse.sampled_dots(pairs, T, W), want)

    def broken(*args):
        raise RuntimeError("signature changed")

    monkeypatch.setattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", broken, raising=False)
    torch.testing.assert_close(sparse.sampled_dots(pairs, T, W), want)


def _crosscoder(variant="l1", n_shared=0, ratio=1.0, d=6, F=48, seed=0):
    torch.manual_seed(seed)
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=F, variant=variant, k=5, dec_init_norm=0.3,
                                     n_shared_latents=n_shared, shared_penalty_ratio=ratio))
    with torch.no_grad():
        cc.b_enc.normal_(std=0.3)
        cc.b_dec.normal_(std=0.1)
        cc.W_dec[3, 1] = 0.0  # a zero decoder row: its norm has no gradient in either path
    return cc


CASES = {
    "l1": dict(variant="l1"),
    "l1_unsquared": dict(variant="l1", objective=Objective(reconstruction="unsquared")),
    "l1_shared": dict(variant="l1", n_shared=8, ratio=0.15),
    "batchtopk_aux_scaled": dict(variant="batchtopk", objective=Objective(aux_k=4, aux_k_coeff=0.5)),
    "batchtopk_aux_fork_unsquared": dict(
        variant="batchtopk", objective=Objective(reconstruction="unsquared", aux_k=4, aux_k_coeff=0.5, aux_k_style="fork")),
}


@pytest.mark.parametrize("case", CASES)
def test_one_step_gradients_equal(case, backend):
    spec = dict(CASES[case])
    objective = spec.pop("objective", Objective())
    cc = _crosscoder(**spec)
    x = torch.randn(20, 2, 6) * 2
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    params = [cc.W_enc_by_latent, cc.W_dec, cc.b_enc, cc.b_dec]

    pre = cc.pre_activations(x)
    mask, _ = select_active(cc, pre)
    assert 0 < mask.float().mean() < 1
    dense = dense_objective(cc, x, pre, mask, l1_coeff=0.7, dead=dead, objective=objective)
    dense.loss.backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    got = sparse_objective(cc, x, pre.detach(), mask, l1_coeff=0.7, dead=dead, objective=objective, kernel=backend)
    torch.testing.assert_close(got.loss, dense.loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.aux, dense.aux, rtol=1e-5, atol=1e-6)
    if "aux" in case:
        assert dense.aux > 0
    torch.testing.assert_close(got.recon, dense.recon, rtol=1e-5, atol=1e-6)
    for name, p, w in zip(("W_enc", "W_dec", "b_enc", "b_dec"), params, want, strict=True):
        assert p.grad.stride() == p.stride(), name  # the fused Adam kernel needs matching layouts
        torch.testing.assert_close(p.grad, w, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m, n=name: f"{n}: {m}")
        assert w.abs().max() > 0, name


def _train(mode, variant, steps=8, **overrides):
    train = TrainConfig(variant=variant, k=5, batch_size=64, n_tokens=64 * steps, lr=2e-3, l1_coeff=0.5,
                        dead_tokens=128, aux_k=4, threshold_start_step=2, sparse=mode, **overrides)
    cc = _crosscoder(variant, n_shared=6 if train.shared_latents else 0, ratio=train.shared_penalty_ratio)
    initial = {name: t.detach().clone() for name, t in cc.named_parameters()}
    trainer = CrossCoderTrainer(cc, train, steps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    metrics = []
    for _ in range(steps):
        x = torch.randn(64, 2, 6, generator=gen) * torch.rand(64, 1, 1, generator=gen) * 3
        metrics.append(trainer.train_step(x, with_metrics=True))
    return trainer, metrics, initial


@pytest.mark.parametrize("sparse_kernel", ["torch", "cpp"])
@pytest.mark.parametrize("variant,overrides", [
    ("l1", {}),
    ("l1", {"shared_latents": 0.125, "reconstruction_loss": "unsquared"}),
    ("batchtopk", {}),
    ("batchtopk", {"aux_k_style": "fork", "reconstruction_loss": "unsquared", "b_dec_init": "geometric_median",
                   "lr_warmup_steps": 3}),
])
def test_several_steps_dense_and_sparse_reach_the_same_parameters(variant, overrides, sparse_kernel, request):
    if sparse_kernel == "cpp":
        request.getfixturevalue("cpp")
    dense, dense_metrics, initial = _train("off", variant, **overrides)
    sparse_, sparse_metrics, _ = _train("on", variant, sparse_kernel=sparse_kernel, **overrides)
    assert (sparse_.kernel is not None) == (sparse_kernel == "cpp")
    assert all(m["sparse_step"] == 0.0 for m in dense_metrics) and all(m["sparse_step"] == 1.0 for m in sparse_metrics)
    if variant == "batchtopk":  # AuxK was active (dead_tokens = 2 batches) and the threshold tracked
        assert max(m["aux_loss"] for m in dense_metrics) > 0
        assert dense.cc.threshold > 0
        torch.testing.assert_close(sparse_.cc.threshold, dense.cc.threshold, rtol=1e-5, atol=0)
    for name in ("W_enc_by_latent", "W_dec", "b_enc", "b_dec"):
        a, b = getattr(dense.cc, name).detach(), getattr(sparse_.cc, name).detach()
        moved = (a - initial[name]).abs().max()
        assert moved > 100 * PARAM_ATOL, name  # the comparison is not vacuous
        torch.testing.assert_close(b, a, rtol=0, atol=PARAM_ATOL, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(dense.tokens_since_fired, sparse_.tokens_since_fired)
    for key in ("loss", "l0", "l2"):
        assert sparse_metrics[-1][key] == pytest.approx(dense_metrics[-1][key], rel=1e-4)


def test_auto_takes_the_sparse_step_only_where_it_pays():
    small, metrics, _ = _train("auto", "l1", steps=1)
    assert metrics[0]["sparse_step"] == float(metrics[0]["density"] <= 0.05)
    assert small.use_sparse(0.01) and small.use_sparse(small.train.sparse_max_density)
    assert not small.use_sparse(small.train.sparse_max_density + 0.01)
    small.device = torch.device("cuda")  # not measured on a GPU: auto stays dense there
    assert not small.use_sparse(0.01)
    on, _, _ = _train("on", "l1", steps=1)
    off, _, _ = _train("off", "l1", steps=1)
    assert on.use_sparse(0.9) and not off.use_sparse(0.0)


def test_auto_falls_back_to_the_dense_step_with_the_bias_the_scan_left_out(cpp):
    """With the kernels, the l1 step's GEMM leaves b_enc to the pairs scan; a batch too dense for the
    sparse step must get the bias back before the dense step: every step dense this way reaches the
    parameters of train.sparse=off."""
    dense, _, initial = _train("off", "l1")
    fallback, metrics, _ = _train("auto", "l1", sparse_kernel="cpp", sparse_max_density=0.0)
    assert fallback.kernel is not None and all(m["sparse_step"] == 0.0 for m in metrics)
    for name in ("W_enc_by_latent", "W_dec", "b_enc", "b_dec"):
        a, b = getattr(dense.cc, name).detach(), getattr(fallback.cc, name).detach()
        assert (a - initial[name]).abs().max() > 100 * PARAM_ATOL, name
        torch.testing.assert_close(b, a, rtol=0, atol=PARAM_ATOL, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(dense.tokens_since_fired, fallback.tokens_since_fired)


@pytest.mark.parametrize("mode", ["off", "on"])
def test_clip_folded_into_fused_adam_equals_clip_then_adam(mode):
    """The clip coefficient handed to the fused Adam kernel as `grad_scale` gives the parameters of
    torch's clip_grad_norm_ followed by a plain (for-loop) Adam, with the clip biting every step."""
    steps = 3
    train = TrainConfig(variant="l1", batch_size=64, n_tokens=64 * steps, lr=1e-2, l1_coeff=0.5, grad_clip=0.01,
                        sparse=mode)
    cc, reference = _crosscoder(), _crosscoder()
    trainer = CrossCoderTrainer(cc, train, steps, torch.device("cpu"))
    assert trainer.optimizer.defaults["fused"]
    params = [reference.W_enc_by_latent, reference.W_dec, reference.b_enc, reference.b_dec]
    adam = torch.optim.Adam(params, lr=train.lr, betas=(0.9, 0.999), foreach=False)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(64, 2, 6, generator=gen) * 3
        l1_coeff, lr = trainer.l1_coeff(), trainer.optimizer.param_groups[0]["lr"]
        trainer.train_step(x)
        xn = reference.normalise(x)
        pre = reference.pre_activations(xn)
        loss = dense_objective(reference, xn, pre, select_active(reference, pre)[0], l1_coeff=l1_coeff, dead=None,
                               objective=Objective()).loss
        adam.zero_grad()
        loss.backward()
        assert torch.nn.utils.clip_grad_norm_(params, train.grad_clip) > 10 * train.grad_clip
        adam.param_groups[0]["lr"] = lr
        adam.step()
    for name in ("W_enc_by_latent", "W_dec", "b_enc", "b_dec"):
        moved = (getattr(cc, name) - getattr(_crosscoder(), name)).abs().max()
        assert moved > 100 * PARAM_ATOL, name
        torch.testing.assert_close(getattr(cc, name).detach(), getattr(reference, name).detach(), rtol=0,
                                   atol=PARAM_ATOL, msg=lambda m, n=name: f"{n}: {m}")


def test_kernel_choice_and_the_logged_fallback_without_a_compiler(monkeypatch, caplog):
    """auto: the compiled kernels where they build, else one warning and the torch path (same
    numbers); cpp: a build failure is one clear error; torch and GPU runs never build them."""
    def train(kernel, sparse="on"):
        config = TrainConfig(variant="l1", batch_size=64, n_tokens=64 * 4, sparse=sparse, sparse_kernel=kernel)
        return CrossCoderTrainer(_crosscoder(), config, 4, torch.device("cpu"))

    assert train("torch").kernel is None and train("auto", sparse="off").kernel is None
    with pytest.raises(ValueError, match="sparse_kernel"):
        TrainConfig(sparse_kernel="cuda")

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: g++: command not found")

    monkeypatch.setattr(pairs_kernel, "_module", None)
    monkeypatch.setattr(pairs_kernel, "_failure", None)
    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    with caplog.at_level("WARNING", logger=pairs_kernel.__name__):
        fallback = train("auto")
        train("auto")
    assert fallback.kernel is None and "g++: command not found" in pairs_kernel.failure()
    assert sum("could not be built" in r.getMessage() for r in caplog.records) == 1  # logged once
    metrics = fallback.train_step(torch.randn(64, 2, 6), with_metrics=True)
    assert metrics["sparse_step"] == 1.0
    with pytest.raises(UserError, match="train.sparse_kernel=cpp.*g\\+\\+: command not found"):
        train("cpp")
