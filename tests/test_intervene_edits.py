"""The interventions at the crosscoder's hook are exact where they must be: patching an empty set changes
nothing, patching every latent of a perfect crosscoder is the whole-residual patch, ablating then patching
back is the identity, steering with α = 0 is the identity, the ADL vector is the plain mean difference; and
no hook is left on either model after any intervention, in a text pass or in generation, even on an error."""

from __future__ import annotations

import pytest
import torch

from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig
from reasondiff.intervene import adl, edits
from reasondiff.intervene.edits import Direction, Intervention
from reasondiff.intervene.live import LiveGenerator, live_intervention
from reasondiff.intervene.measures import SUMS, InterventionMeter, measures_from_sums
from reasondiff.intervene.passes import Runner, Site, first_position_differences, intervention_batch
from reasondiff.lm.hooks import capture, residual_hook
from reasondiff.lm.models import parse_hook

D = 128  # the tiny model's d_model
HOOK = "blocks.2.hook_resid_pre"


def perfect_crosscoder(d: int = D, factors=(0.5, 2.0)) -> CrossCoder:
    """Reconstructs both models exactly: latents relu(±x_base), relu(±x_tuned) (normalised), each decoded into
    its own model only; no biases; scaling factors != 1 (forgetting to undo them would show)."""
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=4 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_dec.zero_()
        cc.b_enc.zero_()
        cc.b_dec.zero_()
        for block, (model, sign) in enumerate(((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0))):
            cc.W_enc[model, :, block * d:(block + 1) * d] = sign * eye
            cc.W_dec[block * d:(block + 1) * d, model] = sign * eye
        cc.scaling_factors.copy_(torch.tensor(factors))
    return cc.eval()


def random_crosscoder(d: int = D, n_latents: int = 256, seed: int = 0) -> CrossCoder:
    torch.manual_seed(seed)
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=n_latents, dec_init_norm=0.3))
    with torch.no_grad():
        cc.W_enc.copy_(cc.W_dec.permute(1, 2, 0) * 3)
        cc.b_enc.fill_(-0.05)
        cc.b_dec.normal_(0, 0.1)
        cc.scaling_factors.copy_(torch.tensor([0.4, 0.35]))
    return cc.eval()


@pytest.fixture
def pair(tiny_model, tiny_tokenizer):
    from reasondiff.tiny import make_model

    tuned = make_model(tiny_tokenizer, seed=1)
    return tiny_model.eval(), tuned.eval()


@pytest.fixture
def changed_early(tiny_model):
    """(base, tuned) where the fine-tune changed only the layers before the hook (blocks 0-1): the whole
    residual patched at the hook closes all of KL(base ‖ tuned)."""
    import copy

    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for layer in tuned.model.layers[:2]:
            for p in layer.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return tiny_model.eval(), tuned.eval()


def logits_with(model, ids, hook, edit):
    with torch.no_grad(), residual_hook(model, hook, edit):
        return model(input_ids=ids, use_cache=False).logits


def paired(models, ids, hook, cc):
    x = torch.stack([capture(m, ids, None, hook).float() for m in models], dim=2)
    return x, edits.latents_of(cc, x)


def at_the_hook(pair, tokenizer, shape, make_crosscoder):
    """The set-up of the patching tests, drawn in this order: the hook, random token ids of `shape`, the
    crosscoder `make_crosscoder()` builds, then both models' activations there [batch, pos, 2, d] and its
    latents. Returns (hook, ids, crosscoder, activations, latents)."""
    hook = parse_hook(HOOK, 4)
    ids = torch.randint(0, len(tokenizer), shape)
    cc = make_crosscoder()
    x, f = paired(pair, ids, hook, cc)
    return hook, ids, cc, x, f


def no_hooks_left(*models) -> bool:
    return all(not module._forward_hooks and not module._forward_pre_hooks
               for model in models for module in model.modules())


def test_patching_an_empty_set_changes_nothing(pair, tiny_tokenizer):
    base, tuned = pair
    hook, ids, cc, x, f = at_the_hook(pair, tiny_tokenizer, (2, 24), random_crosscoder)
    empty = torch.zeros(0, dtype=torch.long)
    assert edits.patch_set(x[:, :, 0], cc, f, empty) is None
    clean = base(input_ids=ids, use_cache=False).logits
    assert torch.equal(logits_with(base, ids, hook, lambda a: edits.patch_set(a, cc, f, empty)), clean)
    # the same set non-empty does change the logits (the comparison is not vacuous)
    some = torch.arange(64)
    assert not torch.allclose(logits_with(base, ids, hook, lambda a: edits.patch_set(a, cc, f, some)), clean, atol=1e-4)


def test_patching_every_latent_of_a_perfect_crosscoder_is_the_whole_residual_patch(pair, tiny_tokenizer):
    base, tuned = pair
    hook, ids, cc, x, f = at_the_hook(pair, tiny_tokenizer, (2, 24), perfect_crosscoder)
    where = torch.ones(2, 24, dtype=torch.bool)
    where[:, 0] = False  # as the stage does when the crosscoder never saw position 0
    recon = cc.denormalise(cc.decode(f))
    torch.testing.assert_close(recon, x, atol=1e-5, rtol=1e-5)  # it is a perfect crosscoder
    every = torch.arange(cc.cfg.n_latents)
    patched = logits_with(base, ids, hook, lambda a: edits.patch_set(a, cc, f, every, where))
    whole = logits_with(base, ids, hook, lambda a: edits.patch_residual(a, x[:, :, 1], where))
    torch.testing.assert_close(patched, whole, atol=1e-4, rtol=1e-4)
    tuned_logits = tuned(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(whole, base(input_ids=ids, use_cache=False).logits, atol=1e-3)
    # the latents of one model only: the base latents removed, the tuned ones added
    tuned_half = torch.arange(2 * D, 4 * D)
    torch.testing.assert_close(edits.set_contribution(cc, f, tuned_half, 1), x[:, :, 1], atol=1e-5, rtol=1e-5)
    assert float(edits.set_contribution(cc, f, tuned_half, 0).abs().max()) == 0.0
    # patching every position with the whole residual gives the tuned model's own logits
    full = logits_with(base, ids, hook, lambda a: edits.patch_set(a, cc, f, every))
    assert torch.allclose(full, logits_with(base, ids, hook, lambda a: x[:, :, 1]), atol=1e-4)
    assert tuned_logits.shape == full.shape


def test_the_decoder_biases_are_the_only_difference_from_the_whole_residual_patch(pair, tiny_tokenizer):
    """A perfect crosscoder WITH decoder biases (its latents carry x − b): patching every latent gives
    x_tuned + b_base/s_base − b_tuned/s_tuned, the biases belonging to no latent."""

    def perfect_crosscoder_with_biases():
        cc = perfect_crosscoder()
        with torch.no_grad():
            cc.b_dec.normal_(0, 0.5)
            for block, (model, sign) in enumerate(((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0))):
                cc.b_enc[block * D:(block + 1) * D] = -sign * cc.b_dec[model]
        return cc

    _, _, cc, x, f = at_the_hook(pair, tiny_tokenizer, (1, 12), perfect_crosscoder_with_biases)
    torch.testing.assert_close(cc.denormalise(cc.decode(f)), x, atol=1e-5, rtol=1e-5)  # still perfect
    every = torch.arange(cc.cfg.n_latents)
    patched = edits.patch_set(x[:, :, 0], cc, f, every)
    bias = cc.b_dec[0] / cc.scaling_factors[0] - cc.b_dec[1] / cc.scaling_factors[1]
    torch.testing.assert_close(patched - x[:, :, 1], bias.expand_as(patched), atol=1e-5, rtol=1e-5)
    assert float(bias.detach().abs().max()) > 0.1  # the biases are really there


def test_ablating_then_patching_back_is_the_identity(pair, tiny_tokenizer):
    _, tuned = pair
    hook, ids, cc, _, f = at_the_hook(pair, tiny_tokenizer, (2, 20), random_crosscoder)
    latents = torch.arange(0, 256, 3)
    clean = tuned(input_ids=ids, use_cache=False).logits

    def both(a):
        return edits.restore_set(edits.ablate_set(a, cc, f, latents), cc, f, latents)

    torch.testing.assert_close(logits_with(tuned, ids, hook, both), clean, atol=1e-4, rtol=1e-4)
    ablated = logits_with(tuned, ids, hook, lambda a: edits.ablate_set(a, cc, f, latents))
    assert not torch.allclose(ablated, clean, atol=1e-3)


def test_steering_with_alpha_zero_is_the_identity(pair, tiny_tokenizer):
    base, _ = pair
    hook = parse_hook(HOOK, 4)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 16))
    direction = Direction(torch.randn(D), typical_norm=3.0)
    clean = base(input_ids=ids, use_cache=False).logits
    assert edits.steer(torch.randn(2, 16, D), direction.vector(0.0)) is None
    assert torch.equal(logits_with(base, ids, hook, lambda a: edits.steer(a, direction.vector(0.0))), clean)
    steered = logits_with(base, ids, hook, lambda a: edits.steer(a, direction.vector(1.0)))
    assert not torch.allclose(steered, clean, atol=1e-3)
    # α scales the typical norm: α = 2 adds a vector of norm 2 × 3
    assert float(direction.vector(2.0).norm()) == pytest.approx(6.0, rel=1e-5)


def test_the_adl_vector_is_the_hand_computed_mean_difference(pair, tiny_tokenizer):
    hook = parse_hook(HOOK, 4)
    ids = torch.randint(0, len(tiny_tokenizer), (5, 12))
    valid = torch.ones(5, 12, dtype=torch.bool)
    valid[4, 3:] = False  # a short context: positions 3.. are padding
    runners = [Runner(m, hook) for m in pair]
    site = Site(hook, keep_first=True, max_norm_ratio=None)
    means = adl.DifferenceMeans(k=5, d_model=D)
    for rows in (slice(0, 2), slice(2, 5)):  # streamed over two batches
        means.update(first_position_differences(runners, ids[rows], valid[rows], site, 5))
    base, tuned = (capture(m, ids, None, hook).float() for m in pair)
    diff = (tuned - base)[:, :5]
    expected = torch.stack([diff[valid[:, :5][:, j], j].mean(0) for j in range(5)])
    torch.testing.assert_close(means.per_position(), expected, atol=1e-5, rtol=1e-5)
    # pooled: positions 1..4 (0 is the sink the crosscoder never saw), real tokens only
    covered = valid[:, :5].clone()
    covered[:, 0] = False
    torch.testing.assert_close(means.pooled(), diff[covered].mean(0), atol=1e-5, rtol=1e-5)
    assert int(means.pooled_count) == int(covered.sum())
    # the logit lens reads softmax(unembed(final_norm(δ))): probabilities, largest first
    lens = adl.logit_lens(pair[0], means.pooled(), k=5)
    ids_, probs = lens["promoted"]
    assert len(ids_) == 5 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    expected_top = torch.softmax(pair[0].lm_head(pair[0].model.norm(means.pooled()[None])), -1)[0].argmax()
    assert ids_[0] == int(expected_top)


def reasoning_texts(tokenizer):
    """Three chat-formatted reasoning conversations (questions of different lengths, so their assistant turns
    start at different positions), as analyze reads them."""
    from reasondiff.analyze.texts import reasoning_conversations
    from reasondiff.config import ReasoningFormat

    rows = [{"question": "What is 2 + 3?" + " Think about apples." * i, "deepseek_thinking_trajectory":
             "step one adds an apple. step two adds another.", "deepseek_attempt": "The answer is 5."} for i in range(3)]
    return reasoning_conversations(rows, tokenizer, ReasoningFormat(), n_contexts=3, context_length=10_000), rows


def test_the_reasoning_adl_window_starts_at_the_assistant_turn(pair, tiny_tokenizer):
    """As the reference places its window on chat data: position 0 is the first token after the chat template's
    generation prompt (the first token the fine-tune's loss mask keeps), not the conversation's first token."""
    from reasondiff.config import ReasoningFormat
    from reasondiff.lm.sft_example import IGNORE_INDEX, tokenize_example

    fmt = ReasoningFormat()
    texts, rows = reasoning_texts(tiny_tokenizer)
    starts = texts.assistant_starts
    assert starts is not None and len(set(starts.tolist())) == 3  # a different start in each conversation
    for b, row in enumerate(rows):
        ids = texts.input_ids[b].tolist()
        start = int(starts[b])
        assert tiny_tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")  # the generation prompt
        assert tiny_tokenizer.decode(ids[start:]).startswith(fmt.think_delimiter)  # the assistant content
        labels = tokenize_example(tiny_tokenizer, row["question"], row["deepseek_thinking_trajectory"],
                                  row["deepseek_attempt"], fmt).labels
        assert start == next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)  # the loss mask's start
    hook = parse_hook(HOOK, 4)
    runners = [Runner(m, hook) for m in pair]
    site = Site(hook, keep_first=True, max_norm_ratio=None)
    k = 5
    part = first_position_differences(runners, texts.input_ids, texts.valid, site, k, starts)
    base, tuned = (capture(m, texts.input_ids, None, hook).float() for m in pair)
    window = torch.stack([(tuned - base)[b, int(starts[b]):int(starts[b]) + k] for b in range(3)])  # [3, k, d]
    assert int(part["skipped"]) == 0 and part["count"].tolist() == [3.0] * k
    torch.testing.assert_close(part["sum"].float(), window.sum(0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(part["pooled_sum"].float(), window.sum((0, 1)), atol=1e-4, rtol=1e-5)
    assert int(part["pooled_count"]) == 3 * k  # the sink position 0 lies outside every window
    old = first_position_differences(runners, texts.input_ids, texts.valid, site, k)  # the conversations' first tokens
    assert not torch.allclose(old["sum"], part["sum"], atol=1e-3)


def test_a_conversation_whose_assistant_turn_is_too_short_in_the_context_is_skipped_and_counted(pair, tiny_tokenizer):
    texts, _ = reasoning_texts(tiny_tokenizer)
    starts, k = texts.assistant_starts, 5
    valid = texts.valid.clone()
    valid[0, int(starts[0]) + k - 1:] = False  # k - 1 assistant tokens in the context: skipped
    valid[1, int(starts[1]) + k:] = False  # exactly k: kept
    hook = parse_hook(HOOK, 4)
    runners = [Runner(m, hook) for m in pair]
    site = Site(hook, keep_first=True, max_norm_ratio=None)
    means = adl.DifferenceMeans(k=k, d_model=D)
    for rows in (slice(0, 1), slice(1, 3)):  # streamed over two batches
        means.update(first_position_differences(runners, texts.input_ids[rows], valid[rows], site, k, starts[rows]))
    assert int(means.skipped) == 1 and means.count.tolist() == [2.0] * k and int(means.pooled_count) == 2 * k
    base, tuned = (capture(m, texts.input_ids, None, hook).float() for m in pair)
    kept = torch.stack([(tuned - base)[b, int(starts[b]):int(starts[b]) + k] for b in (1, 2)])
    torch.testing.assert_close(means.per_position(), kept.mean(0), atol=1e-5, rtol=1e-5)
    rows = adl.adl_token_rows("reasoning", means, {"base": pair[0]}, str, 3, window="assistant")
    assert {(r["window"], r["n_skipped"]) for r in rows} == {("assistant", 1)}


def test_the_adl_window_per_text(tiny_tokenizer):
    """Reasoning text reads from the assistant turn by default (`start` keeps the old window), general text from
    its first token; a reasoning text that does not know its assistant turns is refused in one line."""
    from types import SimpleNamespace

    from reasondiff.analyze.texts import Contexts
    from reasondiff.config.intervene import InterveneConfig
    from reasondiff.core.errors import UserError
    from reasondiff.intervene.run import adl_window

    texts, _ = reasoning_texts(tiny_tokenizer)
    general = Contexts.packed("general", texts.input_ids)
    default = SimpleNamespace(intervene=InterveneConfig())
    old = SimpleNamespace(intervene=InterveneConfig(adl_reasoning_window="start"))
    assert (adl_window(default, texts), adl_window(default, general)) == ("assistant", "start")
    assert (adl_window(old, texts), adl_window(old, general)) == ("start", "start")
    with pytest.raises(UserError, match="adl_reasoning_window"):
        adl_window(default, Contexts("reasoning", texts.input_ids, texts.valid))
    with pytest.raises(ValueError, match="adl_reasoning_window"):
        InterveneConfig(adl_reasoning_window="assitant")


def test_a_text_pass_scores_interventions_exactly(changed_early, tiny_tokenizer):
    """In the stage's pass: the empty set and α = 0 close nothing and move nothing; the whole residual closes
    the scan's fraction (all of it, when only the layers before the hook changed); patching every latent
    of a perfect crosscoder closes the same."""
    pair = changed_early
    hook = parse_hook(HOOK, 4)
    ids = torch.randint(0, len(tiny_tokenizer), (3, 20))
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[2, 15:] = False
    cc = perfect_crosscoder()
    runners = [Runner.for_model(m, hook, ids) for m in pair]
    assert all(r.resumable for r in runners)
    site = Site(hook, keep_first=True, max_norm_ratio=None)
    every = tuple(range(cc.cfg.n_latents))
    interventions = [Intervention("patch_set", "base", "none", 0, latents=()),
                     Intervention("steer", "base", "v", alpha=0.0),
                     Intervention("patch_residual", "base"),
                     Intervention("patch_set", "base", "all", len(every), latents=every),
                     Intervention("ablate_set", "tuned", "all", len(every), latents=every),
                     Intervention("steer", "base", "v", alpha=1.0)]
    meter = InterventionMeter(3, len(interventions))
    intervention_batch(runners, ids, valid, site, cc, interventions, meter, context_index=torch.arange(3),
                       directions={"v": Direction(torch.randn(D), 5.0)})
    m = measures_from_sums(meter.sums.numpy().sum(axis=0), min_kl=0.0)
    assert m["kl_closed"][0] == 0.0 and m["kl_self"][0] == 0.0 and m["delta_ce"][0] == 0.0
    assert m["kl_closed"][1] == 0.0 and m["kl_self"][1] == 0.0
    assert m["kl_gap"][0] > 0
    assert m["kl_closed"][2] == pytest.approx(1.0, abs=1e-4)
    assert m["kl_closed"][3] == pytest.approx(m["kl_closed"][2], abs=1e-4)
    assert m["kl_self"][5] > 0
    # predictions scored: real next tokens, made at positions 1.. (position 0 untouched and unscored)
    n = meter.sums[:, 0, SUMS.index("n_predictions")].tolist()
    assert n == [18, 18, 13]
    # the same pass with full forwards (a model that cannot be resumed) gives the same sums
    slow = InterventionMeter(3, len(interventions))
    intervention_batch([Runner(m, hook, resumable=False) for m in pair], ids, valid, site, cc, interventions, slow,
                       context_index=torch.arange(3), directions={"v": Direction(torch.randn(D), 0.0)})
    keep = [0, 1, 2, 3, 4]
    torch.testing.assert_close(slow.sums[:, keep], meter.sums[:, keep], atol=1e-4, rtol=1e-4)
    assert no_hooks_left(*pair)


@pytest.mark.parametrize("kind", ["patch_set", "ablate_set", "steer", "patch_residual"])
def test_generation_under_an_intervention_follows_the_full_forward_and_leaves_no_hook(pair, tiny_tokenizer, kind):
    """Greedy generation with the KV cache (the partner model beside it with its own cache) makes the tokens a
    full forward of the whole sequence under the same intervention predicts, for left-padded prompts."""
    from reasondiff.bench.generation import HFGenerator

    base, tuned = pair
    hook = parse_hook(HOOK, 4)
    cc = random_crosscoder()
    model = tuned if kind == "ablate_set" else base
    partner = base if kind == "ablate_set" else tuned
    iv = Intervention(kind, "tuned" if kind == "ablate_set" else "base", "s", 64, latents=tuple(range(0, 256, 4)),
                      alpha=4.0)
    directions = {"s": Direction(torch.randn(D), 10.0)}
    prompts = [torch.randint(5, len(tiny_tokenizer), (n,)).tolist() for n in (7, 11, 9)]
    generator = HFGenerator(model, tiny_tokenizer, batch_size=3, stop_ids=[10 ** 6])  # never stops: 12 tokens each

    def hold():
        return live_intervention(model, hook, iv, cc, partner=partner, keep_first=True, directions=directions)

    live = LiveGenerator(generator, hold)
    generated = live.generate(prompts, 12)
    assert no_hooks_left(base, tuned)
    for prompt, generation in zip(prompts, generated, strict=True):
        ids = torch.tensor([prompt + generation.token_ids])
        with torch.no_grad(), live_intervention(model, hook, iv, cc, partner=partner, keep_first=True,
                                                directions=directions):
            logits = model(input_ids=ids, use_cache=False).logits[0]
        predicted = logits[len(prompt) - 1:-1].argmax(-1).tolist()
        assert predicted == generation.token_ids
        with torch.no_grad():  # the intervention does something (the comparison is not vacuous)
            assert not torch.allclose(model(input_ids=ids, use_cache=False).logits[0], logits, atol=1e-3)
    assert no_hooks_left(base, tuned)


def test_prompt_only_steering_leaves_the_generated_tokens_alone(pair, tiny_tokenizer):
    base, _ = pair
    hook = parse_hook(HOOK, 4)
    iv = Intervention("steer", "base", "s", alpha=1.0)
    direction = torch.randn(D)
    seen: list[int] = []
    with live_intervention(base, hook, iv, None, keep_first=False, directions={"s": Direction(direction, 50.0)},
                           prompt_only=True), residual_hook(base, hook, lambda a: seen.append(a.shape[1])):
        out = base.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 7 and seen[0] == 4 and seen[1:] == [1, 1]
    assert no_hooks_left(base)


def test_hooks_are_removed_when_the_forward_fails(pair, tiny_tokenizer):
    base, tuned = pair
    hook = parse_hook(HOOK, 4)
    iv = Intervention("patch_set", "base", "s", 4, latents=(0, 1, 2, 3))
    with pytest.raises(RuntimeError), live_intervention(base, hook, iv, random_crosscoder(), partner=tuned,
                                                         keep_first=False):
        base(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)
        raise RuntimeError("interrupted")
    assert no_hooks_left(base, tuned)
    # a leak would show: a model with a hook left on it fails the check
    handle = base.model.layers[0].register_forward_hook(lambda *a: None)
    assert not no_hooks_left(base)
    handle.remove()


def test_the_intervention_meter_resumes_from_its_state_and_ranks_add_up():
    from reasondiff.core.streamed_pass import merge_states

    meter = InterventionMeter(3, 2)
    meter.add(torch.tensor([0, 2]), 1, {"kl_gap": torch.tensor([1.0, 2.0]), "n_predictions": torch.tensor([4.0, 5.0])})
    assert meter.sums[:, 1, SUMS.index("kl_gap")].tolist() == [1.0, 0.0, 2.0]
    assert meter.sums[:, 0].abs().sum() == 0 and meter.sums[:, 1, SUMS.index("n_predictions")].tolist() == [4, 0, 5]
    again = InterventionMeter(3, 2)
    again.load_state_dict(meter.state_dict())
    assert torch.equal(again.sums, meter.sums)
    with pytest.raises(ValueError, match="intervention sums"):
        InterventionMeter(3, 3).load_state_dict(meter.state_dict())
    merged = InterventionMeter(3, 2)
    merged.load_state_dict(merge_states([meter.state_dict(), again.state_dict()], {}))
    assert torch.equal(merged.sums, 2 * meter.sums)  # torchrun ranks' sums add


def test_a_random_direction_is_a_reproducible_unit_vector_per_seed_name_and_index():
    drawn = edits.random_direction(D, "0:adl_general:1")
    assert drawn.dtype == torch.float32 and drawn.shape == (D,)
    assert float(drawn.double().norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(drawn, edits.random_direction(D, "0:adl_general:1"))  # a resumed run draws the same one
    measured = {"adl_general": Direction(torch.randn(D), 3.0), "adl_reasoning": Direction(torch.randn(D), 2.0)}
    both = edits.random_directions(measured, ["adl_general", "adl_reasoning"], 2, seed=0)
    alone = edits.random_directions(measured, ["adl_reasoning"], 2, seed=0)
    assert set(both) == {edits.random_key(name, i) for name in measured for i in (1, 2)}
    # a direction's controls do not depend on which other directions are drawn
    assert torch.equal(both["random/adl_reasoning/1"].direction, alone["random/adl_reasoning/1"].direction)
    assert torch.equal(both["random/adl_general/1"].direction, drawn)
    vectors = [d.direction for d in both.values()]
    for a in range(len(vectors)):  # different across names and indices: nearly orthogonal in 128 dimensions
        for b in range(a + 1, len(vectors)):
            assert abs(float(vectors[a] @ vectors[b])) < 0.5
    other_seed = edits.random_directions(measured, ["adl_general"], 1, seed=1)
    assert not torch.equal(other_seed["random/adl_general/1"].direction, drawn)
    assert edits.random_directions(measured, ["adl_general"], 0, seed=0) == {}


@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0])
def test_a_random_steering_control_adds_a_vector_of_its_directions_norm(alpha):
    """The null pushes exactly as hard as the direction it controls: the same α and typical norm."""
    measured = {"top_latent": Direction(torch.randn(D) * 7.0, typical_norm=2.5)}
    directions = {**measured, **edits.random_directions(measured, ["top_latent"], 3, seed=0)}
    acts = torch.randn(2, 5, D)
    own = edits.edit_for(Intervention("steer", "base", "top_latent", alpha=alpha), None, f=None, partner=None,
                         where=None, directions=directions)(acts) - acts
    expected = float(own[0, 0].norm())
    assert expected == pytest.approx(alpha * 2.5, rel=1e-5)
    for index in (1, 2, 3):
        iv = Intervention("steer", "base", "random", set_index=index, alpha=alpha, matched_to="top_latent")
        added = edits.edit_for(iv, None, f=None, partner=None, where=None, directions=directions)(acts) - acts
        assert float(added[0, 0].norm()) == pytest.approx(expected, rel=1e-5)
        assert torch.allclose(added[0, 0], added[1, 4], atol=1e-5)  # one vector at every position
        assert not torch.allclose(added[0, 0], own[0, 0], atol=1e-3)  # another direction than the measured one
    names = {Intervention("steer", "base", "random", set_index=i, alpha=alpha, matched_to="top_latent").name
             for i in (1, 2, 3)}
    assert len(names) == 3 and Intervention("steer", "base", "top_latent", alpha=alpha).name not in names
