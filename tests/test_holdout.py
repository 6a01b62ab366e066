"""Held-out reasoning text (issue 26.1): the fine-tune's split, the rows scan / analyze read, the
refusal of trained rows, on-policy text from the bench's generations, harvest's reasoning mix."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import make_config

from reasondiff.app import preflight
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.lm.holdout import HoldoutSplit, question_key, split_rows

FIELDS = ("question", "deepseek_thinking_trajectory", "deepseek_attempt")


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_split_is_seeded_disjoint_and_keyed_by_content(tiny_world):
    rows = rows_of(tiny_world / "s1k.jsonl")
    split = split_rows(rows, dataset="d", fields=FIELDS, fraction=0.25, n_rows=None, seed=3)
    assert split == split_rows(rows, dataset="d", fields=FIELDS, fraction=0.25, n_rows=None, seed=3)
    assert len(split.heldout_questions) == round(0.25 * len({question_key(r["question"]) for r in rows}))
    assert not split.heldout_questions & split.trained_questions
    assert sorted(split.heldout + split.trained) == list(range(len(rows)))
    # the same rows in another order hold out the same questions (the rule reads content, not order)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    again = split_rows(shuffled, dataset="d", fields=FIELDS, fraction=0.25, n_rows=None, seed=3)
    assert again.heldout_questions == split.heldout_questions
    # another seed, another split; n_rows is exact
    assert split_rows(rows, dataset="d", fields=FIELDS, fraction=0.25, n_rows=None, seed=4).heldout_questions \
        != split.heldout_questions
    assert len(split_rows(rows, dataset="d", fields=FIELDS, fraction=0.5, n_rows=7, seed=3).heldout) == 7


def test_a_question_asked_twice_falls_on_one_side():
    rows = [{"question": f"q{i}", "deepseek_thinking_trajectory": "t", "deepseek_attempt": "a"} for i in range(20)]
    rows.append({"question": "  q5 ", "deepseek_thinking_trajectory": "other trace", "deepseek_attempt": "a"})
    for seed in range(10):
        split = split_rows(rows, dataset="d", fields=FIELDS, fraction=0.3, n_rows=None, seed=seed)
        sides = {index in split.heldout for index in (5, 20)}
        assert len(sides) == 1  # never one copy trained and the other held out


def test_finetune_trains_only_on_rows_outside_the_holdout(tiny_world):
    from reasondiff.config import FinetuneConfig, HoldoutConfig
    from reasondiff.finetune.data import load_s1k_rows, load_s1k_split

    cfg = FinetuneConfig(dataset=str(tiny_world / "s1k.jsonl"), holdout=HoldoutConfig(fraction=0.25, seed=1))
    rows, split = load_s1k_split(cfg)
    trained = load_s1k_rows(cfg)
    assert len(trained) == len(split.trained) == len(rows) - len(split.heldout) > 0
    assert not {question_key(r["question"]) for r in trained} & split.heldout_questions
    limited = load_s1k_rows(FinetuneConfig(dataset=cfg.dataset, holdout=cfg.holdout, limit_rows=5))
    assert limited == trained[:5]  # limit_rows takes the first trained rows, never a held-out one
    record = split.to_record()
    assert record["n_heldout"] == len(split.heldout) and len(record["trained"][0]["row_sha256"]) == 16
    assert HoldoutSplit.from_record(record, origin="x").heldout == split.heldout


def fake_finetune(tmp_path: Path, tiny_world: Path, *, record: dict | None) -> Path:
    """A finished finetune stage directory whose manifest records `record` as its split."""
    directory = tmp_path / "t" / "finetune"
    (directory / "model").mkdir(parents=True)
    outputs = {"holdout": record} if record else {"train_rows": 40}
    artifacts.write_json(directory / artifacts.MANIFEST, {"stage": "finetune", "outputs": outputs})
    artifacts.mark_complete(directory)
    return directory


def scan_cfg(tmp_path, tiny_world, *extra, tuned=None):
    return make_config(f"output_root={tmp_path}", "exp_name=t", "hardware=cpu", "model.build_tiny=false",
                       f"tuned_model={tuned or tmp_path / 't' / 'finetune' / 'model'}",
                       f"finetune.dataset={tiny_world / 's1k.jsonl'}", "finetune.holdout.fraction=0.5",
                       f"harvest.corpus={tiny_world / 'corpus.jsonl'}", *extra, config_name="scan")


def test_stages_read_the_held_out_rows_the_finetune_manifest_recorded(tmp_path, tiny_world):
    from reasondiff import finetune

    rows = rows_of(tiny_world / "s1k.jsonl")
    recorded = split_rows(rows, dataset=str(tiny_world / "s1k.jsonl"), fields=FIELDS, fraction=0.2, n_rows=None,
                          seed=9)
    fake_finetune(tmp_path, tiny_world, record=recorded.to_record())
    cfg = scan_cfg(tmp_path, tiny_world)  # the config says 0.5 / seed 0: the manifest wins
    split = finetune.holdout_split(cfg)
    assert split.heldout == recorded.heldout and split.origin.startswith("finetune manifest")
    held = finetune.heldout_rows(cfg)
    assert [r["question"] for r in held] == [rows[i]["question"] for i in recorded.heldout]
    found = finetune.reasoning_rows(cfg, "scan", max_rows=3)
    assert found.label == "held-out rows" and len(found.rows) == 3 and "held-out rows" in found.source

    # the data changed under the recorded split: one clear line, no silent mix-up
    changed = tmp_path / "changed.jsonl"
    rows[recorded.heldout[0]]["deepseek_attempt"] = "something else"
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {**recorded.to_record(), "dataset": str(changed)}
    fake_finetune(tmp_path / "b", tiny_world, record=record)
    with pytest.raises(UserError, match="differs from the row the fine-tune held out"):
        finetune.heldout_rows(scan_cfg(tmp_path / "b", tiny_world))


def test_a_finetune_from_before_the_holdout_has_no_held_out_rows(tmp_path, tiny_world):
    from reasondiff import finetune
    from reasondiff.finetune.run import verify_finished

    directory = fake_finetune(tmp_path, tiny_world, record=None)
    cfg = scan_cfg(tmp_path, tiny_world)
    assert not finetune.holdout_split(cfg).heldout
    with pytest.raises(UserError, match="on_policy"):
        finetune.heldout_rows(cfg)
    problem = preflight.reasoning_text_problem(cfg, "scan")
    assert "no row of" in problem and "\n" not in problem and "on_policy" in problem
    # the finished fine-tune is reopened when the config holds rows out, kept when it does not
    assert "trained on every row" in verify_finished(cfg, directory)
    assert verify_finished(scan_cfg(tmp_path, tiny_world, "finetune.holdout.n_rows=0"), directory) is None


def test_preflight_refuses_a_corpus_of_trained_rows_in_one_line_unless_asked(tmp_path, tiny_world):
    corpus = str(tiny_world / "s1k.jsonl")  # the fine-tune's own dataset: mostly trained rows
    for stage in ("scan", "analyze"):
        cfg = make_config(f"output_root={tmp_path}", "exp_name=t", "model.build_tiny=false",
                          f"tuned_model={tmp_path}/elsewhere", f"finetune.dataset={corpus}",
                          f"{stage}.reasoning_text=file", f"{stage}.reasoning_corpus={corpus}", config_name=stage)
        problem = preflight.reasoning_text_problem(cfg, stage)
        assert problem.startswith(f"{stage}.reasoning_corpus={corpus}: ") and "\n" not in problem
        assert f"{stage}.allow_trained_text=true" in problem and "share a question" in problem
        allowed = make_config(f"output_root={tmp_path}", "exp_name=t", "model.build_tiny=false",
                              f"tuned_model={tmp_path}/elsewhere", f"finetune.dataset={corpus}",
                              f"{stage}.reasoning_text=file", f"{stage}.reasoning_corpus={corpus}",
                              f"{stage}.allow_trained_text=true", config_name=stage)
        assert preflight.reasoning_text_problem(allowed, stage) is None
    # a corpus of held-out rows only passes without the flag
    rows = rows_of(tiny_world / "s1k.jsonl")
    split = split_rows(rows, dataset=corpus, fields=FIELDS, fraction=0.1, n_rows=None, seed=0)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(rows[i]) + "\n" for i in split.heldout))
    cfg = make_config(f"output_root={tmp_path}", "exp_name=t", "model.build_tiny=false",
                      f"tuned_model={tmp_path}/elsewhere", f"finetune.dataset={corpus}", "scan.reasoning_text=file",
                      f"scan.reasoning_corpus={held}", config_name="scan")
    assert preflight.reasoning_text_problem(cfg, "scan") is None


def test_a_corpus_without_its_switch_is_a_config_error():
    with pytest.raises(Exception, match="analyze.reasoning_text=file"):
        make_config("analyze.reasoning_corpus=x.jsonl", config_name="analyze")
    with pytest.raises(Exception, match="scan.reasoning_text"):
        make_config("scan.reasoning_text=trained", config_name="scan")


def test_scan_on_trained_rows_with_the_flag_says_trained_rows(tmp_path, tiny_model_dir, tiny_tuned_model_dir,
                                                             tiny_world):
    import csv

    from reasondiff.app.stage import run_stage

    corpus = str(tiny_world / "s1k.jsonl")
    common = (f"model.path={tiny_model_dir}", "scan.n_general_contexts=2", "scan.n_reasoning_contexts=2",
              "scan.context_length=96", "scan.patch_contexts=1", "scan.component_sites=false",
              "scan.reasoning_text=file", f"scan.reasoning_corpus={corpus}")
    refused = scan_cfg(tmp_path / "a", tiny_world, *common, tuned=tiny_tuned_model_dir)
    with pytest.raises(UserError, match=r"scan.allow_trained_text=true") as err:
        run_stage(refused)
    assert "\n" not in str(err.value)
    out = run_stage(scan_cfg(tmp_path / "b", tiny_world, *common, "scan.allow_trained_text=true",
                             tuned=tiny_tuned_model_dir))
    with open(out / "scan.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["text_source"] for r in rows if r["text"].startswith("reasoning")} == {"trained rows"}
    assert {r["text_source"] for r in rows if r["text"] == "general"} == {"held-out general"}
    texts = artifacts.read_json(out / artifacts.MANIFEST)["outputs"]["texts"]
    assert texts["reasoning"]["label"] == "trained rows" and texts["reasoning"]["tokens"] > 0

    # by default the scan reads the held-out rows, and says so
    default = scan_cfg(tmp_path / "c", tiny_world, *common[:-2], tuned=tiny_tuned_model_dir)
    out = run_stage(default)
    with open(out / "scan.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["text_source"] for r in rows if r["text"].startswith("reasoning")} == {"held-out rows"}
    manifest = artifacts.read_json(out / artifacts.MANIFEST)
    assert manifest["outputs"]["texts"]["reasoning"]["label"] == "held-out rows"
    assert manifest["inputs"]["reasoning_text_kind"] == "heldout_rows"
    from reasondiff.analyze.report import build_report
    report = build_report(out.parent, out.parent / "analyze", title="r")
    assert "Texts scanned — general: held-out general, 2 contexts" in report and "reasoning: held-out rows" in report
    from reasondiff.scan.run import verify_finished
    assert verify_finished(default, out) is None
    # a scan finished before held-out text (no label) is redone
    manifest["outputs"]["texts"]["reasoning"].pop("label")
    artifacts.write_json(out / artifacts.MANIFEST, manifest)
    assert "trained on" in verify_finished(default, out)


BENCH = ("bench.tasks=[gsm8k]", "bench.token_limits=[8,64]", "bench.limit=3")


def test_on_policy_text_is_the_tuned_models_bench_generations_in_the_chat_layout(tmp_path, tiny_world, tiny_tokenizer,
                                                                                tiny_model_dir, tiny_tuned_model_dir):
    from reasondiff import bench
    from reasondiff.app.stage import run_stage
    from reasondiff.bench.prompts import load_questions
    from reasondiff.bench.run import GENERATIONS, question_prompt, resolve_models, sweep_fingerprint

    cfg = make_config(f"output_root={tmp_path}", "exp_name=t", "model.build_tiny=false",
                      f"tuned_model={tiny_tuned_model_dir}", f"bench.data.gsm8k.path={tiny_world / 'gsm8k.jsonl'}",
                      *BENCH, config_name="bench")
    questions = load_questions("gsm8k", cfg.bench)
    spec = [s for s in resolve_models(cfg) if s.label == "tuned"][0]
    fingerprint = sweep_fingerprint(cfg, spec, "gsm8k")
    completions = ["<|im_start|>think\n2+2=4\n<|im_start|>answer\nAnswer: 4", "<|im_start|>think\nstill thinking"]
    rows = []
    for question, completion, finished in zip(questions, completions, (True, False), strict=False):
        for limit in (8, 64):
            rows.append({"model": "tuned", "task": "gsm8k", "id": question.id, "limit": limit, "fingerprint": fingerprint,
                         "completion": completion, "finished": finished})
        rows.append({**rows[-1], "model": "base", "completion": "base text"})
    bench_dir = cfg.stage_dir("bench")
    bench_dir.mkdir(parents=True)
    (bench_dir / GENERATIONS).write_text("".join(json.dumps(r) + "\n" for r in rows))

    with pytest.raises(UserError, match="no finished bench run"):
        bench.on_policy_conversations(cfg, tiny_tokenizer, n_contexts=4, context_length=256, config_key="scan.reasoning_text")
    artifacts.mark_complete(bench_dir)
    text = bench.on_policy_conversations(cfg, tiny_tokenizer, n_contexts=4, context_length=256,
                                         config_key="scan.reasoning_text")
    assert len(text.conversations) == 2  # the third question has no generation
    for ids, question, completion, finished in zip(text.conversations, questions, completions, (True, False),
                                                   strict=False):
        prompt = question_prompt(tiny_tokenizer, question, cfg, spec)
        generated = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert ids == prompt + generated + ([tiny_tokenizer.eos_token_id] if finished else [])
        assert "<|im_start|>user" in tiny_tokenizer.decode(prompt)  # the chat layout, the bench's own prompt
    # where each generation starts (intervene's ADL window on the assistant turn)
    assert text.prompt_lengths == [len(question_prompt(tiny_tokenizer, q, cfg, spec)) for q in questions[:2]]
    first = text.conversations[0]
    start = text.answer_starts[0]
    assert tiny_tokenizer.decode(first[start:]).startswith("<|im_start|>answer")
    assert text.answer_starts[1] is None  # a generation cut inside its thinking has no answer block
    # a context shorter than the conversation keeps the prompt and both ends of the generation
    prompt = question_prompt(tiny_tokenizer, questions[0], cfg, spec)
    whole = text.conversations[0]
    short = bench.on_policy_conversations(cfg, tiny_tokenizer, n_contexts=1, context_length=len(prompt) + 6,
                                          config_key="scan.reasoning_text")
    assert short.conversations == [whole[:len(prompt) + 3] + whole[-3:]]

    # the scan reads it with scan.reasoning_text=on_policy and says so
    scan = make_config(f"output_root={tmp_path}", "exp_name=t", "hardware=cpu", "model.build_tiny=false",
                       f"model.path={tiny_model_dir}", f"tuned_model={tiny_tuned_model_dir}",
                       f"bench.data.gsm8k.path={tiny_world / 'gsm8k.jsonl'}", *BENCH,
                       f"harvest.corpus={tiny_world / 'corpus.jsonl'}", "scan.reasoning_text=on_policy",
                       "scan.n_general_contexts=2", "scan.n_reasoning_contexts=4", "scan.context_length=96",
                       "scan.patch_contexts=1", "scan.component_sites=false", config_name="scan")
    texts = artifacts.read_json(run_stage(scan) / artifacts.MANIFEST)["outputs"]["texts"]
    assert texts["reasoning"]["label"] == "on-policy" and texts["reasoning"]["contexts"] == 2
    at_96 = bench.on_policy_conversations(scan, tiny_tokenizer, n_contexts=4, context_length=96, config_key="x")
    assert texts["reasoning"]["tokens"] == sum(len(ids) for ids in at_96.conversations)


def test_on_policy_text_drops_generations_of_questions_the_fine_tune_trained_on(tmp_path, tiny_world,
                                                                              tiny_tokenizer, tiny_tuned_model_dir):
    from reasondiff import bench
    from reasondiff.bench.prompts import load_questions
    from reasondiff.bench.run import GENERATIONS, resolve_models, sweep_fingerprint

    # a fine-tune dataset that shares the first bench question (spaced otherwise: the same question_key)
    questions = load_questions("gsm8k", make_config(f"bench.data.gsm8k.path={tiny_world / 'gsm8k.jsonl'}", *BENCH,
                                                    config_name="bench").bench)
    shared = {"question": "  " + questions[0].question.replace(" ", "\n "), "deepseek_thinking_trajectory": "t",
              "deepseek_attempt": "a"}
    dataset = tmp_path / "s1k_like.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in [shared, {**shared, "question": "another question"}]))

    def on_policy(tuned, *extra):
        cfg = make_config(f"output_root={tmp_path}", "exp_name=t", "model.build_tiny=false", f"tuned_model={tuned}",
                          f"bench.data.gsm8k.path={tiny_world / 'gsm8k.jsonl'}", f"finetune.dataset={dataset}", *BENCH,
                          *extra, config_name="bench")
        spec = [s for s in resolve_models(cfg) if s.label == "tuned"][0]
        rows = [{"model": "tuned", "task": "gsm8k", "id": q.id, "limit": 64, "completion": f"answer {i}",
                 "finished": True, "fingerprint": sweep_fingerprint(cfg, spec, "gsm8k")} for i, q in enumerate(questions)]
        bench_dir = cfg.stage_dir("bench")
        bench_dir.mkdir(parents=True, exist_ok=True)
        (bench_dir / GENERATIONS).write_text("".join(json.dumps(r) + "\n" for r in rows))
        artifacts.mark_complete(bench_dir)
        return bench.on_policy_conversations(cfg, tiny_tokenizer, n_contexts=8, context_length=256, config_key="x")

    def answers(text):
        return [tiny_tokenizer.decode(ids).split("answer ")[-1][0] for ids in text.conversations]

    # a tuned model made elsewhere may have trained on any row of finetune.dataset
    text = on_policy(tiny_tuned_model_dir)
    assert text.trained_dropped == 1 and answers(text) == ["1", "2"]
    assert "1 dropped" in text.source and f"finetune.dataset={dataset}" in text.source
    # this experiment's fine-tune: only the rows it trained on count, not the ones it held out
    splits = [split_rows(rows_of(dataset), dataset=str(dataset), fields=FIELDS, fraction=0.5, n_rows=1, seed=seed)
              for seed in range(20)]
    for held in (True, False):
        split = next(sp for sp in splits if (0 in sp.heldout) == held)
        shutil.rmtree(tmp_path / "t" / "finetune", ignore_errors=True)
        fake_finetune(tmp_path, tiny_world, record=split.to_record())
        text = on_policy(tmp_path / "t" / "finetune" / "model")
        assert text.trained_dropped == (0 if held else 1) and len(text.conversations) == (3 if held else 2)
        assert "the rows the fine-tune trained on (finetune manifest" in text.source
    # a dataset that cannot be read: the text is used, and its source says it was not checked
    text = on_policy(tiny_tuned_model_dir, f"finetune.dataset={tmp_path / 'gone.jsonl'}")
    assert text.trained_dropped is None and len(text.conversations) == 3 and "not checked" in text.source


def test_harvest_keeps_the_held_out_questions_out_of_its_reasoning_mix(tiny_world):
    from reasondiff import harvest
    from reasondiff.harvest.corpus import reasoning_text

    rows = rows_of(tiny_world / "s1k.jsonl")
    split = split_rows(rows, dataset="d", fields=FIELDS, fraction=0.25, n_rows=None, seed=0)
    texts = list(harvest.reasoning_texts(str(tiny_world / "s1k.jsonl"), exclude_questions=split.heldout_questions))
    assert len(texts) == len(rows)  # positions stay row indices (resume)
    for index, text in enumerate(texts):
        assert text == ("" if index in split.heldout else reasoning_text(rows[index]))


def test_the_reasoning_text_source_is_part_of_the_result_it_makes():
    from reasondiff.core import fingerprint

    for stage in ("scan", "analyze"):
        held = fingerprint.settings(make_config(config_name=stage), stage)
        assert held[f"{stage}.reasoning_text"] == "heldout_rows" and "finetune.holdout.fraction" in held
        assert held != fingerprint.settings(make_config("finetune.holdout.seed=1", config_name=stage), stage)
        on_policy = fingerprint.settings(make_config(f"{stage}.reasoning_text=on_policy", config_name=stage), stage)
        assert "bench.token_limits" in on_policy and "finetune.holdout.fraction" in on_policy  # what it drops
        assert on_policy != fingerprint.settings(make_config(f"{stage}.reasoning_text=on_policy", "finetune.limit_rows=5",
                                                             config_name=stage), stage)


def test_the_held_out_split_is_part_of_a_harvest_that_mixes_reasoning_text_only():
    from reasondiff.core import fingerprint

    def digest(*overrides, stage="harvest"):
        cfg = make_config("+exp=tiny", "tuned_model=someone/released-reasoner", *overrides, config_name=stage)
        return fingerprint.Fingerprint(fingerprint.settings(cfg, stage)).digest

    # a tuned model from the hub: no finetune upstream id moves when the split does
    for stage, extra in (("harvest", ()), ("train", ("train.data=live",))):
        mixed = digest(*extra, stage=stage)
        for change in ("finetune.holdout.seed=1", "finetune.holdout.n_rows=3", "finetune.holdout.fraction=0.3",
                       "finetune.dataset=other.jsonl"):
            assert digest(*extra, change, stage=stage) != mixed, (stage, change)
        plain = ("harvest.reasoning_fraction=0", *extra)
        assert digest(*plain, "finetune.holdout.seed=1", stage=stage) == digest(*plain, stage=stage)
    # and a harvest without a mix keeps the fingerprint it had before the split was fingerprinted
    cfg = make_config("+exp=tiny", "harvest.reasoning_fraction=0", config_name="harvest")
    assert not any(k.startswith("finetune.") for k in fingerprint.settings(cfg, "harvest"))


def _store_of_crosscoder(tmp_path, tiny_world, *, read, excluded=None, count=0):
    """A finished train run whose recorded input is a harvest store that read the first `read` rows of the
    fine-tune's dataset as its reasoning mix, leaving out `excluded` (None: a store that names none)."""
    from reasondiff.core import fingerprint

    store = tmp_path / "t" / "harvest"
    store.mkdir(parents=True, exist_ok=True)
    corpus = {"reasoning_corpus": str(tiny_world / "s1k.jsonl"), "reasoning_fraction": 0.2,
              "reasoning_questions_excluded": count}
    if excluded is not None:
        corpus["reasoning_questions_excluded_keys"] = sorted(excluded)
    state = {"documents": read, "offset": 0, "passes": 0}
    artifacts.write_json(store / "store.json", {"corpus": corpus, "shards": [{"stream_state": {"reasoning": state}}]})
    artifacts.mark_complete(store)
    train = tmp_path / "t" / "train"
    train.mkdir(parents=True, exist_ok=True)
    fingerprint.write(train, "train", fingerprint.Fingerprint({}, upstream={"t/harvest": "id1"}), "")
    artifacts.mark_complete(train)


def test_preflight_refuses_held_out_rows_that_the_crosscoders_store_trained_on(tmp_path, tiny_world, monkeypatch):
    rows = rows_of(tiny_world / "s1k.jsonl")
    split = split_rows(rows, dataset=str(tiny_world / "s1k.jsonl"), fields=FIELDS, fraction=0.25, n_rows=None, seed=0)
    fake_finetune(tmp_path, tiny_world, record=split.to_record())

    def cfg(stage, *extra):
        return make_config(f"output_root={tmp_path}", "exp_name=t", "hardware=cpu", "model.build_tiny=false",
                           f"tuned_model={tmp_path / 't' / 'finetune' / 'model'}",
                           f"finetune.dataset={tiny_world / 's1k.jsonl'}", f"harvest.corpus={tiny_world / 'corpus.jsonl'}",
                           *extra, config_name=stage)

    # a store harvested before finetune.holdout: its reasoning mix read every row and left none out
    _store_of_crosscoder(tmp_path, tiny_world, read=len(rows))
    for stage in ("analyze", "intervene"):
        problem = preflight.reasoning_text_problem(cfg(stage), stage)
        assert problem.startswith(f"{stage}: {len(split.heldout_questions)} of the {len(split.heldout_questions)} "
                                  "held-out questions") and "\n" not in problem
        assert str(tmp_path / "t" / "harvest") in problem and "analyze.allow_trained_text=true" in problem
        assert "harvested before finetune.holdout" in problem
        assert preflight.reasoning_text_problem(cfg(stage, "analyze.allow_trained_text=true"), stage) is None
    # one clear UserError from the stage's preflight (the models themselves are not what is checked here)
    monkeypatch.setattr(preflight, "_model_problem", lambda *a: None)
    with pytest.raises(UserError, match=r"^analyze: \d+ of the \d+ held-out questions"):
        preflight.check([(cfg("analyze"), "analyze")], disk=False)
    # a pipeline that redoes the harvest (or the train run, onto a store it redoes) reads no such store
    redone = frozenset({tmp_path / "t" / "harvest"})
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze", redone) is None
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze", redone | {tmp_path / "t" / "train"}) is None
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze", frozenset({tmp_path / "t" / "train"}))
    # scan reads no crosscoder; on-policy text is not the held-out rows
    assert preflight.reasoning_text_problem(cfg("scan"), "scan") is None
    assert preflight.reasoning_text_problem(cfg("analyze", "analyze.reasoning_text=on_policy"), "analyze") is None

    # the evidence is what the store read: rows before the first held-out one are no problem...
    _store_of_crosscoder(tmp_path, tiny_world, read=min(split.heldout))
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze") is None
    _store_of_crosscoder(tmp_path, tiny_world, read=min(split.heldout) + 1)
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze").startswith("analyze: 1 of the")
    # ...and what it left out: the held-out questions themselves, or (an older store) a count of them
    _store_of_crosscoder(tmp_path, tiny_world, read=len(rows), excluded=split.heldout_questions,
                         count=len(split.heldout_questions))
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze") is None
    _store_of_crosscoder(tmp_path, tiny_world, read=len(rows), count=len(split.heldout_questions))
    assert preflight.reasoning_text_problem(cfg("analyze"), "analyze") is None
    other = split_rows(rows, dataset="d", fields=FIELDS, fraction=0.25, n_rows=None, seed=5).heldout_questions
    _store_of_crosscoder(tmp_path, tiny_world, read=len(rows), excluded=other, count=len(other))
    assert "another split" in preflight.reasoning_text_problem(cfg("analyze"), "analyze")
