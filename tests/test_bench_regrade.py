"""Regrading stored rows: the stage rebuilds its tables with the current grader from what rows
store (nothing regenerated, `finished` inferred for rows that predate it), and the regrade script
counts the verdicts the new grader changes against the frozen old one."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.bench import regrade, scoring
from reasondiff.bench.generation import HFGenerator


def _legacy(row):
    """A row as the bench wrote it before issue 13: no finished / thinking_opened / reference / grader."""
    keep = ("model", "task", "id", "limit", "mode", "fingerprint", "completion", "answer", "correct", "no_answer",
            "forced", "tokens", "seconds", "batch")
    return {k: row[k] for k in keep}


def test_infer_finished_from_token_counts():
    def row(limit, tokens):
        return {"model": "m", "task": "gsm8k", "id": "0", "limit": limit, "tokens": tokens}

    # generation of 12 tokens (stop included): cut at 8, ended by 16 and 32
    assert scoring.infer_finished([row(8, 8), row(16, 12), row(32, 12)]) == {
        ("m", "gsm8k", "0", 8): False, ("m", "gsm8k", "0", 16): True, ("m", "gsm8k", "0", 32): True}
    # exactly 16 tokens: ended at 16 (the 32-row shows it stopped), but 32 of 32 is taken as cut
    assert scoring.infer_finished([row(16, 16), row(32, 16)])[("m", "gsm8k", "0", 16)] is True
    assert scoring.infer_finished([row(16, 16), row(32, 32)])[("m", "gsm8k", "0", 32)] is False


def test_stage_regrades_old_rows_without_regenerating(tmp_path, tiny_world, trained_tiny_pair, monkeypatch):
    base, tuned = trained_tiny_pair
    data = [f"bench.data.{task}.path={tiny_world}/{task}.jsonl" for task in ("gsm8k", "math500", "boolq")]
    args = [f"output_root={tmp_path}", f"model.path={base}", "model.build_tiny=false", f"tuned_model={tuned}",
            "bench.models=[base,tuned]", "bench.limit=4", "bench.token_limits=[8,128]", *data]
    out = run_stage(make_config(*args, config_name="bench"))
    fresh = [json.loads(line) for line in open(out / "generations.jsonl")]
    results = (out / "results.csv").read_text()
    # the file as the old bench wrote it, with verdicts of another grader
    with open(out / "generations.jsonl", "w") as handle:
        for row in fresh:
            handle.write(json.dumps({**_legacy(row), "correct": not row["correct"]}) + "\n")
    (out / "COMPLETED").unlink()
    calls = []
    real = HFGenerator.generate_batch
    monkeypatch.setattr(HFGenerator, "generate_batch", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    run_stage(make_config(*args, config_name="bench"))
    assert calls == []  # the rows were reused: same fingerprint
    assert (out / "results.csv").read_text() == results  # regraded to the same verdicts, `finished` inferred
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["regraded_rows"] == len(fresh)


def test_regrade_script_counts_changed_verdicts(tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "Natalia sold 48 clips in April and half as many in May. Total?",
                                "answer": "48/2 = 24\n#### 72"}) + "\n")
    run = tmp_path / "bench"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"bench:\n  data:\n    gsm8k: {{path: {data}, config_name: null, split: test}}\n  limit: null\n  seed: 0\n")
    section = "<|im_start|>think\n48/2 = 24\n<|im_start|>answer\nAnswer: Natalia sold 48 clips in April and 24 in May. " \
              "In total she sold 72."
    rows = [  # one question, two limits, written by the old bench
        {"model": "tuned", "task": "gsm8k", "id": "0", "limit": 8, "completion": "<|im_start|>think\nAnswer: 72 so",
         "tokens": 8, "correct": True},
        {"model": "tuned", "task": "gsm8k", "id": "0", "limit": 64, "completion": section, "tokens": 40,
         "correct": False},
    ]
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert regrade.main([str(run), "--json", str(tmp_path / "cmp.json")]) == 0
    printed = capsys.readouterr().out
    (summary,) = json.loads((tmp_path / "cmp.json").read_text())["summary"]
    # limit 64 finished (40 < 64): old read 24, new reads 72; limit 8 was cut inside the thinking after
    # `Answer: 72`: both read 72 (a cut prefix's explicit answer counts for every model, issue 26.4)
    assert (summary["changed"], summary["wrong_to_right"], summary["right_to_wrong"]) == (1, 1, 0)
    assert (summary["old_accuracy"], summary["new_accuracy"]) == (50.0, 100.0)
    assert "| tuned | gsm8k | 2 (1) | 1 | 1 | 0 | 1 |" in printed and "old '24' ✗ → new '72'" in printed


def test_regrade_script_names_what_is_missing(tmp_path, capsys):
    run = tmp_path / "bench"
    run.mkdir()
    (run / "generations.jsonl").write_text(json.dumps({"model": "m", "task": "gsm8k", "id": "0", "limit": 4,
                                                       "completion": "x", "tokens": 1}) + "\n")
    assert regrade.main([str(run)]) == 2
    assert "no .hydra/config.yaml" in capsys.readouterr().err
    assert regrade.main([str(tmp_path / "nowhere")]) == 2


def test_every_table_column_is_documented():
    from reasondiff.bench.tables import RESULT_COLUMNS, SUMMARY_COLUMNS

    docs = (Path(__file__).resolve().parent.parent / "docs" / "bench.md").read_text()
    assert [c for c in RESULT_COLUMNS + SUMMARY_COLUMNS if f"`{c}`" not in docs] == []
