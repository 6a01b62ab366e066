"""Progress where stderr is not a terminal (nohup, Slurm, torchrun into a file): log lines at most
every `hardware.progress_log_seconds`, none on other ranks, tqdm's bar unchanged on a terminal."""

from __future__ import annotations

import io
import logging

import pytest
from conftest import make_config

from reasondiff.app.stage import run_stage
from reasondiff.core import progress
from reasondiff.core.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.__name__]


@pytest.fixture(autouse=True)
def info_logs(caplog, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO, logger=progress.__name__)


def test_without_a_terminal_each_step_is_a_log_line_with_elapsed_and_time_left(caplog):
    clock, stream = FakeClock(), io.StringIO()
    with Progress(total=4, desc="intervene reasoning (81 interventions)", unit="batch", interval=0, clock=clock,
                  file=stream) as bar:
        for _ in range(3):
            clock.now += 4 * 60
            bar.update(1)
    assert lines(caplog) == [
        "intervene reasoning (81 interventions): 1/4 batches, 4m elapsed, ~12m left",
        "intervene reasoning (81 interventions): 2/4 batches, 8m elapsed, ~8m left",
        "intervene reasoning (81 interventions): 3/4 batches, 12m elapsed, ~4m left",
    ]
    assert stream.getvalue() == ""  # no tqdm frames in the log


def test_the_interval_spaces_the_lines_and_the_last_one_says_where_it_ended(caplog):
    clock = FakeClock()
    with Progress(total=32, desc="crosscoder", unit="step", initial=0, interval=60, clock=clock,
                  file=io.StringIO()) as bar:
        for step in range(32):
            clock.now += 10
            bar.update(1)
            bar.set_postfix(l2=f"{0.5 / (step + 1):.3g}")
    got = lines(caplog)
    # one line a minute (at steps 6, 12, ..., 30), not one per step, then the last step
    assert len(got) == 6
    assert got[0] == "crosscoder: 6/32 steps, 1m elapsed, ~4m20s left (l2=0.1)"
    assert got[-1] == "crosscoder: 32/32 steps, done in 5m20s (l2=0.0156)"


def test_a_resumed_count_estimates_from_this_process_only(caplog):
    clock = FakeClock()
    with Progress(total=1_000_000, initial=500_000, desc="harvest", unit="tok", unit_scale=True, interval=0,
                  clock=clock, file=io.StringIO()) as bar:
        clock.now += 100
        bar.update(100_000)
    # 100k tokens in 100 s here (the 500k stored before are not counted in the rate): 400 s left
    assert lines(caplog) == ["harvest: 600k/1.00M tok, 1m40s elapsed, ~6m40s left"]


def test_short_work_says_nothing_and_iteration_yields_every_item(caplog):
    clock = FakeClock()
    items = list(Progress(range(5), desc="tokenizing", unit="row", interval=60, clock=clock, file=io.StringIO()))
    assert items == [0, 1, 2, 3, 4] and lines(caplog) == []
    with Progress(total=3, desc="small", interval=0, clock=clock, disable=True, file=io.StringIO()) as bar:
        clock.now += 100
        bar.update(3)
    assert lines(caplog) == []


def test_only_the_main_process_reports(caplog, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    clock, stream = FakeClock(), io.StringIO()
    with Progress(total=4, desc="scan general", unit="batch", interval=0, clock=clock, file=stream) as bar:
        clock.now += 60
        bar.update(2)
    assert lines(caplog) == [] and stream.getvalue() == ""
    terminal = Terminal()
    with Progress(total=4, desc="scan general", unit="batch", file=terminal) as bar:
        bar.update(2)
    assert terminal.getvalue() == ""


def test_on_a_terminal_the_bar_is_tqdms_and_nothing_is_logged(caplog):
    terminal, clock = Terminal(), FakeClock()
    with Progress(total=4, desc="bench tuned", unit="q", interval=0, clock=clock, file=terminal) as bar:
        clock.now += 600
        bar.update(4)
    assert lines(caplog) == []
    assert "bench tuned" in terminal.getvalue() and "4/4" in terminal.getvalue()


def test_the_default_interval_comes_from_the_hardware_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 60.0)
    cfg = make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false", "train.data=synthetic",
                      "hardware.progress_log_seconds=300", config_name="train")
    seen = []
    run_stage(cfg, "train", lambda cfg, ctx: seen.append(Progress(total=1, file=io.StringIO()).interval) or {})
    assert seen == [300.0]
    with pytest.raises(Exception, match="progress_log_seconds must be >= 0"):
        make_config("+exp=tiny", "hardware.progress_log_seconds=-1", config_name="train")
