"""Sweep configs compose, each job is a sibling run, and the summary has one labelled point per run."""

from __future__ import annotations

import csv

import pytest
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import artifacts
from reasondiff.train.sweep_summary import MAIN, collect_runs, main, write_sweep_summary

SMALL = ("train.data=synthetic", "model.build_tiny=false", "hardware.device=cpu", "train.synthetic.d_model=16",
         "train.n_latents=64", "train.batch_size=128", "train.n_tokens=12800", "train.eval_tokens=512",
         "train.lr=3e-3")


def test_sweep_configs_compose():
    assert make_config("+exp=tiny", "+sweep=k").train.variant == "batchtopk"
    assert make_config("+exp=tiny", "+sweep=l1_coeff").train.variant == "l1"


def test_summary_labels_the_main_run_omits_what_does_not_apply_and_adds_ce(tmp_path, capsys):
    dirs = [run_stage(make_config("+exp=tiny", f"output_root={tmp_path}", *SMALL, "train.l1_coeff=2.0"))]
    for coeff in (0.5, 2.0, 8.0):  # λ=2 is both the main run's and a sweep job's
        cfg = make_config("+exp=tiny", f"output_root={tmp_path}", *SMALL, f"train.l1_coeff={coeff}",
                          f"run=l1_coeff={coeff:g}")
        dirs.append(run_stage(cfg))
    exp_dir = tmp_path / "tiny"
    assert [d.name for d in dirs] == ["train@synthetic", "train@synthetic+l1_coeff=0.5", "train@synthetic+l1_coeff=2",
                                      "train@synthetic+l1_coeff=8"]
    assert all(d.parent == exp_dir for d in dirs)  # siblings, none inside another
    (exp_dir / "train@unfinished").mkdir()
    (exp_dir / "train@unfinished" / "summary.json").write_text("{}")  # no COMPLETED: ignored
    # an analysed job contributes CE recovered (what analyze@<run> wrote)
    analyzed = exp_dir / "analyze@synthetic+l1_coeff=8"
    artifacts.write_text(analyzed / "ce_recovery.csv",  # the sweep reads the paper's convention on general text
                         "text,convention,model,ce_recovered\n"
                         "general,sink_preserving,base,0.5\ngeneral,sink_preserving,tuned,0.4\n"
                         "general,paper,base,0.91\ngeneral,paper,tuned,0.87\n"
                         "reasoning,paper,base,0.7\nreasoning,paper,tuned,0.6\n")
    artifacts.mark_complete(analyzed)

    rows = collect_runs(exp_dir)
    assert sorted(r["run"] for r in rows) == ["synthetic", "synthetic+l1_coeff=0.5", "synthetic+l1_coeff=2",
                                              "synthetic+l1_coeff=8"]
    sweep = [r for r in rows if "+" in r["run"]]
    assert [r["l1_coeff"] for r in sweep] == [8.0, 2.0, 0.5]  # sorted by L0: the larger penalty is sparser
    assert sweep[0]["l0"] < sweep[-1]["l0"] and sweep[0]["fvu"] > sweep[-1]["fvu"]
    assert all(r["k"] is None for r in rows)  # k is not an L1 setting
    assert (sweep[0]["ce_recovered_base"], sweep[0]["ce_recovered_tuned"]) == (0.91, 0.87)
    assert all(r.get("ce_recovered_base") is None for r in rows[1:] if r["run"] != "synthetic+l1_coeff=8")
    csv_path, png_path = write_sweep_summary(exp_dir)
    assert csv_path.parent == exp_dir  # outside every run: no overwrite=true of a run removes it
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and {r["k"] for r in table} == {""}
    assert png_path.stat().st_size > 1000
    main([str(exp_dir / "train@synthetic")])  # a run dir works too (its experiment is summarised)
    assert "ce_recovered_base" in capsys.readouterr().out


def test_main_run_is_labelled_main(tmp_path):
    run_stage(make_config("+exp=tiny", f"output_root={tmp_path}", *SMALL[1:], "train.data=synthetic"))
    (tmp_path / "tiny" / "train@synthetic").rename(tmp_path / "tiny" / "train")
    assert [r["run"] for r in collect_runs(tmp_path / "tiny")] == [MAIN]


def test_summary_of_an_empty_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished train runs"):
        write_sweep_summary(tmp_path)


def _fake_sweep(exp_dir):
    """Finished train runs as the stage leaves them (summary.json, config.json, COMPLETED, runs.json)."""
    runs = {}
    for run, coeff, l0, fvu in (("", 2.0, 20.0, 0.1), ("l1_coeff=0.5", 0.5, 60.0, 0.05), ("l1_coeff=8", 8.0, 5.0, 0.3)):
        run_dir = exp_dir / (f"train@{run}" if run else "train")
        artifacts.write_json(run_dir / "summary.json", {"variant": "l1", "l1_coeff": coeff, "l0": l0, "fvu": fvu,
                                                        "n_latents": 64})
        artifacts.write_json(run_dir / "config.json", {"data": "store"})
        artifacts.mark_complete(run_dir)
        if run:
            runs[run_dir.name] = {"stage": "train", "run": run,
                                  "overrides": ["+exp=tiny", "exp_name=pair", f"train.l1_coeff={coeff:g}"]}
    artifacts.write_json(exp_dir / "runs.json", runs)
    analyzed = exp_dir / "analyze"
    artifacts.write_text(analyzed / "ce_recovery.csv", "text,convention,model,ce_recovered\n"
                                                       "general,paper,base,0.99\ngeneral,paper,tuned,0.97\n")
    artifacts.mark_complete(analyzed)


def test_the_sweep_names_runs_without_ce_and_the_command_that_fills_them(tmp_path, caplog, monkeypatch):
    """Issue 33.3: the CE panel was empty for every l1_coeff job with nothing saying why; 33.6: the
    rightmost label ("λ=0.5") was cut at the panel's edge."""
    import logging

    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig))
    exp_dir = tmp_path / "pair"
    _fake_sweep(exp_dir)
    with caplog.at_level(logging.INFO, logger="reasondiff.train.sweep_summary"):
        write_sweep_summary(exp_dir)
    commands = [r.getMessage().strip() for r in caplog.records if "reasondiff.analyze" in r.getMessage()]
    assert commands == ["python -m reasondiff.analyze +exp=tiny exp_name=pair train.l1_coeff=8 run=l1_coeff=8",
                        "python -m reasondiff.analyze +exp=tiny exp_name=pair train.l1_coeff=0.5 run=l1_coeff=0.5"]
    assert any("CE recovered is empty for 2 of 3 runs" in r.getMessage() for r in caplog.records)
    fig = closed[0]
    fvu_ax, ce_ax = fig.axes[:2]
    assert "not analysed yet: λ=8, λ=0.5" in ce_ax.get_title()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fvu_ax.get_window_extent(renderer)
    labels = [t for t in fvu_ax.texts if t.get_text().startswith("λ=")]
    assert {t.get_text() for t in labels} == {"λ=0.5", "λ=8"}
    for text in labels:  # every point's label lies inside its panel
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
    monkeypatch.undo()
    plt.close(fig)
