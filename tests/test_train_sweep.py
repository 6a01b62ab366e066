"""Sweep configs compose, each job gets its own directory, and the summary has one point per run."""

from __future__ import annotations

import csv

import pytest
from conftest import make_config

from reasondiff.stage import run_stage
from reasondiff.train.sweep_summary import collect_runs, main, write_sweep_summary

SMALL = ("train.data=synthetic", "model.build_tiny=false", "hardware.device=cpu", "train.synthetic.d_model=16",
         "train.n_latents=64", "train.batch_size=128", "train.n_tokens=12800", "train.eval_tokens=512",
         "train.lr=3e-3")


def test_sweep_configs_compose():
    assert make_config("+exp=tiny", "+sweep=k").train.variant == "batchtopk"
    assert make_config("+exp=tiny", "+sweep=l1_coeff").train.variant == "l1"


def test_summary_has_one_point_per_run_and_l0_falls_with_l1_coeff(tmp_path, capsys):
    dirs = []
    for coeff in (0.5, 8.0):
        cfg = make_config("+exp=tiny", f"output_root={tmp_path}", *SMALL, f"train.l1_coeff={coeff}",
                          f"stage_subdir=l1_coeff_{coeff}")
        dirs.append(run_stage(cfg))
    assert len(set(dirs)) == 2 and all(d.parent == tmp_path / "tiny" / "train" / "synthetic" for d in dirs)
    train_dir = tmp_path / "tiny" / "train"
    (train_dir / "unfinished").mkdir()
    (train_dir / "unfinished" / "summary.json").write_text("{}")  # no COMPLETED: ignored
    rows = collect_runs(train_dir)
    assert [r["l1_coeff"] for r in rows] == [8.0, 0.5]  # sorted by L0: the larger penalty is sparser
    assert rows[0]["l0"] < rows[1]["l0"] and rows[0]["fvu"] > rows[1]["fvu"]
    csv_path, png_path = write_sweep_summary(train_dir)
    with open(csv_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert png_path.stat().st_size > 1000
    main([str(train_dir)])
    assert "l0,fvu" in capsys.readouterr().out


def test_summary_of_an_empty_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished train runs"):
        write_sweep_summary(tmp_path)
