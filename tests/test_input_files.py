"""A local data file rewritten under the same path is never resumed or reused as if unchanged.

The settings hold a dataset's path only; `fingerprint.json` also records what each local data file
held (reasondiff.core.input_files), and a resume or a reuse on a file that holds other bytes now is
refused in one line. The settings digest is unchanged by it, so older runs keep resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts, fingerprint, input_files
from reasondiff.core.errors import UserError


def rows(n: int, answer: str = "4") -> str:
    return "".join(json.dumps({"question": f"what is {i} + 2?", "solution": answer}) + "\n" for i in range(n))


@pytest.fixture
def world(tmp_path):
    """A finetune config on a local JSONL and a stand-in model directory (the stage's work is a stub:
    these tests exercise the contract, not the fine-tune)."""
    model = tmp_path / "in" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    data = tmp_path / "in" / "control.jsonl"
    data.write_text(rows(5))

    def cfg(*overrides: str):
        return make_config("+exp=tiny", f"output_root={tmp_path / 'out'}", "model.build_tiny=false",
                           f"model.path={model}", f"finetune.dataset={data}", "finetune.holdout.n_rows=0",
                           *overrides, config_name="finetune")

    return cfg, data


def partial(cfg, ctx):
    artifacts.write_text(ctx.dir / "checkpoint.txt", Path(cfg.finetune.dataset).read_text())
    raise KeyboardInterrupt


def finish(calls):
    def work(cfg, ctx):
        calls.append(Path(cfg.finetune.dataset).read_text() if Path(cfg.finetune.dataset).is_file() else "dir")
        return {}
    return work


def test_a_partial_run_on_a_rewritten_file_is_refused_and_the_restored_file_resumes(world):
    cfg, data = world
    original = data.read_text()
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg(), "finetune", partial)
    out = cfg().stage_dir("finetune")
    recorded = artifacts.read_json(out / fingerprint.FINGERPRINT_FILE)["input_files"]
    assert recorded["finetune.dataset"]["files"]["control.jsonl"]["sha256"] == \
        hashlib.sha256(original.encode()).hexdigest()
    data.write_text(rows(7, answer="four"))  # regenerated with other options, same name
    calls: list[str] = []
    with pytest.raises(UserError) as refused:
        run_stage(cfg(), "finetune", finish(calls))
    message = str(refused.value)
    assert "\n" not in message and calls == []
    assert message.startswith(f"finetune: finetune.dataset={data} changed (size {len(original)} -> "
                              f"{len(rows(7, answer='four'))} bytes, sha256 ")
    assert "since this partial run started" in message and "restore the file" in message \
        and "overwrite=true starts it over" in message
    assert (out / "checkpoint.txt").read_text() == original  # the partial work is untouched
    data.write_text(original)  # restored: the same bytes, a newer mtime
    run_stage(cfg(), "finetune", finish(calls))
    assert calls == [original] and artifacts.is_complete(out)


def test_a_finished_run_on_a_file_rewritten_at_the_same_size_is_not_reused(world):
    cfg, data = world
    calls: list[str] = []
    out = run_stage(cfg(), "finetune", finish(calls))
    data.write_text(data.read_text().replace("what is 3", "what is 7"))  # same size, other rows
    with pytest.raises(UserError, match=r"^finetune: finetune\.dataset=\S+ changed \(same size \d+ bytes, sha256 "
                                        r"[0-9a-f]{12} -> [0-9a-f]{12}\) since this result was made from it .* "
                                        r"overwrite=true redoes it"):
        run_stage(cfg(), "finetune", finish(calls))
    assert calls == [rows(5)]
    run_stage(cfg("overwrite=true"), "finetune", finish(calls))
    assert calls[-1] == data.read_text()
    recorded = artifacts.read_json(out / artifacts.MANIFEST)["input_files"]["finetune.dataset"]["files"]
    assert recorded["control.jsonl"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    run_stage(cfg(), "finetune", finish(calls))  # the redone result is reused
    assert len(calls) == 2


def test_an_unchanged_file_with_a_newer_mtime_is_reused(world):
    cfg, data = world
    calls: list[str] = []
    run_stage(cfg(), "finetune", finish(calls))
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run_stage(cfg(), "finetune", finish(calls))
    assert len(calls) == 1


def test_a_run_recorded_before_input_files_existed_resumes_and_records_them(world):
    cfg, data = world
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg(), "finetune", partial)
    out = cfg().stage_dir("finetune")
    path = out / fingerprint.FINGERPRINT_FILE
    record = json.loads(path.read_text())
    del record["input_files"]
    path.write_text(json.dumps(record))
    data.write_text(rows(6))  # nothing recorded to compare with: resumed as before
    calls: list[str] = []
    run_stage(cfg(), "finetune", finish(calls))
    assert calls == [rows(6)]
    assert artifacts.read_json(path)["input_files"]["finetune.dataset"]["files"]["control.jsonl"]["size"] == \
        len(rows(6))


def test_the_settings_digest_is_the_one_computed_before_input_files_existed(world):
    cfg, _ = world
    out = run_stage(cfg(), "finetune", finish([]))
    record = artifacts.read_json(out / fingerprint.FINGERPRINT_FILE)
    assert record["input_files"]  # recorded, yet outside the digest:
    old_way = hashlib.sha256(json.dumps({"settings": record["settings"], "upstream": record["upstream"]},
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert record["fingerprint"] == old_way == artifacts.read_marker(out)["fingerprint"]
    assert old_way == fingerprint.Fingerprint(fingerprint.settings(cfg(), "finetune")).digest


def test_a_directory_of_data_files_is_compared_file_by_file(world, tmp_path):
    cfg, _ = world
    folder = tmp_path / "in" / "rows"
    folder.mkdir()
    (folder / "a.jsonl").write_text(rows(3))
    (folder / "notes.md").write_text("not data: not read, not compared")
    calls: list[str] = []
    run_stage(cfg(f"finetune.dataset={folder}"), "finetune", finish(calls))
    (folder / "notes.md").write_text("edited")
    run_stage(cfg(f"finetune.dataset={folder}"), "finetune", finish(calls))
    assert calls == ["dir"]
    (folder / "b.jsonl").write_text(rows(2))
    with pytest.raises(UserError, match=rf"finetune\.dataset={folder} changed \(b\.jsonl is new\)"):
        run_stage(cfg(f"finetune.dataset={folder}"), "finetune", finish(calls))


def test_a_large_file_is_hashed_by_sampled_blocks_and_an_unchanged_stat_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(input_files, "WHOLE_FILE_BYTES", 64)
    monkeypatch.setattr(input_files, "BLOCK_BYTES", 4)
    monkeypatch.setattr(input_files, "SAMPLE_BLOCKS", 3)  # blocks at 0, the middle, the end
    big = tmp_path / "big.jsonl"
    body = bytearray(b"x" * 100)
    big.write_bytes(body)
    before = input_files.identify({"big.jsonl": big})
    assert before["big.jsonl"]["sampled"] and before["big.jsonl"]["sha256"] != hashlib.sha256(body).hexdigest()
    body[48] = ord("y")  # inside the middle block (48..51)
    big.write_bytes(body)
    after = input_files.identify({"big.jsonl": big})
    assert input_files.difference(str(big), before, after) == \
        f"same size 100 bytes, sha256 of sampled blocks {before['big.jsonl']['sha256'][:12]} -> " \
        f"{after['big.jsonl']['sha256'][:12]}"
    # size and mtime as recorded: the recorded identity is taken, the file not read
    stat = big.stat()
    known = {"big.jsonl": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": "recorded", "sampled": True}}
    assert input_files.identify({"big.jsonl": big}, known)["big.jsonl"]["sha256"] == "recorded"


def test_a_data_file_inside_output_root_is_recorded_relative_to_it_and_named_by_its_real_path(world, tmp_path):
    cfg, _ = world
    data = tmp_path / "out" / "_tiny" / "data" / "control.jsonl"  # where the tiny world writes its control rows
    data.parent.mkdir(parents=True)
    data.write_text(rows(4))
    out = run_stage(cfg(f"finetune.dataset={data}"), "finetune", finish([]))
    recorded = artifacts.read_json(out / fingerprint.FINGERPRINT_FILE)["input_files"]["finetune.dataset"]
    assert recorded["path"] == "<output_root>/_tiny/data/control.jsonl"
    data.write_text(rows(3))
    with pytest.raises(UserError, match=rf"^finetune: finetune\.dataset={data} changed \(size "):
        run_stage(cfg(f"finetune.dataset={data}"), "finetune", finish([]))
