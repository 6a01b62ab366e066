"""Progress of long work: tqdm's bar on a terminal, `logging` lines where there is none.

tqdm turns itself off when its stream is not a terminal (`disable=None`), and a bar left on writes
carriage-return frames into the log. Under nohup, Slurm or torchrun a stage that runs for an hour
(intervene: minutes per batch) then writes nothing until it ends. `Progress` keeps tqdm's bar where
stderr is a terminal (or a notebook widget) and, where it is not, logs an INFO line at most every
`hardware.progress_log_seconds` ("intervene reasoning (81 interventions): 3/4 batches, 12m elapsed,
~4m left"), and a last one when it closes if it logged any. Only the main torchrun process reports,
either way: the ranks run the same loop on their shares.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from reasondiff.core import distributed

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0
"""Seconds between two progress lines in a log; run_stage sets it from `hardware.progress_log_seconds`."""


def set_log_interval(seconds: float) -> None:
    global LOG_INTERVAL_S
    LOG_INTERVAL_S = float(seconds)


def on_terminal(stream: Any) -> bool:
    """Whether a tqdm bar on `stream` is seen by a person: a terminal, or a notebook (tqdm.auto's widget)."""
    if tqdm.__module__ == "tqdm.notebook":
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """tqdm's interface as the stages use it (`update`, `set_postfix`, a context manager, iteration
    over `iterable`), with a log line in place of the bar where stderr is not a terminal.

    `disable=True` silences it (work too small to report); `interval` (seconds, default
    LOG_INTERVAL_S) and `clock` are for tests. Other keywords go to tqdm (mininterval, smoothing, ...)."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, unit_scale: bool = False, disable: bool = False,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic, **tqdm_kwargs: Any) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.n = self.initial = initial
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self.bar = None
        self.logs = False
        if disable or not distributed.is_main_process():
            return
        if on_terminal(tqdm_kwargs.get("file") or sys.stderr):
            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, **tqdm_kwargs)
        else:
            self.logs = True
            self.started = self.last_logged = clock()
            self.logged_n: float | None = None

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.logs and self.clock() - self.last_logged >= self.interval:
            self._log()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.logs and self.logged_n is not None and self.logged_n != self.n:
            self._log()  # the log says where a reported piece of work ended (or was stopped)
        self.logs = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def line(self) -> str:
        """The log line: done/total, elapsed, an estimate of what is left from this process's rate."""
        now = self.clock()
        elapsed = now - self.started
        count = self._count(self.n)
        if self.total is not None:
            count += f"/{self._count(self.total)}"
        parts = [f"{count} {plural(self.unit)}", f"{duration(elapsed)} elapsed"]
        done_here = self.n - self.initial
        if self.total is not None and self.n >= self.total:
            parts[-1] = f"done in {duration(elapsed)}"
        elif self.total is not None and done_here > 0:
            parts.append(f"~{duration((self.total - self.n) * elapsed / done_here)} left")
        postfix = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {', '.join(parts)}" + (f" ({postfix})" if postfix else "")

    def _log(self) -> None:
        log.info("%s", self.line())
        self.last_logged, self.logged_n = self.clock(), self.n

    def _count(self, n: float) -> str:
        if self.unit_scale:
            return tqdm.format_sizeof(n)
        return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


ABBREVIATIONS = ("it", "q", "tok")
"""Units that read the same for one and many (tqdm's defaults and the stages' short units)."""


def plural(unit: str) -> str:
    """batch -> batches, step -> steps; abbreviations stay as they are."""
    if unit in ABBREVIATIONS:
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def duration(seconds: float) -> str:
    """45s, 1m40s, 12m, 1h05m: a log line's resolution."""
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        minutes, rest = divmod(s, 60)
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    minutes = round(s / 60)
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
