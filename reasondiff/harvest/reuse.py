"""Harvest a null pair from the base rows of the main store (reasondiff.app.reuse says when).

`ReusedBaseHarvester` has PairedHarvester's call: tokens in, kept rows [n, 2, d] out. It runs only
the tuned model (none at all when the "tuned" model is the base model itself: base_vs_base) and
takes the base half of each row, in order, from the main store, whose contexts are the same stream
of the same corpus; every reused row's token id is checked against this run's own tokens, so a
stream that drifted (another corpus file under the same name) stops the run instead of pairing
activations of different text.
"""

from __future__ import annotations

import numpy as np
import torch

from reasondiff.core.errors import UserError
from reasondiff.harvest.store import ActivationStore
from reasondiff.lm.hooks import capture, select_positions


class BaseRowReader:
    """Rows of the base model (column 0) of a store, read in storage order from `start`."""

    def __init__(self, store: ActivationStore, start: int = 0) -> None:
        self.store, self.position = store, start
        self._arrays = store._arrays()
        self._tokens = store.tokens()

    def take(self, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """(base activations [n, d] float32, their token ids [n]) of the next n rows."""
        if self.position + n > self.store.n_tokens:
            raise UserError(f"{self.store.directory}: the main store ran out of base rows at {self.position + n} "
                            "tokens; set harvest.reuse_base=false")
        index = torch.arange(self.position, self.position + n)
        rows = self.store.gather(index, arrays=self._arrays)[:, 0]
        tokens = np.asarray(self._tokens[self.position:self.position + n])
        self.position += n
        return rows, tokens


class ReusedBaseHarvester:
    """PairedHarvester's interface, with the base model's rows read from the main store."""

    def __init__(self, tuned_model, hook, reader: BaseRowReader, *, drop_first_position: bool,
                 dtype: torch.dtype) -> None:
        self.tuned, self.hook, self.reader = tuned_model, hook, reader
        self.drop_first_position, self.dtype = drop_first_position, dtype
        self.n_massive_dropped = 0
        self.forwards_saved = 0
        """Contexts the base model did not have to run (the tuned model's too, for base_vs_base)."""

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        tuned = None if self.tuned is None else capture(self.tuned, input_ids, attention_mask, self.hook)
        device = tuned.device if tuned is not None else torch.device("cpu")
        shape_only = tuned if tuned is not None else input_ids.new_zeros((*input_ids.shape, 1))
        keep, _ = select_positions(shape_only, attention_mask, drop_first_position=self.drop_first_position,
                                   max_norm_ratio=None)
        # the main store ends where its n_tokens did (inside a batch): this run, no longer, stops there too
        n = min(int(keep.sum()), self.reader.store.n_tokens - self.reader.position)
        token_ids = input_ids.to(keep.device)[keep][:n]
        base, stored_tokens = self.reader.take(n)
        if not np.array_equal(stored_tokens, token_ids.cpu().numpy()):
            raise UserError(f"{self.reader.store.directory}: its tokens differ from this run's at rows "
                            f"{self.reader.position - len(stored_tokens)}..; the corpus changed since the main "
                            "harvest: set harvest.reuse_base=false (or redo the main harvest)")
        base = base.to(device=device, dtype=self.dtype if tuned is None else tuned.dtype)
        self.forwards_saved += int(input_ids.shape[0])
        return torch.stack((base, base if tuned is None else tuned[keep][:n]), dim=1), token_ids
