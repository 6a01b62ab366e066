"""The bench stage: prefix scoring is exact, sampling is never inherited, resume does not regenerate,
the tables hold the right numbers, and bad input fails with the key to change."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.bench import generation
from reasondiff.bench import run as budget
from reasondiff.bench.generation import Generation, HFGenerator, length_sorted_batches
from reasondiff.bench.prompts import Question, load_questions, select_indices, user_turn
from reasondiff.bench.run import (
    GENERATIONS,
    GenerationLog,
    results_table,
    scaling_slope,
    summary_table,
    sweep_chunk,
)
from reasondiff.config.bench import PromptTemplates
from reasondiff.core.errors import UserError

# --- pure functions -------------------------------------------------------------------------------


def test_scaling_slope_by_hand():
    # x̄ = 200, ȳ = 70/3; Sxy = (-100)(10-70/3) + 0 + (100)(40-70/3) = 3000; Sxx = 20000 -> 0.15
    assert scaling_slope([100, 200, 300], [10, 20, 40]) == pytest.approx(0.15)
    assert scaling_slope([128, 256, 512], [50, 50, 50]) == 0
    assert scaling_slope([64, 128], [30, 10]) == pytest.approx(-20 / 64)
    assert math.isnan(scaling_slope([256], [40]))


def test_results_and_summary_tables_by_hand():
    def row(qid, limit, correct, no_answer, seconds, batch, tokens):
        return {"model": "tuned", "task": "gsm8k", "id": qid, "limit": limit, "correct": correct,
                "no_answer": no_answer, "seconds": seconds, "batch": batch, "tokens": tokens}

    rows = [row("0", 100, False, True, 1.0, "a", 100), row("1", 100, True, False, 2.0, "a", 80),
            row("2", 100, False, False, 0.5, "b", 100), row("3", 100, False, True, 0.7, "b", 100),
            row("0", 200, True, False, 1.5, "a", 150), row("1", 200, True, False, 2.0, "a", 80),
            row("2", 200, False, False, 1.1, "b", 200), row("3", 200, True, False, 1.2, "b", 190)]
    results = results_table(rows)
    assert [(r["limit"], r["accuracy"], r["correct"], r["no_answer"], r["n"]) for r in results] == [
        (100, 25.0, 1, 2, 4), (200, 75.0, 3, 0, 4)]
    # wall time at a limit = per batch, its slowest member; summed over batches
    assert results[0]["seconds"] == pytest.approx(2.0 + 0.7)
    assert results[1]["seconds"] == pytest.approx(2.0 + 1.2)
    assert results[0]["mean_tokens"] == pytest.approx(95.0)
    # Wilson 95% of 1/4 and 3/4, by the formula: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert (results[0]["accuracy_low"], results[0]["accuracy_high"]) == pytest.approx((4.5587, 69.9358), abs=1e-3)
    assert (results[1]["accuracy_low"], results[1]["accuracy_high"]) == pytest.approx((30.0642, 95.4413), abs=1e-3)
    (summary,) = summary_table(rows, results, resamples=200, seed=0)
    assert summary["performance"] == 75.0 and summary["best_limit"] == 200
    assert summary["scaling"] == pytest.approx(50.0 / 100)
    assert summary["token_limits"] == "100-200" and summary["n"] == 4
    assert summary["performance_low"] <= 75.0 <= summary["performance_high"]
    assert summary["paired_with"] == ""  # one model: nothing to pair with


def test_length_sorted_batches_longest_first_and_complete():
    batches = length_sorted_batches([5, 9, 1, 9, 3], batch_size=2)
    assert batches == [[1, 3], [0, 4], [2]]


# --- generation -----------------------------------------------------------------------------------

def _prompts(tokenizer):
    texts = ["Ada has 3 apples and", "The quick red river passes the old lamp and then", "5 plus",
             "Question: is 4 greater than 9? Answer:"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_greedy_prefix_equals_a_run_at_that_limit(tiny_model, tiny_tokenizer):
    generator = HFGenerator(tiny_model, tiny_tokenizer, batch_size=4)
    prompts = _prompts(tiny_tokenizer)
    full = generator.generate(prompts, 24)
    for limit in (1, 7, 16):
        capped = generator.generate(prompts, limit)
        assert [c.token_ids for c in capped] == [f.token_ids[:limit] for f in full]
    for g in full:
        assert len(g.token_times) == len(g.token_ids) == 24
        assert all(b >= a for a, b in zip(g.token_times, g.token_times[1:], strict=False))
        assert g.token_times[0] > 0


def test_left_padded_batches_match_unbatched(tiny_model, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    batched = HFGenerator(tiny_model, tiny_tokenizer, batch_size=4).generate(prompts, 20)
    single = HFGenerator(tiny_model, tiny_tokenizer, batch_size=1).generate(prompts, 20)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]


def test_sampling_settings_are_never_inherited_from_generation_config(tiny_model, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    clean = HFGenerator(tiny_model, tiny_tokenizer, batch_size=4).generate(prompts, 24)
    # what a checkpoint's generation_config.json may carry (Qwen ships sampling + repetition_penalty)
    config = tiny_model.generation_config
    config.do_sample, config.temperature, config.top_k = True, 5.0, 3
    config.repetition_penalty, config.no_repeat_ngram_size = 1.5, 2
    polluted = HFGenerator(tiny_model, tiny_tokenizer, batch_size=4).generate(prompts, 24)
    assert [g.token_ids for g in polluted] == [g.token_ids for g in clean]
    assert tiny_model.generation_config.repetition_penalty == 1.5  # restored after generating


def test_generation_stops_at_end_of_turn_and_trims_padding():
    ids, stopped = generation.trim_at_stop([5, 6, 2, 0, 0], [2, 0])
    assert ids == [5, 6, 2] and stopped
    assert generation.trim_at_stop([5, 6], [2]) == ([5, 6], False)


# --- scoring a generation at each limit (with a scripted generator) -------------------------------

class ScriptedGenerator:
    """Returns fixed continuations (as if greedy) so the scoring logic is checked exactly."""

    def __init__(self, tokenizer, texts, stop_ids):
        self.tokenizer, self.stop_ids, self.chunk_size = tokenizer, stop_ids, 8
        self.scripts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.calls = []

    def generate(self, prompts, max_new_tokens, *, stop_ids=None, min_new_tokens=0):
        self.calls.append((len(prompts), max_new_tokens))
        stop_ids = self.stop_ids if stop_ids is None else stop_ids
        out = []
        for i, _ in enumerate(prompts):
            ids, stopped = generation.trim_at_stop(self.scripts[i % len(self.scripts)][:max_new_tokens], stop_ids)
            out.append(Generation(ids, [0.01 * (k + 1) for k in range(len(ids))], stopped))
        return out


def test_a_cut_off_prefix_is_no_answer_not_an_intermediate_number(tiny_tokenizer):
    cfg = make_config("bench.token_limits=[4,200]", config_name="bench")
    text = "Let me think. 16 - 3 - 4 = 9 and 9 * 2 = 18 so the answer is \\boxed{18}.<|im_end|>"
    stop = [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    generator = ScriptedGenerator(tiny_tokenizer, [text], stop)
    question = Question("gsm8k", "0", "q", "#### 18")
    rows = sweep_chunk(generator, tiny_tokenizer, [question], [[1, 2, 3]], model="tuned", cfg=cfg)
    by_limit = {r["limit"]: r for r in rows}
    assert by_limit[4]["no_answer"] and not by_limit[4]["correct"] and by_limit[4]["answer"] is None
    assert by_limit[200]["correct"] and not by_limit[200]["no_answer"]
    assert by_limit[200]["completion"].endswith("\\boxed{18}.")  # stop token not in the text
    assert generator.calls == [(1, 200)]  # one generation serves both limits


def test_budget_forcing_rows_record_the_thinking_and_the_capped_answer(tiny_tokenizer):
    cfg = make_config("bench.token_limits=[6,400]", "bench.mode=forced", "bench.forcing.max_tokens_answer=5",
                      config_name="bench")
    stop = [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    thinking = "Let me think step by step. 3 + 4 = 7. So the answer is 7.<|im_end|>"
    generator = ScriptedGenerator(tiny_tokenizer, [thinking], stop)
    question = Question("gsm8k", "0", "q", "#### 7")
    rows = {r["limit"]: r for r in sweep_chunk(generator, tiny_tokenizer, [question], [[1, 2]], model="m", cfg=cfg,
                                               opened=True)}
    cut = rows[6]
    assert cut["forced"] and "<|im_start|>answer\nFinal Answer:" in cut["completion"]
    assert cut["thinking_tokens"] == 6 and 1 <= cut["answer_tokens"] <= 5 and cut["tokens"] == 6 + cut["answer_tokens"]
    assert cut["seconds"] > 0.06  # time to the budget plus the forced answer
    assert cut["thinking_opened"] and not cut["finished"]  # the 5-token answer cap cut it
    # ended by itself (at <|im_end|>, the prompt opened the thinking): s1 appends <|im_start|>answer
    assert not rows[400]["forced"] and "So the answer is 7.<|im_start|>answer" in rows[400]["completion"]
    # one thinking generation at the largest budget; the answers of both budgets in one batch
    assert generator.calls == [(1, 400), (2, 5)]


# --- prompts and data -----------------------------------------------------------------------------

def test_boolq_prompt_with_and_without_passage_and_latex_braces_survive():
    templates = PromptTemplates()
    with_passage = user_turn("boolq", {"question": "is 4 greater than 9", "passage": "Four is less.", "answer": False},
                             templates)
    without = user_turn("boolq", {"question": "is 4 greater than 9", "answer": False}, templates)
    assert "Four is less." in with_passage and "is 4 greater than 9?" in with_passage
    assert "{passage}" not in without and "is 4 greater than 9?" in without
    assert "\\boxed{}" in user_turn("math500", {"problem": "Compute $1+1$.", "answer": "2"}, templates)


def test_subset_is_reproducible():
    assert select_indices(100, 10, seed=3) == select_indices(100, 10, seed=3)
    assert select_indices(100, 10, seed=3) != select_indices(100, 10, seed=4)
    assert select_indices(5, None, seed=0) == [0, 1, 2, 3, 4]


def test_local_data_and_a_missing_field_names_row_and_field(tmp_path, shared_data):
    cfg = make_config(f"bench.data.gsm8k.path={shared_data}/gsm8k_test.jsonl", "bench.limit=7", config_name="bench")
    questions = load_questions("gsm8k", cfg.bench)
    assert len(questions) == 7 and all(q.reference.rstrip().split("####")[-1].strip() for q in questions)
    boolq = make_config(f"bench.data.boolq.path={shared_data}/boolq_validation_questions.jsonl", "bench.limit=3",
                        config_name="bench")
    assert all(isinstance(q.reference, bool) and "{passage}" not in q.user_turn
               for q in load_questions("boolq", boolq.bench))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b"}\n')
    cfg = make_config(f"bench.data.gsm8k.path={bad}", config_name="bench")
    with pytest.raises(UserError, match=r"gsm8k.path=.*bad.jsonl: line 2 has no field answer"):
        load_questions("gsm8k", cfg.bench)


def test_vllm_backend_without_the_extra_is_a_user_error(tiny_model_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    cfg = make_config(f"model.path={tiny_model_dir}", "model.build_tiny=false", "bench.backend=vllm",
                      config_name="bench")
    with pytest.raises(UserError, match="vllm extra"):
        budget.make_generator(cfg, budget.resolve_models(cfg)[0])


# --- the stage end to end -------------------------------------------------------------------------

def _bench_config(tmp_path, tiny_world, tiny_model_dir, *extra):
    data = [f"bench.data.{task}.path={tiny_world}/{task}.jsonl" for task in ("gsm8k", "math500", "boolq")]
    return make_config(f"output_root={tmp_path}", f"model.path={tiny_model_dir}", "model.build_tiny=false",
                       "bench.models=[base]", "bench.limit=5", "hardware.bench_batch_size=2", *data, *extra,
                       config_name="bench")


def _rows(directory):
    with open(directory / GENERATIONS) as handle:
        return [json.loads(line) for line in handle]


def _key(row):
    return (row["model"], row["task"], row["id"], row["limit"])


def test_prefix_scoring_equals_a_separate_run_at_each_limit(tmp_path, tiny_world, trained_tiny_pair):
    """The paper's claim made exact, on the trained tiny models (base answers at once, tuned thinks
    first; both stop at lengths of their own): one generation at the largest limit, prefixes
    scored, equals separate greedy runs at each limit."""
    base, tuned = trained_tiny_pair
    pair = [f"tuned_model={tuned}", "bench.models=[base,tuned]"]
    swept = run_stage(_bench_config(tmp_path / "sweep", tiny_world, base, *pair, "bench.token_limits=[6,24,128,256]"))
    sweep_rows = {_key(r): r for r in _rows(swept)}
    assert len(sweep_rows) == 2 * 3 * 5 * 4
    compared = []
    for limit in (6, 24, 128):
        alone = run_stage(_bench_config(tmp_path / f"alone{limit}", tiny_world, base, *pair,
                                        f"bench.token_limits=[{limit}]"))
        for row in _rows(alone):
            swept_row = sweep_rows[_key(row)]
            for field in ("completion", "finished", "answer", "correct", "no_answer", "tokens"):
                assert swept_row[field] == row[field], (field, _key(row))
            compared.append(row)
    # the comparison covered what can go wrong: finished and cut-off rows, and extracted answers
    assert {r["finished"] for r in compared} == {True, False}
    assert {r["model"] for r in compared if r["answer"] is not None} == {"base", "tuned"}
    assert {r["model"] for r in compared if r["finished"]} == {"base", "tuned"}
    # time at a limit grows with the limit (per-token clock, not one number per generation)
    for (model, task, qid, limit), row in sweep_rows.items():
        if limit == 256 and row["tokens"] > 6:
            assert sweep_rows[(model, task, qid, 6)]["seconds"] < row["seconds"]


def test_outputs_tables_and_figures(tmp_path, tiny_world, tiny_model_dir, tiny_tuned_model_dir):
    cfg = _bench_config(tmp_path, tiny_world, tiny_model_dir, f"tuned_model={tiny_tuned_model_dir}",
                        "bench.models=[base,tuned]", "bench.token_limits=[4,8]", "bench.limit=3")
    out = run_stage(cfg)
    for name in ("results.csv", "summary.csv", "summary.md", "accuracy_vs_limit.png", "time_vs_limit.png",
                 "manifest.json", "COMPLETED"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_limit.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "results.csv") as handle:
        results = list(csv.DictReader(handle))
    assert {(r["model"], r["task"], r["limit"]) for r in results} == {
        (m, t, str(lim)) for m in ("base", "tuned") for t in ("gsm8k", "math500", "boolq") for lim in (4, 8)}
    assert all(r["n"] == "3" and 0 <= float(r["accuracy"]) <= 100 and float(r["seconds"]) > 0 for r in results)
    rows = _rows(out)
    assert set(rows[0]) >= {"model", "task", "id", "limit", "completion", "answer", "correct", "no_answer"}
    for r in results:  # the no_answer column counts what the rows say, apart from wrong answers
        members = [x for x in rows if (x["model"], x["task"], str(x["limit"])) == (r["model"], r["task"], r["limit"])]
        assert int(r["no_answer"]) == sum(x["no_answer"] for x in members)
        assert int(r["correct"]) == sum(x["correct"] for x in members)
    assert all(float(r["accuracy_low"]) <= float(r["accuracy"]) <= float(r["accuracy_high"]) for r in results)
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 6 and {r["token_limits"] for r in summary} == {"4-8"}
    for r in summary:
        assert float(r["performance_low"]) <= float(r["performance"]) <= float(r["performance_high"])
        if r["model"] == "tuned":  # paired with base on the same questions
            assert r["paired_with"] == "base" and r["n_paired"] == "3" and 0 <= float(r["mcnemar_p"]) <= 1
            assert r["scaling_diff_low"] != ""
        else:
            assert r["paired_with"] == ""
    report = (out / "summary.md").read_text()
    assert "## Paired comparisons" in report and report.count("tuned vs base") == 3


class _Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_sweep_resumes_without_regenerating(tmp_path, tiny_world, tiny_model_dir, monkeypatch):
    cfg = _bench_config(tmp_path, tiny_world, tiny_model_dir, "bench.token_limits=[4,9]")
    reference = _rows(run_stage(_bench_config(tmp_path / "ref", tiny_world, tiny_model_dir, "bench.token_limits=[4,9]")))

    real = HFGenerator.generate_batch
    generated: list[int] = []

    def counting(self, prompts, max_new_tokens, **kwargs):
        if len(generated) >= 4:  # killed after 4 of the 8 batches (3 tasks x 5 questions, batch 2)
            raise _Interrupt("simulated kill")
        generated.append(len(prompts))
        return real(self, prompts, max_new_tokens, **kwargs)

    monkeypatch.setattr(HFGenerator, "generate_batch", counting)
    with pytest.raises(_Interrupt):
        run_stage(cfg)
    out = cfg.stage_dir("bench")
    partial = _rows(out)
    assert len(partial) == sum(generated) * 2 and not (out / "COMPLETED").exists()
    # a torn last line (killed mid-append) is dropped and its batch redone
    with open(out / GENERATIONS, "a") as handle:
        handle.write('{"model": "base", "task": "gs')

    generated.clear()
    monkeypatch.setattr(HFGenerator, "generate_batch",
                        lambda self, prompts, n, **kw: (generated.append(len(prompts)), real(self, prompts, n, **kw))[1])
    run_stage(cfg)
    assert sum(generated) == 15 - len(partial) // 2  # only the questions not yet in generations.jsonl
    final = _rows(out)
    assert sorted(map(_key, final)) == sorted(map(_key, reference))  # each sample exactly once
    by_key = {_key(r): r["completion"] for r in reference}
    assert all(by_key[_key(r)] == r["completion"] for r in final)
    fingerprints = {("base", task): budget.sweep_fingerprint(cfg, budget.resolve_models(cfg)[0], task)
                    for task in ("gsm8k", "math500", "boolq")}
    assert GenerationLog(out / GENERATIONS).finished_questions(fingerprints=fingerprints, limits=[4, 9]) == {
        ("base", r["task"], r["id"]) for r in reference}
    # a changed prompt must not reuse those rows: everything of that task is generated again
    changed = _bench_config(tmp_path, tiny_world, tiny_model_dir, "bench.token_limits=[4,9]",
                            "bench.prompts.gsm8k='Q: {question} Reply with #### and the number.'", "overwrite=false")
    (out / "COMPLETED").unlink()
    generated.clear()
    run_stage(changed)
    assert sum(generated) == 5  # the 5 gsm8k questions only
    with open(out / "results.csv") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == 3 * 2


@pytest.mark.slow
def test_real_qwen_stage_on_gsm8k(tmp_path, shared_data):
    """The stage on the offline Qwen2.5-0.5B (real tokenizer + chat template): stops at <|im_end|>,
    prefix scoring equals a separate run, and the tables come out."""
    import os

    path = os.environ.get("REASONDIFF_QWEN", "/work/qwen05b")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.skip(f"needs the offline Qwen model at {path} (REASONDIFF_QWEN)")
    common = [f"model.path={path}", "model.build_tiny=false", "bench.models=[base]", "bench.tasks=[gsm8k]",
              f"bench.data.gsm8k.path={shared_data}/gsm8k_test.jsonl", "bench.limit=2", "hardware.bench_batch_size=2"]
    swept = run_stage(make_config(f"output_root={tmp_path}/a", *common, "bench.token_limits=[16,48]", config_name="bench"))
    alone = run_stage(make_config(f"output_root={tmp_path}/b", *common, "bench.token_limits=[16]", config_name="bench"))
    swept_rows = {_key(r): r for r in _rows(swept)}
    for row in _rows(alone):
        assert swept_rows[_key(row)]["completion"] == row["completion"]
    assert all("<|im_end|>" not in r["completion"] for r in swept_rows.values())
    assert (swept / "summary.csv").is_file()


def test_plain_prompts_and_thinking_opened_only_for_thinking_models(tiny_tokenizer):
    question = Question("gsm8k", "0", "What is 2 + 2?", "#### 4", question="What is 2 + 2?")

    def prompts(*overrides):
        cfg = make_config("bench.models=[base,tuned]", *overrides, config_name="bench")
        base, tuned = budget.resolve_models(cfg)
        return [tiny_tokenizer.decode(budget.question_prompt(tiny_tokenizer, question, cfg, spec)) for spec in (base, tuned)]

    base, tuned = prompts()  # prefix mode: nothing opened (our SFT teaches the model to open it)
    assert base == tuned and base.endswith("<|im_start|>assistant\n")
    base, tuned = prompts("bench.mode=forced")  # s1 opens the thinking of its own model only
    assert tuned == base + "<|im_start|>think" and not base.endswith("think")
    base, tuned = prompts("bench.start_thinking=true", "bench.plain_prompt_models=[base]")
    assert base == "What is 2 + 2?" and tuned.endswith("<|im_start|>assistant\n<|im_start|>think")
    with pytest.raises(Exception, match=r"bench.plain_prompt_models names \['other'\]"):
        make_config("bench.models=[base]", "bench.plain_prompt_models=[other]", config_name="bench")


def test_a_model_without_chat_template_points_at_plain_prompts(tiny_tokenizer):
    from reasondiff.bench.prompts import chat_prompt

    saved, tiny_tokenizer.chat_template = tiny_tokenizer.chat_template, None
    try:
        with pytest.raises(UserError, match="bench.plain_prompt_models"):
            chat_prompt(tiny_tokenizer, "hi", system_prompt=None)
        assert chat_prompt(tiny_tokenizer, "hi", system_prompt=None, plain=True) == "hi"
    finally:
        tiny_tokenizer.chat_template = saved
