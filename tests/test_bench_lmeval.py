"""lm-evaluation-harness's protocols (bench.protocol=lm_eval): gsm8k's prompt, shots, stop strings,
strict-match / flexible-extract and exact match; boolq's log-likelihood; the stage end to end."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.bench import lmeval


@pytest.mark.parametrize("completion, reference, strict, flexible", [
    (" 12 + 6 = 18.\n#### 18", "So... #### 18", True, True),
    (" Natalia sold 48 + 24 = 72 clips.", "#### 72", False, True),                 # no ####: strict invalid
    (" The cost is $1,000.\n#### 1,000", "#### 1000", True, True),               # "," and "$" ignored
    (" #### 18.00", "#### 18", False, False),                                     # 18.00 != 18: no numeric compare
    (" #### 18.", "#### 18", True, True),                                         # one trailing "." removed
    (" 5 apples.\n#### 5\n\nQuestion: Ada has 3", "#### 5", True, True),          # cut at "Question:"
    (" #### 7 then 9", "#### 7", True, False),                                    # flexible takes the last number
])
def test_gsm8k_strict_and_flexible(completion, reference, strict, flexible):
    scores = lmeval.gsm8k_scores(completion, reference)
    assert (scores["strict_match"], scores["flexible_extract"]) == (strict, flexible)


def test_regex_filter_and_stop_strings_as_lm_eval():
    assert lmeval.regex_filter("a #### 3 and #### 4", lmeval.STRICT_MATCH, 0) == "3"
    assert lmeval.regex_filter("no number here", lmeval.STRICT_MATCH, 0) == lmeval.INVALID
    # flexible: findall gives (group1, group2) tuples; the first non-empty group of the last match
    assert lmeval.regex_filter("x 7 y $1,000.", lmeval.FLEXIBLE_EXTRACT, -1) == "$1,000."
    assert lmeval.regex_filter("only 7", lmeval.FLEXIBLE_EXTRACT, -1) == "7"
    assert lmeval.cut_at_stop("18\n\nQuestion: next<|im_end|>") == ("18\n\n", True)
    assert lmeval.cut_at_stop("18") == ("18", False)
    assert lmeval.exact_match("$1,000.", "The total.\n#### 1000")


def test_fewshot_prompt_and_draws_follow_lm_eval():
    shots = [{"question": "Q1?", "answer": "A1\n#### 1"}, {"question": "Q2?", "answer": "A2\n#### 2"}]
    assert lmeval.gsm8k_fewshot_prompt("Q?", shots) == (
        "Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: Q2?\nAnswer: A2\n#### 2\n\nQuestion: Q?\nAnswer:")
    # lm-eval's ContextSampler: one Random(1234), rnd.sample(train_docs, 5) per test doc in order
    docs = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(50)]
    rnd = random.Random(1234)
    reference = [[d["question"] for d in rnd.sample(docs, 5)] for _ in range(12)]
    draws = lmeval.fewshot_draws(len(docs), [3, 7, 11], 5, 1234)
    assert {doc: [docs[j]["question"] for j in idx] for doc, idx in draws.items()} == {
        3: reference[3], 7: reference[7], 11: reference[11]}


def test_boolq_loglikelihood_is_the_summed_continuation_logprob(tiny_model, tiny_tokenizer):
    context = lmeval.boolq_context("is 4 greater than 9", "Four is less than nine.")
    assert context == "Four is less than nine.\nQuestion: is 4 greater than 9?\nAnswer:"
    ctx, cont = lmeval.encode_pair(tiny_tokenizer, context, " yes")
    assert ctx + cont == tiny_tokenizer(context + " yes", add_special_tokens=False)["input_ids"]
    # a trailing space of the context moves onto the continuation (TemplateLM._encode_pair)
    assert lmeval.encode_pair(tiny_tokenizer, context + " ", "yes") == (ctx, cont)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), dim=-1)
    by_hand = sum(float(logprobs[len(ctx) - 1 + k, token]) for k, token in enumerate(cont))
    assert lmeval.loglikelihood(tiny_model, ctx, cont) == pytest.approx(by_hand, abs=1e-4)
    choice, scores = lmeval.boolq_choice(tiny_model, tiny_tokenizer, context)
    assert choice == ("yes" if scores[1] > scores[0] else "no")


def test_stage_with_the_lm_eval_protocol(tmp_path, tiny_world, tiny_model_dir):
    data = [f"bench.data.{task}.path={tiny_world}/{task}.jsonl" for task in ("gsm8k", "boolq")]
    cfg = make_config(f"output_root={tmp_path}", f"model.path={tiny_model_dir}", "model.build_tiny=false",
                      "bench.models=[base]", "bench.tasks=[gsm8k,boolq]", "bench.limit=4", "bench.protocol=lm_eval",
                      f"bench.fewshot_data.path={tiny_world}/gsm8k.jsonl", "bench.num_fewshot=2",
                      "bench.token_limits=[4,12]", "hardware.bench_batch_size=2", *data, config_name="bench")
    out = run_stage(cfg)
    rows = [json.loads(line) for line in open(out / "generations.jsonl")]
    boolq = [r for r in rows if r["task"] == "boolq"]
    by_question = {}
    for r in boolq:  # log-likelihood: no generation, the same verdict at every limit
        by_question.setdefault(r["id"], set()).add((r["answer"], r["correct"]))
        assert r["tokens"] == 0 and set(r["loglikelihoods"]) == {"yes", "no"}
    assert all(len(v) == 1 for v in by_question.values()) and len(by_question) == 4
    gsm8k = [r for r in rows if r["task"] == "gsm8k"]
    assert all("flexible_extract" in r and r["protocol"] == "lm_eval" for r in gsm8k)
    with open(out / "results.csv") as handle:
        results = list(csv.DictReader(handle))
    assert all(r["flexible_extract"] != "" for r in results if r["task"] == "gsm8k")
    boolq_acc = {r["accuracy"] for r in results if r["task"] == "boolq"}
    assert len(boolq_acc) == 1
    assert "same at every limit by construction" in (out / "summary.md").read_text()


def test_lm_eval_protocol_refuses_budget_forcing():
    with pytest.raises(Exception, match="lm-evaluation-harness's way, which has no budget forcing"):
        make_config("bench.protocol=lm_eval", "bench.mode=forced", config_name="bench")
