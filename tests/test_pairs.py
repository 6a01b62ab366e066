"""Released model pairs and reasoning layouts (issue 29): each layout's bench prompt, forcing
strings, answer region and reasoning corpus at the token level, on the tiny tokenizer with each
layout's chat template (s1's ChatML, R1's template that opens <think> in the prompt, a Qwen3-style
one that does not, and a plain chat model); tokenizer compatibility; the pair configs."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys

import pytest
from conftest import REPO, app_env, make_config
from test_bench_forcing import ReplayGenerator

from reasondiff.bench import forcing
from reasondiff.bench.prompts import chat_prompt, prompt_ids
from reasondiff.config import ReasoningFormat
from reasondiff.core.errors import UserError
from reasondiff.lm.layouts import layout_for, layout_named

PAIRS = sorted(p.stem for p in (REPO / "conf" / "pair").glob("*.yaml"))

# R1-Distill's template, reduced to what matters here: it drops the thinking from rendered assistant
# messages (content.split('</think>')[-1]) and its generation prompt opens "<think>\n"
R1_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")


def _enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _think_tokenizer(tiny_tokenizer, template=None):
    """The tiny tokenizer with <think> and </think> as added special tokens (as R1's and Qwen3's)."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens(["<think>", "</think>"], special_tokens=True)
    if template:
        tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def r1_tokenizer(tiny_tokenizer):
    return _think_tokenizer(tiny_tokenizer, R1_TEMPLATE)


@pytest.fixture(scope="module")
def qwen3_tokenizer(tiny_tokenizer):
    return _think_tokenizer(tiny_tokenizer)  # ChatML: the model opens <think> itself


def _fmt(layout: str) -> ReasoningFormat:
    return ReasoningFormat(layout=layout)


# --- the layouts' strings -------------------------------------------------------------------------

def test_each_layout_defines_its_strings():
    s1, think, none = layout_named("s1"), layout_named("think"), layout_named("none")
    assert (s1.thinking_start(), s1.answer_start()) == ("<|im_start|>think\n", "\n<|im_start|>answer\nAnswer: ")
    assert (s1.stop, s1.natural_close(), s1.budget_close()) == (
        "<|im_start|>", "<|im_start|>answer", "<|im_start|>answer\nFinal Answer:")
    assert s1.opening("<|im_start|>assistant\n") == "<|im_start|>think"  # s1's eval: no newline
    assert (think.thinking_start(), think.answer_start()) == ("<think>\n", "\n</think>\n\n")
    assert (think.stop, think.natural_close(), think.budget_close()) == ("</think>", "</think>", "</think>\n\nFinal Answer:")
    assert think.opening("<|im_start|>assistant\n") == "<think>\n"
    assert think.opening("<|im_start|>assistant\n<think>\n") == ""  # the template opened it
    assert (none.thinks, none.opening("x"), none.assistant_content("ignored", " 42 ")) == (False, "", "42")
    assert (none.think_delimiter, none.answer_delimiter) == (None, None)
    assert layout_for(ReasoningFormat(layout="think", base_layout="none"), "base").name == "none"
    with pytest.raises(ValueError, match="format.layout"):
        ReasoningFormat(layout="r1")


# --- bench prompts --------------------------------------------------------------------------------

def _template_ids(tokenizer):
    return _enc(tokenizer, tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}],
                                                         tokenize=False, add_generation_prompt=True))


def test_bench_prompts_open_the_thinking_as_each_layout_defines(tiny_tokenizer, r1_tokenizer, qwen3_tokenizer):
    def prompt(tok, layout):
        return prompt_ids(tok, chat_prompt(tok, "What is 3 + 4?", system_prompt=None, start_thinking=True,
                                           layout=layout_named(layout)))

    base = _template_ids(tiny_tokenizer)
    s1 = prompt(tiny_tokenizer, "s1")
    assert s1[:len(base)] == base and s1[len(base):] == _enc(tiny_tokenizer, "<|im_start|>think")
    assert s1[len(base)] == tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")

    think_id, newline = qwen3_tokenizer.convert_tokens_to_ids("<think>"), _enc(qwen3_tokenizer, "\n")
    qwen3 = prompt(qwen3_tokenizer, "think")
    assert qwen3 == _template_ids(qwen3_tokenizer) + [think_id] + newline

    r1 = prompt(r1_tokenizer, "think")  # the template opened it: nothing added, <think> once
    assert r1 == _template_ids(r1_tokenizer) and r1[-1 - len(newline):] == [think_id] + newline
    assert r1.count(think_id) == 1

    assert prompt(tiny_tokenizer, "none") == base


def test_bench_knows_a_template_opened_the_thinking(r1_tokenizer, qwen3_tokenizer):
    from reasondiff.bench.prompts import Question
    from reasondiff.bench.run import ModelSpec, model_layout, prompt_opened

    cfg = make_config("format.layout=think", config_name="bench")  # prefix mode: bench opens nothing itself
    questions = [Question(task="gsm8k", id="0", user_turn="What is 3 + 4?", reference="7")]
    tuned = ModelSpec("tuned", "unused", "tuned_model", "tuned", "tuned")
    base = ModelSpec("base", "unused", "model.path", "base", "base")
    assert model_layout(cfg, tuned).name == "think" and model_layout(cfg, base).name == "none"
    assert prompt_opened(r1_tokenizer, questions, cfg, tuned, "gsm8k")
    assert not prompt_opened(qwen3_tokenizer, questions, cfg, tuned, "gsm8k")
    assert not prompt_opened(r1_tokenizer, questions, cfg, base, "gsm8k")


# --- budget forcing -------------------------------------------------------------------------------

def test_forcing_in_the_think_layout_stops_at_think_close_and_closes_with_it(r1_tokenizer):
    tok = r1_tokenizer
    close, eos = tok.convert_tokens_to_ids("</think>"), tok.convert_tokens_to_ids("<|im_end|>")
    prompt = _template_ids(tok)
    thinking = _enc(tok, "3 + 4 = 7, so 7.\n")
    answer = _enc(tok, "The answer is 7.")
    # natural stop within the budget: </think> dropped, </think> appended, the answer continues it
    generator = ReplayGenerator([thinking + [close] + [1, 2], answer + [eos]], [eos])
    (outcome,) = forcing.force(generator, tok, [prompt], [64], opened=True, layout=layout_named("think"),
                               n_ignore=0, ignore_str="Wait", max_tokens_answer=16).values()
    assert close in generator.calls[0]["stop_ids"] and eos in generator.calls[0]["stop_ids"]
    assert outcome.answer_prompt == prompt + thinking + [close]
    assert not outcome.budget_hit and outcome.thinking_tokens == len(thinking)

    # at the budget: "\n" (the thinking ends without one) + </think> + "\n\n" + "Final Answer:"
    long_thinking = _enc(tok, "3 + 4 is 7 and 7 is what 3 and 4 make together")
    budget = len(long_thinking) - 2
    generator = ReplayGenerator([long_thinking + [close], answer + [eos]], [eos])
    (outcome,) = forcing.force(generator, tok, [prompt], [budget], opened=True, layout=layout_named("think"),
                               n_ignore=0, ignore_str="Wait", max_tokens_answer=16).values()
    tail = _enc(tok, "\n") + [close] + _enc(tok, "\n\n") + _enc(tok, "Final Answer:")
    assert _enc(tok, "</think>\n\nFinal Answer:") == tail[1:]  # </think> is one token in the closing
    assert outcome.answer_prompt == prompt + long_thinking[:budget] + tail and outcome.budget_hit

    # "Wait": the first </think> is dropped and "Wait" appended in its place, thinking resumes
    generator = ReplayGenerator([thinking + [close], _enc(tok, " yes.") + [close], answer + [eos]], [eos])
    (outcome,) = forcing.force(generator, tok, [prompt], [64], opened=True, layout=layout_named("think"),
                               n_ignore=1, ignore_str="Wait", max_tokens_answer=16).values()
    assert generator.calls[1]["prompts"][0] == prompt + thinking + _enc(tok, "Wait")
    assert outcome.answer_prompt == prompt + thinking + _enc(tok, "Wait") + _enc(tok, " yes.") + [close]
    assert outcome.waits == 1


def test_forcing_refuses_a_layout_whose_stop_is_not_one_token(tiny_tokenizer):
    generator = ReplayGenerator([], [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")])
    with pytest.raises(UserError, match="think layout's stop='</think>' is [0-9]+ tokens"):
        forcing.force(generator, tiny_tokenizer, [[1, 2]], [4], opened=True, layout=layout_named("think"),
                      n_ignore=0, ignore_str="Wait", max_tokens_answer=4)


def test_forced_rows_are_graded_in_the_models_layout(r1_tokenizer):
    from reasondiff.bench.prompts import Question
    from reasondiff.bench.run import sweep_chunk

    tok = r1_tokenizer
    close, eos = tok.convert_tokens_to_ids("</think>"), tok.convert_tokens_to_ids("<|im_end|>")
    cfg = make_config("format.layout=think", "bench.mode=forced", "bench.token_limits=[64]", config_name="bench")
    question = Question(task="math500", id="0", user_turn="x", reference="\\frac{7}{2}")
    # the thinking holds a decoy box; the answer states the value in prose with inline math
    generator = ReplayGenerator([_enc(tok, "maybe \\boxed{3}?\n") + [close],
                                 _enc(tok, "\n\nAnswer: the sum is $\\frac{7}{2}$.") + [eos]], [eos])
    (row,) = sweep_chunk(generator, tok, [question], [_template_ids(tok)], model="tuned", cfg=cfg, opened=True,
                         layout=layout_named("think"))
    assert row["completion"].startswith("maybe \\boxed{3}?\n</think>")
    assert (row["answer"], row["answer_source"], row["correct"]) == ("$\\frac{7}{2}$", "marker", True)


# --- the reasoning corpus (scan and analyze) ------------------------------------------------------

QUESTION, THINKING, ATTEMPT = "What is 3 + 4?", "3 + 4 = 7.", "Answer: the sum is $7$."


@pytest.mark.parametrize("layout", ["s1", "think_r1", "think_qwen3", "none"])
def test_reasoning_corpus_is_the_layouts_conversation(layout, tiny_tokenizer, r1_tokenizer, qwen3_tokenizer):
    from reasondiff.finetune import tokenize_example
    from reasondiff.lm.sft_example import conversation_example

    tok = {"s1": tiny_tokenizer, "think_r1": r1_tokenizer, "think_qwen3": qwen3_tokenizer, "none": tiny_tokenizer}[layout]
    fmt = _fmt(layout.split("_")[0])
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    turn = {"s1": f"<|im_start|>think\n{THINKING}\n<|im_start|>answer\nAnswer: {ATTEMPT}",
            "think_r1": f"{THINKING}\n</think>\n\n{ATTEMPT}",  # "<think>\n" is the prompt's
            "think_qwen3": f"<think>\n{THINKING}\n</think>\n\n{ATTEMPT}",
            "none": ATTEMPT}[layout]
    expected = _enc(tok, prompt + turn + "<|im_end|>")

    example = tokenize_example(tok, QUESTION, THINKING, ATTEMPT, fmt)  # scan's reasoning text
    assert example.input_ids == expected
    assert conversation_example(tok, QUESTION, THINKING, ATTEMPT, fmt, max_length=10_000).input_ids == expected  # analyze's
    assert example.prompt_tokens == len(_enc(tok, prompt))
    answer_token = tok.convert_ids_to_tokens(example.input_ids[example.answer_start])
    if layout.startswith("think"):
        think_id, close = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
        assert expected.count(think_id) == 1 and expected.count(close) == 1
        assert answer_token == "</think>"
    elif layout == "s1":
        assert answer_token == "<|im_start|>" and tok.decode(expected[example.answer_start:example.answer_start + 2]) \
            == "<|im_start|>answer"
    else:
        assert example.answer_start == example.prompt_tokens and example.thinking_span[0] == example.thinking_span[1]


# --- tokenizer compatibility ----------------------------------------------------------------------

def test_added_tokens_and_templates_differ_with_a_notice(tiny_model, tiny_tokenizer, r1_tokenizer, caplog):
    from reasondiff.lm.models import check_compatible, tokenizer_differences

    differences = tokenizer_differences(tiny_tokenizer, r1_tokenizer)
    assert differences.compatible and differences.chat_template
    assert any("'<think>'" in d for d in differences.added) and any("'</think>'" in d for d in differences.added)
    with caplog.at_level(logging.WARNING, logger="reasondiff.lm.models"):
        check_compatible(tiny_model, tiny_model, tiny_tokenizer, r1_tokenizer)
    (notice,) = [r.getMessage() for r in caplog.records if "tokenizers" in r.getMessage()]
    assert "\n" not in notice and "<think>" in notice and "chat templates differ" in notice
    assert tokenizer_differences(tiny_tokenizer, copy.deepcopy(tiny_tokenizer)).notice() == ""


def test_a_renamed_regular_token_is_refused(tiny_model, tiny_tokenizer):
    from reasondiff.lm.models import check_compatible
    from reasondiff.tiny import make_tokenizer

    other = make_tokenizer(["completely different text " * 50], vocab_size=len(tiny_tokenizer))
    with pytest.raises(UserError, match="vocabularies differ in tokens text uses") as err:
        check_compatible(tiny_model, tiny_model, tiny_tokenizer, other)
    assert "\n" not in str(err.value)


# --- the pair configs -----------------------------------------------------------------------------

def test_there_are_released_pairs():
    assert {"r1_distill_qwen_1p5b", "s1_1_qwen_7b"} <= set(PAIRS)


@pytest.mark.parametrize("pair", PAIRS)
def test_pair_config_composes_without_a_finetune(pair):
    from reasondiff.lm.models import looks_local

    cfg = make_config(f"+pair={pair}", config_name="pipeline")
    assert cfg.exp_name == pair and not cfg.model.build_tiny
    for path in (cfg.model.path, cfg.tuned_model):
        assert not looks_local(path), path  # hub ids; a local copy is one override away
    assert str(cfg.stage_dir("finetune")) not in cfg.tuned_model  # nothing to fine-tune
    assert cfg.format.layout in ("s1", "think") and cfg.format.base_layout == "none"
    assert (REPO / "conf" / "hardware" / f"{cfg.hardware.name}.yaml").is_file()
    readme, docs = (REPO / "README.md").read_text(), (REPO / "docs" / "pairs.md").read_text()
    assert f"+pair={pair}" in readme and f"`{pair}`" in docs and cfg.tuned_model in docs


def test_pipeline_cfg_job_resolves_every_pair_offline():
    for pair in PAIRS:
        out = subprocess.run([sys.executable, "-m", "reasondiff.pipeline", f"+pair={pair}", "--cfg", "job"], cwd=REPO,
                             env=app_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "tuned_model: " in out.stdout and "layout: " in out.stdout


def test_preflight_names_the_override_for_a_missing_hub_model(monkeypatch):
    from reasondiff.app import preflight

    cfg = make_config("+pair=r1_distill_qwen_1p5b", config_name="bench")
    monkeypatch.setattr(preflight, "_hub_file", lambda *a, **k: None)  # nothing cached
    monkeypatch.setattr(preflight, "_hub_up", lambda: False)  # and no network
    lines = preflight.problems([(cfg, "bench")], disk=False)
    (tuned,) = [line for line in lines if line.startswith("tuned_model=")]
    assert "tuned_model=/path/to/DeepSeek-R1-Distill-Qwen-1.5B" in tuned and "\n" not in tuned
    assert any(line.startswith("model.path=Qwen/Qwen2.5-Math-1.5B") and "model.path=/path/to/" in line for line in lines)


# --- a bench run on a pair of tiny models in different layouts and templates ----------------------

@pytest.fixture(scope="module")
def tiny_r1_model_dir(tmp_path_factory, r1_tokenizer):
    """A randomly initialised tiny model whose tokenizer has <think> / </think> and R1's template."""
    from reasondiff.tiny import make_model

    path = tmp_path_factory.mktemp("tiny_r1_model")
    make_model(r1_tokenizer, seed=1).save_pretrained(path)
    r1_tokenizer.save_pretrained(path)
    return path


def test_forced_bench_prompts_each_model_in_its_own_layout(tmp_path, tiny_world, tiny_model_dir, tiny_r1_model_dir):
    from reasondiff.app.stage import run_stage
    from reasondiff.bench.run import GENERATIONS

    cfg = make_config(f"output_root={tmp_path}", f"model.path={tiny_model_dir}", "model.build_tiny=false",
                      f"tuned_model={tiny_r1_model_dir}", "format.layout=think", "bench.mode=forced",
                      "bench.models=[base,tuned]", "bench.tasks=[math500]", "bench.limit=2",
                      "bench.token_limits=[3,6]", "bench.forcing.max_tokens_answer=4", "hardware.bench_batch_size=2",
                      f"bench.data.math500.path={tiny_world}/math500.jsonl", config_name="bench")
    out = run_stage(cfg)
    rows = [json.loads(line) for line in (out / GENERATIONS).read_text().splitlines()]
    tuned = [r for r in rows if r["model"] == "tuned"]
    base = [r for r in rows if r["model"] == "base"]
    assert len(tuned) == len(base) == 4
    # the tuned model: R1's template opened <think>; forced with </think> and its budget closing
    assert all(r["thinking_opened"] for r in tuned)
    for row in tuned:
        closing = "</think>\n\nFinal Answer:" if row["forced"] else "</think>"
        assert closing in row["completion"] and row["answer_source"] != "unfinished"
        assert row["thinking_tokens"] <= row["limit"]
    # the base (ChatML, layout none, no </think> token): one plain generation per limit, nothing inserted
    assert not any(r["thinking_opened"] or r["forced"] or "</think>" in r["completion"] for r in base)
