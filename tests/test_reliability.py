"""Reliability (issue 20): every kill, bad input and second run ends in a correct state or a one-line error.

Each test reproduces one reported defect: wrong metadata in a completed stage after a kill at the
wrong moment, duplicate metrics rows, a torn trainer checkpoint, NaN weights saved between logging
steps, full and read-only disks (a real small tmpfs when this process may mount one, else the writes
raise what a full disk raises), checks that came too late, a corrupt shard a re-run must repair,
data errors that must name file, line, field and key, and two runs of one stage at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, app_env, make_config
from test_finetune import _At, _cfg, _run
from test_harvest import _contents, harvest_config
from test_train_stage import _interrupting_source, small_config

from reasondiff.app import preflight
from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.core.locking import StageLock, lock_path
from reasondiff.harvest import store as store_io


def _csv_steps(path: Path) -> list[float]:
    import csv

    with open(path, newline="") as handle:
        return [float(r["step"]) for r in csv.DictReader(handle)]


def _env() -> dict:
    return app_env()


# --- a small disk: a real tmpfs when we may mount one, else writes that fail as a full disk does ------
class SmallDisk:
    """`path` lives on a filesystem of `size` bytes; `fill(leave)` leaves `leave` bytes free (as if
    another process filled the disk); `read_only()` remounts it read-only."""

    def __init__(self, path: Path, size: int, monkeypatch) -> None:
        self.path, self.size, self.real, self.full, self.ro = path, size, False, False, False
        path.mkdir(parents=True)
        if os.environ.get("REASONDIFF_TEST_NO_MOUNT") != "1" and os.geteuid() == 0:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                     capture_output=True)
            self.real = mounted.returncode == 0
        if not self.real:
            self._patch(monkeypatch)

    def _patch(self, monkeypatch) -> None:
        """What a full (or read-only) disk raises, at the writes the stages make."""
        disk = self

        def mine(path) -> bool:
            return str(Path(path).absolute()).startswith(str(disk.path.absolute()))

        def failure(path):
            if disk.ro and mine(path):
                return OSError(errno.EROFS, "Read-only file system", str(path))
            if disk.full and mine(path):
                return OSError(errno.ENOSPC, "No space left on device", str(path))
            return None

        atomic_write, atomic_save, torch_save, mkdir = (artifacts.atomic_write, artifacts.atomic_save, torch.save,
                                                        Path.mkdir)

        @contextlib.contextmanager
        def patched_write(path, mode="wb"):
            if failure(path):
                raise failure(path)
            with atomic_write(path, mode) as handle:
                yield handle

        def patched_save(path, save_fn):
            if failure(path):
                raise failure(path)
            return atomic_save(path, save_fn)

        def patched_torch_save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and failure(f):  # torch's own words for a full disk
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4096")
            return torch_save(obj, f, *args, **kwargs)

        def patched_mkdir(self, *args, **kwargs):
            if disk.ro and mine(self) and not self.exists():
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return mkdir(self, *args, **kwargs)

        monkeypatch.setattr(artifacts, "atomic_write", patched_write)
        monkeypatch.setattr(artifacts, "atomic_save", patched_save)
        monkeypatch.setattr(torch, "save", patched_torch_save)
        monkeypatch.setattr(Path, "mkdir", patched_mkdir)
        monkeypatch.setattr(artifacts, "free_bytes",
                            lambda path: 0 if disk.full and mine(path) else disk.size if mine(path) else 10**15)

    def fill(self, leave: int) -> None:
        self.full = True
        if self.real:
            free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
            with open(self.path / "filler", "wb") as handle, contextlib.suppress(OSError):
                handle.write(b"\0" * max(0, free - leave))

    def free(self) -> None:
        self.full = False
        (self.path / "filler").unlink(missing_ok=True)

    def read_only(self) -> None:
        self.ro = True
        if self.real:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    disks = []

    def make(size: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size, monkeypatch))
        return disks[-1]

    yield make
    for disk in disks:
        disk.close()


# --- 1. harvest killed after its last shard, before stats.json / COMPLETED --------------------------
def test_harvest_resumed_after_its_last_shard_keeps_its_totals(tmp_path, tiny_model_dir, tiny_tuned_model_dir,
                                                               tiny_world, monkeypatch):
    reference = json.loads((run_stage(harvest_config(tmp_path / "a", tiny_model_dir, tiny_tuned_model_dir,
                                                     tiny_world)) / "store.json").read_text())
    cfg = harvest_config(tmp_path / "b", tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    norm_stats = store_io.norm_stats

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the last shard")

    monkeypatch.setattr(store_io, "norm_stats", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    monkeypatch.setattr(store_io, "norm_stats", norm_stats)
    out = run_stage(cfg)
    resumed = json.loads((out / "store.json").read_text())
    for key in ("n_tokens", "documents_used", "contexts_used", "n_massive_dropped"):
        assert resumed[key] == reference[key] and (key == "n_massive_dropped" or reference[key] > 0), key
    assert artifacts.read_json(out / "manifest.json")["outputs"]["documents_used"] == reference["documents_used"]


# --- 2. train killed right after crosscoder.safetensors appeared -----------------------------------
def test_train_killed_after_its_final_save_keeps_frac_dead(tmp_path, monkeypatch):
    from reasondiff.crosscoder.model import CrossCoder

    dead = ("train.n_latents=256", "train.dead_tokens=64")  # a latent silent for one batch counts as dead
    reference = artifacts.read_json(run_stage(small_config(tmp_path / "a", *dead)) / "summary.json")
    assert reference["frac_dead"] > 0  # the small run has dead latents, so a zeroed counter shows
    save = CrossCoder.save

    def save_then_die(self, directory, extra=None):
        save(self, directory, extra)
        raise KeyboardInterrupt("killed right after the final save")

    monkeypatch.setattr(CrossCoder, "save", save_then_die)
    cfg = small_config(tmp_path / "b", *dead)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    monkeypatch.setattr(CrossCoder, "save", save)
    out = run_stage(cfg)
    resumed = artifacts.read_json(out / "summary.json")
    assert resumed["frac_dead"] == reference["frac_dead"]
    assert artifacts.read_json(out / "synthetic_report.json") == artifacts.read_json(
        tmp_path / "a" / "tiny" / "train@synthetic" / "synthetic_report.json")


# --- 3. metrics rows after kill -9 (train) and for shards not yet written (harvest) -------------------
_KILLER = """
import os, signal, sys
from pathlib import Path
from test_train_stage import small_config
from reasondiff.train.synthetic import SyntheticSource
from reasondiff.app.stage import run_stage

original = SyntheticSource.iter_batches

def iter_batches(self, batch_size, *, seed, start_batch=0):
    for b, x in enumerate(original(self, batch_size, seed=seed, start_batch=start_batch), start=start_batch):
        if b == 13 and seed == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        yield x

SyntheticSource.iter_batches = iter_batches
run_stage(small_config(Path(sys.argv[1]), "train.log_every=2"))
"""


def test_train_after_kill_9_logs_no_step_twice(tmp_path):
    reference = _csv_steps(run_stage(small_config(tmp_path / "a", "train.log_every=2")) / "metrics.csv")
    killed = subprocess.run([sys.executable, "-c", _KILLER, str(tmp_path / "b")], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    cfg = small_config(tmp_path / "b", "train.log_every=2")
    out = cfg.stage_dir("train")
    assert max(_csv_steps(out / "metrics.csv")) > 8  # rows after the step-8 checkpoint: done again on resume
    assert lock_path(out).exists()  # kill -9 left its lock behind: a stale one
    run_stage(cfg)
    assert _csv_steps(out / "metrics.csv") == reference


def test_harvest_logs_a_metrics_row_only_for_a_written_shard(tmp_path, tiny_model_dir, tiny_tuned_model_dir,
                                                            tiny_world, monkeypatch):
    reference = _csv_steps(run_stage(harvest_config(tmp_path / "a", tiny_model_dir, tiny_tuned_model_dir,
                                                    tiny_world)) / "metrics.csv")
    cfg = harvest_config(tmp_path / "b", tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    original, calls = store_io.write_shard, {"n": 0}

    def dying_write(directory, index, acts, tokens):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed while writing shard 2")
        return original(directory, index, acts, tokens)

    monkeypatch.setattr(store_io, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    out = cfg.stage_dir("harvest")
    stored = json.loads((out / "store.json").read_text())["n_tokens"]
    assert _csv_steps(out / "metrics.csv") == reference[:2] and reference[1] == stored
    monkeypatch.setattr(store_io, "write_shard", original)
    run_stage(cfg)
    assert _csv_steps(out / "metrics.csv") == reference


# --- 4. a torn trainer_state.json ---------------------------------------------------------------------
def test_a_torn_trainer_checkpoint_is_skipped_and_the_resume_finishes(tmp_path, tiny_model_dir, tiny_world):
    import shutil

    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, _At("end", 3, lambda: (_ for _ in ()).throw(KeyboardInterrupt("kill"))))
    checkpoints = cfg.stage_dir("finetune") / "checkpoints"
    torn = checkpoints / "checkpoint-4"
    shutil.copytree(checkpoints / "checkpoint-2", torn)
    state = torn / "trainer_state.json"
    state.write_text(state.read_text()[: len(state.read_text()) // 2])  # a kill or full disk mid-write
    out = _run(cfg)
    manifest = artifacts.read_json(out / "manifest.json")
    assert manifest["inputs"]["resumed_from"].endswith("checkpoint-2") and manifest["outputs"]["global_step"] == 6


# --- 5. NaN between logging steps ---------------------------------------------------------------------
def test_finetune_nan_between_logging_steps_is_one_line_and_never_saved(tmp_path, tiny_model_dir, tiny_world):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class PoisonWeights(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:  # step 3 trains on NaN weights; nothing is logged (logging_steps=100)
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    cfg = _cfg(tmp_path, tiny_model_dir, tiny_world, "finetune.logging_steps=100", "finetune.save_steps=2")
    with pytest.raises(UserError) as stopped:
        _run(cfg, PoisonWeights())
    message = str(stopped.value)
    assert "\n" not in message and "is not finite at step 4" in message and "checkpoint-2 is kept" in message
    checkpoints = cfg.stage_dir("finetune") / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    weights = load_file(checkpoints / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# --- 6. full and read-only disks ----------------------------------------------------------------------
def test_train_on_a_disk_that_fills_up_fails_in_one_line_and_resumes(tmp_path, small_disk, monkeypatch):
    disk = small_disk(8 * 2**20)
    cfg = small_config(disk.path, "train.n_latents=1024")  # checkpoint.pt ~0.8 MB
    _interrupting_source(monkeypatch, 10, lambda x: (disk.fill(100_000), x)[1])  # after the step-8 checkpoint
    with pytest.raises(UserError) as full:
        run_stage(cfg)
    message = str(full.value)
    assert "\n" not in message and message.startswith(f"disk full at {disk.path}") and "B free; the work" in message
    out = cfg.stage_dir("train")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 8  # what was written is kept
    assert not artifacts.is_complete(out)
    disk.free()
    run_stage(cfg)
    assert artifacts.is_complete(out)


def test_harvest_on_a_disk_that_fills_up_resumes_to_the_same_store(tmp_path, small_disk, monkeypatch, tiny_model_dir,
                                                                   tiny_tuned_model_dir, tiny_world):
    reference = run_stage(harvest_config(tmp_path / "a", tiny_model_dir, tiny_tuned_model_dir, tiny_world))
    disk = small_disk(8 * 2**20)
    cfg = harvest_config(disk.path, tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    original, calls = store_io.write_shard, {"n": 0}

    def write_then_fill(directory, index, acts, tokens):
        calls["n"] += 1
        if calls["n"] == 3:
            disk.fill(10_000)
        return original(directory, index, acts, tokens)

    monkeypatch.setattr(store_io, "write_shard", write_then_fill)
    with pytest.raises(UserError, match=rf"^disk full at {disk.path}/tiny/harvest: harvest \(activation shards\) needs "
                                        r"about 2.\d MB, \d+.\d kB free; the work saved so far is kept"):
        run_stage(cfg)
    assert len(json.loads((cfg.stage_dir("harvest") / "store.json").read_text())["shards"]) == 2
    disk.free()
    out = run_stage(cfg)
    rows_a, tokens_a, _ = _contents(reference)
    rows_b, tokens_b, _ = _contents(out)
    assert torch.equal(rows_a, rows_b) and np.array_equal(tokens_a, tokens_b)


def test_finetune_refuses_up_front_when_its_checkpoints_cannot_fit(tmp_path, small_disk, tiny_model_dir, tiny_world):
    disk = small_disk(2 * 2**20)
    cfg = _cfg(disk.path, tiny_model_dir, tiny_world)
    with pytest.raises(UserError, match=r"^disk full at .*: finetune \(trainer checkpoints \+ model/\) needs about "
                                        r"\d+\.\d MB, 2\.\d MB free$"):
        _run(cfg)
    assert not cfg.stage_dir("finetune").exists()


def test_finetune_that_fills_the_disk_mid_run_fails_in_one_line(tmp_path, small_disk, tiny_model_dir, tiny_world,
                                                                monkeypatch):
    disk = small_disk(3 * 2**20)
    monkeypatch.setattr(preflight, "disk_needed", lambda cfg, stage: None)  # an estimate that was too low
    cfg = _cfg(disk.path, tiny_model_dir, tiny_world)
    with pytest.raises(UserError) as full:
        _run(cfg, _At("end", 1, lambda: disk.fill(0) if not disk.real else None))
    message = str(full.value)
    assert "\n" not in message and message.startswith(f"disk full at {disk.path}") and "re-run" in message
    assert not artifacts.is_complete(cfg.stage_dir("finetune"))


def test_a_read_only_output_dir_is_one_line(tmp_path, small_disk):
    disk = small_disk(2**20)
    disk.read_only()
    cfg = small_config(disk.path)
    with pytest.raises(UserError, match=rf"^read-only filesystem at {disk.path}: train cannot write its outputs; "
                                        "set output_root to a writable directory$"):
        run_stage(cfg)


# --- 7. checks too late: bench models, a wrong model.path with build_tiny -------------------------------
def test_every_bench_model_is_checked_before_the_first_generation(tmp_path, tiny_model_dir, tiny_world, monkeypatch):
    from reasondiff.bench.generation import HFGenerator

    monkeypatch.setattr(HFGenerator, "generate_batch", lambda *a: pytest.fail("generated before the check"))
    cfg = make_config(f"output_root={tmp_path}", "model.build_tiny=false", f"model.path={tiny_model_dir}",
                      f"bench.models=[base,{tmp_path}/other_model]", "bench.tasks=[gsm8k]", "bench.token_limits=[4,8]",
                      f"bench.data.gsm8k.path={tiny_world}/gsm8k.jsonl", config_name="bench")
    with pytest.raises(UserError, match=rf"^bench.models={tmp_path}/other_model: no such local directory"):
        run_stage(cfg)


# --- 8. a corrupt shard of a finished harvest is repaired by the re-run the error advises ---------------
def test_a_finished_store_with_a_corrupt_shard_is_repaired_by_a_re_run(tmp_path, tiny_model_dir,
                                                                       tiny_tuned_model_dir, tiny_world):
    from reasondiff.harvest.store import ActivationStore

    cfg = harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world)
    out = run_stage(cfg)
    rows, tokens, _ = _contents(out)
    shard = out / "shard_00002.acts.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="Re-run the harvest stage .*rewrites them from the first bad one"):
        ActivationStore.open(out)
    run_stage(cfg)
    assert artifacts.is_complete(out)
    rows_after, tokens_after, _ = _contents(out)
    assert torch.equal(rows, rows_after) and np.array_equal(tokens, tokens_after)


# --- 9. data errors name the file, the line, the field and the key --------------------------------------
def test_an_empty_file_says_so(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    (tmp_path / "empty.jsonl").write_text("")
    cfg = harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world,
                         f"harvest.corpus={tmp_path}/empty.jsonl")
    with pytest.raises(UserError, match=rf"^harvest.corpus={tmp_path}/empty.jsonl: the file is empty$"):
        run_stage(cfg)


def test_a_null_field_is_reported_as_null(tmp_path):
    from reasondiff.lm.data_sources import load_rows

    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": null, "id": 3}\n')
    with pytest.raises(UserError, match=rf"^c={path}: line 3 has text set to null$"):
        load_rows(str(path), config_key="c", fields=["text"])


def test_a_json_line_error_says_at_once(tmp_path):
    """Issue 32.4: "Unterminated string starting at at column 10"."""
    from reasondiff.lm.data_sources import load_rows

    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n{"text": "cut mid-string')  # the last line, cut
    with pytest.raises(UserError, match=rf"^c={path}: line 2 is not valid JSON \(Unterminated string starting at "
                                        r"column 10\)$"):
        load_rows(str(path), config_key="c", fields=["text"])


def test_a_malformed_corpus_line_is_found_before_any_shard(tmp_path, tiny_model_dir, tiny_tuned_model_dir,
                                                           tiny_world):
    lines = (tiny_world / "corpus.jsonl").read_text().splitlines()
    lines[200] = lines[200][:-5]  # line 201 of the file: cut mid-object
    bad = tmp_path / "corpus.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    cfg = harvest_config(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world, f"harvest.corpus={bad}")
    with pytest.raises(UserError, match=rf"^harvest.corpus={bad}: line 201 is not valid JSON \(.* at column \d+\)$"):
        run_stage(cfg)
    assert not list(cfg.stage_dir("harvest").glob("shard_*")) if cfg.stage_dir("harvest").exists() else True


# --- 10. two runs at once -----------------------------------------------------------------------------
_HOLDER = """
import sys, time
from reasondiff.core.locking import StageLock
with StageLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(directory: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory), str(seconds)], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_of_a_stage_refuses_naming_the_holder(tmp_path):
    cfg = small_config(tmp_path)
    holder = _hold(cfg.stage_dir("train"), 60)
    try:
        with pytest.raises(UserError) as busy:
            run_stage(cfg)
        message = str(busy.value)
        assert "\n" not in message and f"pid {holder.pid} on {socket.gethostname()}" in message
        assert "wait_for_lock=true" in message
    finally:
        holder.kill()
        holder.wait()
    assert not artifacts.is_complete(cfg.stage_dir("train"))


def test_wait_for_lock_queues_behind_the_holder(tmp_path):
    cfg = small_config(tmp_path, "wait_for_lock=true")
    holder = _hold(cfg.stage_dir("train"), 3)
    started = time.perf_counter()
    run_stage(cfg)
    assert time.perf_counter() - started > 1.5 and holder.wait(timeout=30) == 0
    assert artifacts.is_complete(cfg.stage_dir("train"))


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path):
    cfg = small_config(tmp_path)
    holder = _hold(cfg.stage_dir("train"), 60)
    holder.kill()  # kill -9: its lock file stays
    holder.wait()
    assert lock_path(cfg.stage_dir("train")).exists()
    run_stage(cfg)
    assert artifacts.is_complete(cfg.stage_dir("train")) and not lock_path(cfg.stage_dir("train")).exists()


def test_two_cli_runs_at_once_the_second_refuses_in_one_line(tmp_path):
    args = ["-m", "reasondiff.train", "+exp=tiny", f"output_root={tmp_path}", "train.data=synthetic",
            "model.build_tiny=false", "hardware.device=cpu", "train.synthetic.d_model=16", "train.n_latents=64",
            "train.batch_size=64", "train.n_tokens=6400000", "train.eval_tokens=128"]
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = lock_path(tmp_path / "tiny" / "train@synthetic")
        deadline = time.time() + 120
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists()
        second = subprocess.run([sys.executable, *args, "train.l1_coeff=4"], cwd=REPO, env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0] and "in use by another run" in errors[0]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def test_a_lock_file_names_its_holder(tmp_path):
    with StageLock(tmp_path / "stage") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not lock.path.exists()
