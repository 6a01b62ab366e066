"""s1's budget forcing: the exact token sequence at the budget (real Qwen tokenizer, and a trained
tiny model), the "Wait" extrapolation on the tiny tuned model, and the shared sweep against
separate runs at each budget."""

from __future__ import annotations

import os

import pytest

from reasondiff.bench import forcing, generation
from reasondiff.bench.generation import Generation, HFGenerator
from reasondiff.bench.grading import grade
from reasondiff.bench.prompts import chat_prompt, prompt_ids
from reasondiff.lm.layouts import layout_named

QWEN = os.environ.get("REASONDIFF_QWEN", "/work/qwen05b")
# Qwen2.5's ids, written out so the test does not trust the code under test to compute them
IM_START, IM_END, THINK, ANSWER, NEWLINE, WAIT = 151644, 151645, 26865, 9217, 198, 14190
FINAL_ANSWER = [151644, 9217, 198, 19357, 21806, 25]  # <|im_start|> answer \n Final ␣Answer :


class ReplayGenerator:
    """Plays back fixed greedy outputs, one per prompt in call order, cut and stopped as a real
    generator would be; records every call."""

    def __init__(self, outputs, stop_ids):
        self.outputs, self.stop_ids, self.chunk_size, self.calls = list(outputs), list(stop_ids), 8, []

    def generate(self, prompts, max_new_tokens, *, stop_ids=None, min_new_tokens=0):
        stop_ids = list(stop_ids) if stop_ids is not None else self.stop_ids
        self.calls.append({"prompts": [list(p) for p in prompts], "max_new_tokens": max_new_tokens,
                           "stop_ids": stop_ids, "min_new_tokens": min_new_tokens})
        out = []
        for _ in prompts:
            ids, stopped = generation.trim_at_stop(self.outputs.pop(0)[:max_new_tokens], stop_ids)
            out.append(Generation(ids, [0.01 * (k + 1) for k in range(len(ids))], stopped))
        return out


@pytest.fixture(scope="module")
def qwen_tokenizer():
    if not os.path.isfile(os.path.join(QWEN, "tokenizer.json")):
        pytest.skip(f"needs the offline Qwen tokenizer at {QWEN} (REASONDIFF_QWEN); built by ../shared/tools/offline_qwen.sh")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN)


def _enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _force(generator, tokenizer, prompts, limits, *, opened=True, n_ignore=0, max_tokens_answer=16):
    return forcing.force(generator, tokenizer, prompts, limits, opened=opened, layout=layout_named("s1"),
                         n_ignore=n_ignore, ignore_str="Wait", max_tokens_answer=max_tokens_answer)


def _qwen_prompt(tokenizer):
    ids = prompt_ids(tokenizer, chat_prompt(tokenizer, "What is 12 + 6?", system_prompt=None, start_thinking=True))
    assert ids[-2:] == [IM_START, THINK]  # opened with <|im_start|>think, no newline: the model writes it
    return ids


def test_real_qwen_tokens_at_the_budget(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = _qwen_prompt(tok)
    thinking = _enc(tok, "\nLet me think. 12 + 6 = 18 so the total is eighteen apples in all")
    budget = 10
    assert not tok.decode(thinking[:budget]).endswith("\n")
    generator = ReplayGenerator([thinking + [IM_START], _enc(tok, " 18") + [IM_END]], [IM_END, 151643])
    (outcome,) = _force(generator, tok, [prompt], [budget]).values()
    think_call, answer_call = generator.calls
    assert think_call["max_new_tokens"] == budget and think_call["min_new_tokens"] == 0
    assert set(think_call["stop_ids"]) == {IM_START, IM_END, 151643}  # <|im_start|> and the end of turn
    assert IM_START not in answer_call["stop_ids"] and IM_END in answer_call["stop_ids"]
    # s1 at the budget: the first B thinking tokens, "\n" (missing), then <|im_start|>answer\nFinal Answer:
    assert answer_call["prompts"] == [prompt + thinking[:budget] + [NEWLINE] + FINAL_ANSWER]
    assert outcome.answer_prompt == answer_call["prompts"][0]
    assert outcome.budget_hit and outcome.finished and outcome.thinking_tokens == budget
    assert outcome.answer_tokens == len(_enc(tok, " 18")) + 1  # the answer and its end of turn
    assert outcome.completion.endswith("\n<|im_start|>answer\nFinal Answer: 18")
    assert grade("gsm8k", outcome.completion, "#### 18", thinking_opened=True, finished=outcome.finished)


def test_real_qwen_no_newline_added_when_the_thinking_ends_with_one(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = _qwen_prompt(tok)
    thinking = _enc(tok, "\nStep one.\n") + _enc(tok, "Step two is longer than the budget")
    budget = len(_enc(tok, "\nStep one.\n"))
    generator = ReplayGenerator([thinking, [IM_END]], [IM_END])
    _force(generator, tok, [prompt], [budget])
    assert generator.calls[1]["prompts"] == [prompt + thinking[:budget] + FINAL_ANSWER]


def test_real_qwen_natural_stop_gets_the_bare_answer_delimiter(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = _qwen_prompt(tok)
    thinking = _enc(tok, "\n12 + 6 = 18.\n")
    generator = ReplayGenerator([thinking + [IM_START, ANSWER], _enc(tok, "\nAnswer: 18") + [IM_END]], [IM_END])
    (outcome,) = _force(generator, tok, [prompt], [64]).values()
    # s1 strips the stop token and appends <|im_start|>answer: no newline, no "Final Answer:"
    assert generator.calls[1]["prompts"] == [prompt + thinking + [IM_START, ANSWER]]
    assert not outcome.budget_hit and outcome.thinking_tokens == len(thinking)
    assert outcome.completion == "\n12 + 6 = 18.\n<|im_start|>answer\nAnswer: 18"


def test_real_qwen_wait_replaces_the_first_end_of_thinking(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = _qwen_prompt(tok)
    first, second = _enc(tok, "\n12 + 6 = 18.\n"), _enc(tok, ", let me check: 18.\n")
    generator = ReplayGenerator([first + [IM_START], second + [IM_START], _enc(tok, "\nAnswer: 18") + [IM_END]],
                                [IM_END])
    (outcome,) = _force(generator, tok, [prompt], [64], n_ignore=1).values()
    round_two = generator.calls[1]
    # "Wait" goes straight after the text, the stop token dropped; at least one token follows
    assert round_two["prompts"] == [prompt + first + [WAIT]] and round_two["min_new_tokens"] == 1
    assert round_two["max_new_tokens"] == 64 - len(first) - 1  # the budget counts the "Wait"
    assert generator.calls[2]["prompts"] == [prompt + first + [WAIT] + second + [IM_START, ANSWER]]
    assert outcome.waits == 1 and "18.\nWait, let me check" in outcome.completion


# --- on trained tiny models --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tuned(trained_tiny_pair):
    from reasondiff.config import HardwareConfig
    from reasondiff.lm.models import load_model

    model, tokenizer = load_model(str(trained_tiny_pair[1]), HardwareConfig(device="cpu", dtype="float32"))
    return HFGenerator(model, tokenizer, batch_size=4), tokenizer


def _tiny_prompts(tokenizer, opened=True):
    instruction = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    questions = ["Ada has 3 apples. On Monday Ada finds 4 more. On Tuesday Ada loses 2. How many apples does Ada "
                 "have after Tuesday?" + instruction, "Compute $7-2+4$." + instruction]  # the tiny world's tasks
    return [prompt_ids(tokenizer, chat_prompt(tokenizer, q, system_prompt=None, start_thinking=opened)) for q in questions]


def test_tiny_model_tokens_at_the_budget(tiny_tuned):
    generator, tok = tiny_tuned
    prompts = _tiny_prompts(tok)
    budget = 12
    think_stops = [tok.convert_tokens_to_ids("<|im_start|>"), *generator.stop_ids]
    plain = generator.generate(prompts, budget, stop_ids=think_stops)
    outcomes = _force(generator, tok, prompts, [budget], max_tokens_answer=24)
    for i, prompt in enumerate(prompts):
        thinking = plain[i].token_ids
        assert len(thinking) == budget and not plain[i].finished  # the tuned model thinks longer than 12
        newline = [] if tok.decode(thinking).endswith("\n") else _enc(tok, "\n")
        expected = prompt + thinking + newline + _enc(tok, "<|im_start|>answer\nFinal Answer:")
        outcome = outcomes[(i, budget)]
        assert outcome.answer_prompt == expected
        assert outcome.budget_hit and outcome.thinking_tokens == budget and outcome.answer_tokens >= 1
        assert "<|im_start|>answer\nFinal Answer:" in outcome.completion


def test_wait_extrapolation_on_the_tiny_tuned_model(tiny_tuned):
    generator, tok = tiny_tuned
    prompts = _tiny_prompts(tok)
    budget = 400
    once = forcing.think(generator, prompts, budget, stop_ids=[tok.convert_tokens_to_ids("<|im_start|>"),
                                                                *generator.stop_ids], n_ignore=0, ignore_ids=[])
    waited = _force(generator, tok, prompts, [budget], n_ignore=1, max_tokens_answer=48)
    wait_ids = _enc(tok, "Wait")
    for i in range(len(prompts)):
        first = once[i]
        assert first.ended and len(first.token_ids) < budget  # the tuned model stops thinking by itself
        outcome = waited[(i, budget)]
        assert outcome.waits == 1
        # the answer phase continued: prompt + first thinking + "Wait" + more thinking + closing
        continued = outcome.answer_prompt[len(prompts[i]):]
        assert continued[:len(first.token_ids)] == first.token_ids
        assert continued[len(first.token_ids):len(first.token_ids) + len(wait_ids)] == wait_ids
        assert outcome.thinking_tokens > len(first.token_ids) + len(wait_ids)  # it thought on after "Wait"
        assert "Wait" in outcome.completion and "<|im_start|>answer" in outcome.completion.split("Wait", 1)[1]


@pytest.mark.parametrize("n_ignore", [0, 1])
def test_one_sweep_equals_separate_runs_at_each_budget(tiny_tuned, trained_tiny_pair, n_ignore):
    generator, tok = tiny_tuned
    prompts = _tiny_prompts(tok)
    limits = [5, 30, 70, 400]
    swept = _force(generator, tok, prompts, limits, n_ignore=n_ignore, max_tokens_answer=24)
    kinds = set()
    for limit in limits:
        alone = _force(generator, tok, prompts, [limit], n_ignore=n_ignore, max_tokens_answer=24)
        for i in range(len(prompts)):
            a, b = swept[(i, limit)], alone[(i, limit)]
            assert (a.completion, a.thinking_tokens, a.answer_tokens, a.finished, a.budget_hit, a.waits) == \
                   (b.completion, b.thinking_tokens, b.answer_tokens, b.finished, b.budget_hit, b.waits), (i, limit)
            kinds.add(a.budget_hit)
    assert kinds == {True, False}  # both closings were compared


def test_a_base_model_that_ends_its_turn_answers_once(trained_tiny_pair):
    from reasondiff.config import HardwareConfig
    from reasondiff.lm.models import load_model

    model, tok = load_model(str(trained_tiny_pair[0]), HardwareConfig(device="cpu", dtype="float32"))
    generator = HFGenerator(model, tok, batch_size=4)
    prompts = _tiny_prompts(tok, opened=False)
    plain = generator.generate(prompts, 200)
    outcomes = _force(generator, tok, prompts, [200], opened=False)
    for i, g in enumerate(plain):
        assert g.finished  # the tiny base answers directly and ends its turn
        outcome = outcomes[(i, 200)]
        assert outcome.answer_prompt is None and outcome.answer_tokens == 0 and outcome.finished
        assert outcome.completion == tok.decode(g.token_ids[:-1], skip_special_tokens=False)


def test_until_thinking_must_be_one_token(tiny_tokenizer):
    from reasondiff.core.errors import UserError

    generator = ReplayGenerator([], [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")])
    with pytest.raises(UserError, match="bench.forcing.until_thinking"):
        forcing.force(generator, tiny_tokenizer, [[1, 2]], [4], opened=True,
                      layout=layout_named("s1", until_thinking="answer now please"), n_ignore=0, ignore_str="Wait",
                      max_tokens_answer=4)
