"""Provenance (issue 26.5): the commit a stage STARTED from, whether the tree was dirty, a hash of
the diff, and one warning line when it was."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo), "PATH": "/usr/bin:/bin"})


def test_git_state_tells_clean_from_dirty_and_hashes_the_diff(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("outputs/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    clean = artifacts.git_state(repo / "pkg")
    assert len(clean["commit"]) == 40 and clean["dirty"] is False and clean["diff_sha256"] is None
    assert artifacts.dirty_warning(clean, "scan") is None

    (repo / "outputs").mkdir()
    (repo / "outputs" / "big.bin").write_text("ignored files are not code")
    assert artifacts.git_state(repo / "pkg")["dirty"] is False

    (repo / "pkg" / "a.py").write_text("x = 2\n")
    edited = artifacts.git_state(repo / "pkg")
    assert edited["commit"] == clean["commit"] and edited["dirty"] is True and len(edited["diff_sha256"]) == 64
    (repo / "pkg" / "a.py").write_text("x = 3\n")
    assert artifacts.git_state(repo / "pkg")["diff_sha256"] != edited["diff_sha256"]  # another diff, another hash

    # an untracked module outside the cwd changes what runs too: seen from a subdirectory
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "new.py").write_text("y = 1\n")
    untracked = artifacts.git_state(repo / "pkg")
    assert untracked["dirty"] is True
    (repo / "new.py").write_text("y = 2\n")
    assert artifacts.git_state(repo / "pkg")["diff_sha256"] != untracked["diff_sha256"]
    line = artifacts.dirty_warning(untracked, "scan")
    assert "\n" not in line and "uncommitted" in line and untracked["commit"][:10] in line


def test_git_state_outside_a_checkout_is_unknown(tmp_path):
    assert artifacts.git_state(tmp_path) == {"commit": None, "dirty": None, "diff_sha256": None}


def test_stage_records_the_commit_at_its_start_and_warns_when_dirty(tmp_path, monkeypatch, caplog):
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "train.data=synthetic",
                      config_name="train")
    states = iter([{"commit": "a" * 40, "dirty": True, "diff_sha256": "d" * 64},
                   {"commit": "b" * 40, "dirty": False, "diff_sha256": None}])
    monkeypatch.setattr(artifacts, "git_state", lambda cwd=None: next(states))

    def work(cfg, ctx):
        return {}  # a commit made while the stage ran would be the second state

    with caplog.at_level(logging.WARNING, logger="reasondiff"):
        out = run_stage(cfg, "train", work)
    manifest = artifacts.read_json(out / artifacts.MANIFEST)
    assert manifest["git_commit"] == "a" * 40 and manifest["git_dirty"] is True
    assert manifest["git_diff_sha256"] == "d" * 64
    warnings = [r.getMessage() for r in caplog.records if "uncommitted changes" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "aaaaaaaaaa" in warnings[0]
