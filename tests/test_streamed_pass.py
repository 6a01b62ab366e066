"""A resumable pass saves every `checkpoint_every` batches and every `checkpoint_minutes`, and a
pass killed after a save of either rule resumes to the sums of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from reasondiff.core.streamed_pass import ContextSums, PassState, resumable_pass

N_CONTEXTS, BATCH = 14, 2  # 7 batches
MINUTES_PER_BATCH = 6.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingState(PassState):
    """Records (batches_done, finished) at every save."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.saves: list[tuple[int, bool]] = []

    def save(self) -> None:
        self.saves.append((self.batches_done, self.finished))
        super().save()


def run(path, clock: FakeClock, *, checkpoint_every: int, checkpoint_minutes: float, kill_at: int | None = None,
        ran: list[int] | None = None) -> tuple[RecordingState, ContextSums]:
    """One pass whose batch b adds a value of its contexts (and a float64 rounding pattern) to the sums;
    each batch takes MINUTES_PER_BATCH on `clock`; batch `kill_at` raises before it is done."""
    meter = ContextSums(("x", "x2"), N_CONTEXTS, what="test")
    state = RecordingState(path, {"text": "abc"}, {"sums": meter})

    def step(rows: slice) -> None:
        batch = rows.start // BATCH
        clock.now += 60 * MINUTES_PER_BATCH
        if batch == kill_at:
            raise KeyboardInterrupt("killed")
        if ran is not None:
            ran.append(batch)
        contexts = torch.arange(rows.start, rows.stop)
        value = torch.sin(contexts.double() + 0.1)
        meter.add_sums(contexts, (), {"x": value, "x2": value / 3})

    resumable_pass(state, N_CONTEXTS, BATCH, step, checkpoint_every=checkpoint_every,
                   checkpoint_minutes=checkpoint_minutes, desc="test pass", clock=clock)
    return state, meter


def test_the_time_rule_saves_between_the_count_rules_saves(tmp_path):
    # 6 min per batch, a save when 10 min have passed since the last one: after batches 2, 4, 6, then the end
    state, _ = run(tmp_path / "a.pt", FakeClock(), checkpoint_every=100, checkpoint_minutes=10)
    assert state.saves == [(2, False), (4, False), (6, False), (7, True)]
    # with the count rule: a count save resets the time since the last save
    state, _ = run(tmp_path / "b.pt", FakeClock(), checkpoint_every=3, checkpoint_minutes=10)
    assert state.saves == [(2, False), (3, False), (5, False), (6, False), (7, True)]
    # 0 turns the time rule off: only the count rule and the end
    state, _ = run(tmp_path / "c.pt", FakeClock(), checkpoint_every=3, checkpoint_minutes=0)
    assert state.saves == [(3, False), (6, False), (7, True)]


@pytest.mark.parametrize("kill_at", [3, 5])
def test_a_pass_killed_after_a_time_save_resumes_to_the_uninterrupted_sums(tmp_path, kill_at):
    _, uninterrupted = run(tmp_path / "whole.pt", FakeClock(), checkpoint_every=100, checkpoint_minutes=10)

    path = tmp_path / "partial.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, FakeClock(), checkpoint_every=100, checkpoint_minutes=10, kill_at=kill_at)
    saved = torch.load(path, weights_only=True)
    # only the time rule saved (checkpoint_every=100 > 7 batches): the last even batch before the kill
    last_save = kill_at - kill_at % 2
    assert saved["batches_done"] == last_save and not saved["finished"]

    ran: list[int] = []
    state, resumed = run(path, FakeClock(), checkpoint_every=100, checkpoint_minutes=10, ran=ran)
    assert ran == list(range(last_save, 7))  # the saved batches are not run again
    assert state.finished and torch.equal(resumed.sums, uninterrupted.sums)


def test_without_the_time_rule_a_short_pass_loses_everything_to_a_kill(tmp_path):
    """The case the time rule exists for: fewer batches than checkpoint_every, each taking minutes."""
    path = tmp_path / "partial.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, FakeClock(), checkpoint_every=100, checkpoint_minutes=0, kill_at=5)
    assert not path.exists()
