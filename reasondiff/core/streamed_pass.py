"""A pass over many contexts in batches whose running sums survive a kill: scan, analyze and
intervene stream their meters through one, saving them every few batches or minutes and resuming where the file says.

Under torchrun the batches are split into contiguous blocks, one per rank; each rank saves and
resumes its own part (`partial_<text>.rank<r>.pt`), and when every rank has finished, the meters'
states are gathered and merged on every rank (`merge_states`: sums added, per-context arrays added
(each context's entries come from the one rank that ran it, so they are the single process's
numbers exactly and so are the bootstrap intervals computed from them), maxima maxed). A meter
whose state is not a sum says how to merge it: a `MERGE = {key: "max" | "same"}` class attribute,
or a `merge_states(states)` method (top-k lists)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reasondiff.core import artifacts, distributed
from reasondiff.core.progress import Progress

log = logging.getLogger(__name__)


class ContextSums:
    """Named sums per context (the first axis) and per cell of the other axes, in float64: a meter
    whose every number is a sum (CE recovery, interventions), so a pass checkpoints it as is and
    torchrun ranks' states add (`merge_states`). Keeping them per context is what the bootstrap over
    contexts resamples."""

    def __init__(self, keys: tuple[str, ...], n_contexts: int, *cells: int, what: str) -> None:
        self.keys, self.what = keys, what
        self.sums = torch.zeros(n_contexts, *cells, len(keys), dtype=torch.float64)

    def add_sums(self, contexts: torch.Tensor, cell: tuple[int, ...], values: dict[str, torch.Tensor]) -> None:
        """values[key]: [B] per-context sums for the contexts `contexts` (global indices, distinct)."""
        for key, value in values.items():
            self.sums[(contexts.cpu(), *cell, self.keys.index(key))] += value.detach().double().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["sums"].shape != self.sums.shape:
            raise ValueError(f"{self.what} sums {tuple(state['sums'].shape)} were saved for other contexts or cells "
                             f"than {tuple(self.sums.shape)}")
        self.sums.copy_(state["sums"])


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
                   checkpoint_every: int, checkpoint_minutes: float, desc: str,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run `step(rows)` over the contexts in batches, resuming from and saving to `state`; under
    torchrun each rank runs its block of the batches and every rank returns the merged meters.

    The state is saved after every `checkpoint_every`-th batch and after any batch that ends at
    least `checkpoint_minutes` after the last save (0: no time rule), so a pass whose batches take
    minutes (intervene) loses at most about that much work to a kill. Either rule saves at a batch
    boundary, which is all an exact resume needs: the order of the batches is fixed."""
    n_batches = math.ceil(n_contexts / batch_size)
    mine = distributed.shard_indices(n_batches)
    if distributed.is_distributed():
        state.path = state.path.with_name(f"{state.path.stem}{distributed.rank_suffix()}{state.path.suffix}")
    state.try_resume()
    if not state.finished:
        last_save = clock()
        with Progress(total=len(mine), initial=state.batches_done, desc=desc, unit="batch") as bar:
            for done in range(state.batches_done, len(mine)):
                b = mine[done]
                step(slice(b * batch_size, min(n_contexts, (b + 1) * batch_size)))
                state.batches_done = done + 1
                bar.update(1)
                due = state.batches_done % checkpoint_every == 0 or \
                    (checkpoint_minutes > 0 and clock() - last_save >= 60 * checkpoint_minutes)
                if due and state.batches_done < len(mine):
                    state.save()
                    last_save = clock()
        state.finished = True
        state.save()
    if distributed.is_distributed():
        everyone = distributed.all_gather({name: part.state_dict() for name, part in state.parts.items()})
        for name, part in state.parts.items():
            states = [ranks[name] for ranks in everyone]
            if hasattr(part, "merge_states"):
                part.merge_states(states)
            else:
                part.load_state_dict(merge_states(states, getattr(part, "MERGE", {})))
    return state.parts


def merge_states(states: list[Any], rules: dict[str, str], key: str = "") -> Any:
    """One state from the ranks' states of a meter: tensors and numbers added (None = nothing yet),
    except keys whose rule is "max" (maxed) or "same" (must agree: latent ids, directions);
    nested dicts merged key by key (a nested key's rule is named by its last part)."""
    rule = rules.get(key.rsplit(".", 1)[-1], "sum")
    present = [s for s in states if s is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        return {k: merge_states([s.get(k) if s is not None else None for s in states], rules, k) for k in first}
    if rule == "same" or isinstance(first, (str, list, tuple)):
        if any((not torch.equal(s, first)) if torch.is_tensor(s) else s != first for s in present):
            raise ValueError(f"ranks disagree on {key}")
        return first
    if rule == "max":
        out = first.clone() if torch.is_tensor(first) else first
        for s in present[1:]:
            out = torch.maximum(out, s) if torch.is_tensor(out) else max(out, s)
        return out
    out = first.clone() if torch.is_tensor(first) else first
    for s in present[1:]:
        out = out + s
    return out
