"""Atomic writes: a killed write leaves the old file intact; completion is a marker, not existence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from reasondiff.core import artifacts


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.json"
    artifacts.write_json(path, {"v": 1})
    artifacts.write_json(path, {"v": 2})
    assert artifacts.read_json(path) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no staging files left


def test_exception_mid_write_leaves_old_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_write(path) as handle:
            handle.write(b"new-partial")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_killed_process_mid_write_leaves_old_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"old")
    script = textwrap.dedent(f"""
        import sys, time
        from reasondiff.core.artifacts import atomic_write
        with atomic_write({str(path)!r}) as handle:
            handle.write(b"x" * 1000)
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert path.read_bytes() == b"old"


def test_atomic_dir_swaps_only_on_success(tmp_path):
    target = tmp_path / "model"
    with artifacts.atomic_dir(target) as staging:
        (staging / "w").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with artifacts.atomic_dir(target) as staging:
            (staging / "w").write_text("2")
            raise KeyboardInterrupt
    assert (target / "w").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_save_for_library_writers(tmp_path):
    path = tmp_path / "t.safetensors"
    artifacts.atomic_save(path, lambda staging: open(staging, "wb").write(b"abc"))
    assert path.read_bytes() == b"abc"


def test_completion_marker(tmp_path):
    assert not artifacts.is_complete(tmp_path)
    (tmp_path / "results.csv").write_text("partial")
    assert not artifacts.is_complete(tmp_path)  # exists != complete
    artifacts.mark_complete(tmp_path)
    assert artifacts.is_complete(tmp_path)


def test_disk_space_refused_up_front(tmp_path):
    with pytest.raises(artifacts.DiskSpaceError, match="needs about"):
        artifacts.ensure_free_space(tmp_path / "not" / "yet", 10**18, "harvest")
    artifacts.ensure_free_space(tmp_path, 1, "harvest")


def test_manifest_records_versions_and_seed():
    start = time.perf_counter()
    manifest = artifacts.build_manifest("train", inputs={"a": 1}, outputs={"b": 2}, seed=7,
                                        wall_seconds=time.perf_counter() - start)
    assert manifest["seed"] == 7 and "torch" in manifest["versions"] and manifest["stage"] == "train"
