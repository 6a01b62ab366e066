"""A pass over many contexts in batches whose running sums survive a kill: scan and analyze stream
their meters through one, saving them every few batches and resuming where the file says."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from reasondiff.core import artifacts

log = logging.getLogger(__name__)


class PassState:
    """A pass's meters (`parts`: objects with state_dict/load_state_dict) plus how many batches they
    cover, saved atomically; resumed only when the fingerprint (text, models, settings) is the one it
    was saved with."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], parts: dict[str, Any]) -> None:
        self.path, self.fingerprint, self.parts = path, fingerprint, parts
        self.batches_done = 0
        self.finished = False

    def try_resume(self) -> None:
        if not self.path.is_file():
            return
        state = torch.load(self.path, weights_only=True)
        if state.get("fingerprint") != self.fingerprint or set(state["parts"]) != set(self.parts):
            log.info("%s was saved for other settings or text: starting this pass over", self.path.name)
            return
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        self.batches_done, self.finished = int(state["batches_done"]), bool(state["finished"])
        log.info("resuming %s after %d batches%s", self.path.name, self.batches_done,
                 " (finished)" if self.finished else "")

    def save(self) -> None:
        state = {"fingerprint": self.fingerprint, "batches_done": self.batches_done, "finished": self.finished,
                 "parts": {name: part.state_dict() for name, part in self.parts.items()}}
        artifacts.atomic_save(self.path, lambda tmp: torch.save(state, tmp))


def resumable_pass(state: PassState, n_contexts: int, batch_size: int, step: Callable[[slice], None], *,
                   checkpoint_every: int, desc: str) -> dict[str, Any]:
    """Run `step(rows)` over the contexts in batches, resuming from and saving to `state`."""
    state.try_resume()
    n_batches = math.ceil(n_contexts / batch_size)
    if not state.finished:
        with tqdm(total=n_batches, initial=state.batches_done, desc=desc, unit="batch") as bar:
            for b in range(state.batches_done, n_batches):
                step(slice(b * batch_size, min(n_contexts, (b + 1) * batch_size)))
                state.batches_done = b + 1
                bar.update(1)
                if state.batches_done % checkpoint_every == 0 and state.batches_done < n_batches:
                    state.save()
        state.finished = True
        state.save()
    return state.parts
