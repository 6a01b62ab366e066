"""The held-out split of train's final evaluation (summary.json): numbers on activations the
crosscoder never trained on, the way SAE/crosscoder papers report L0, FVU and explained variance.

- `train.data=store`: the LAST shards of harvest's store (the last documents harvested), as few as
  hold `train.eval_tokens` tokens, are kept out of training (at most half the store; a store of one
  shard cannot be split, and is evaluated on its training data with a warning).
- `train.data=live`: the corpus documents after the ones the training stream touched (packed exactly
  as harvest packs them); when training went round the whole corpus there are none, and the
  evaluation reads a fresh stream of the training data, with a warning.
- `train.data=synthetic`: fresh draws of the planted features (another seed).
summary.json says which (`eval_split`, `eval_source`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """What the final evaluation reads, and how summary.json describes it."""

    source: Any
    n_tokens: int
    batch_size: int
    info: dict[str, Any] = field(default_factory=dict)


class TensorSource:
    """Fixed activations [n, 2, d] served like a store: endless shuffled batches, b a function of (seed, b)."""

    def __init__(self, acts: torch.Tensor, scaling_factors: torch.Tensor):
        self.acts, self.scaling_factors = acts, scaling_factors
        self.d_model, self.n_tokens = int(acts.shape[-1]), int(acts.shape[0])

    def iter_batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        per_epoch = max(1, self.n_tokens // batch_size)
        b = start_batch
        while True:
            epoch, i = divmod(b, per_epoch)
            order = torch.randperm(self.n_tokens, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            yield self.acts[order[i * batch_size:(i + 1) * batch_size]]
            b += 1


def _sizes(available: int, eval_tokens: int, batch_size: int) -> tuple[int, int]:
    """(n_tokens, batch_size) that read each held-out row at most once."""
    n = min(eval_tokens, available)
    batch = max(1, min(batch_size, n))
    return max(batch, (n // batch) * batch), batch


def split_store(store, eval_tokens: int, batch_size: int) -> tuple[Any, HeldOut | None]:
    """(store of the training shards, held-out evaluation) — or (store, None) when it cannot be split."""
    manifest = getattr(store, "manifest", None)
    shards = list(manifest["shards"]) if isinstance(manifest, dict) and "shards" in manifest else []
    total = sum(int(s["n_tokens"]) for s in shards)
    held, k = 0, 0
    while k < len(shards) and held < eval_tokens:
        k += 1
        held += int(shards[-k]["n_tokens"])
    if not shards or k >= len(shards) or held > total / 2:
        log.warning("train: the activation store (%d shard(s), %d tokens) cannot spare its last shards for a held-out "
                    "evaluation of %d tokens: summary.json is on training data (eval_split=training_data)",
                    len(shards), total, eval_tokens)
        return store, None
    train = replace(store, manifest={**manifest, "shards": shards[:-k]})
    heldout = replace(store, manifest={**manifest, "shards": shards[-k:]})
    n, batch = _sizes(held, eval_tokens, batch_size)
    first = int(shards[-k].get("index", len(shards) - k))
    info = {"eval_split": "heldout_shards", "eval_source": f"the last {k} of {len(shards)} store shards "
            f"(from shard {first}; {held} tokens, never trained on)", "train_tokens_available": total - held}
    log.info("train: %s held out for the final evaluation", info["eval_source"])
    return train, HeldOut(source=heldout, n_tokens=n, batch_size=batch, info=info)


def heldout_live(cfg, source, *, total_steps: int, batch_size: int, eval_tokens: int) -> HeldOut | None:
    """Activations of corpus documents after those the live training stream touched (None when it
    went round the whole corpus or no text is left)."""
    from reasondiff import harvest
    if not hasattr(source, "documents_touched"):
        return None
    documents = source.documents_touched(total_steps, batch_size)
    if documents is None:
        log.warning("train: the live stream went round the whole corpus: no held-out documents, summary.json is on "
                    "training data (eval_split=training_data)")
        return None
    h = cfg.harvest
    per_context = h.context_length - int(h.drop_first_position)
    n_contexts = math.ceil(1.05 * eval_tokens / per_context)  # a margin for massive tokens dropped
    general = replace(h, reasoning_fraction=0.0, reasoning_corpus=None)
    try:
        tokens = harvest.heldout_contexts(general, source.tokenizer, n_contexts, h.context_length, documents_used=documents)
    except UserError as err:
        log.warning("train: no held-out corpus text (%s): summary.json is on training data", err)
        return None
    acts = torch.cat([source.harvester(chunk)[0].float().cpu()
                      for chunk in tokens.split(max(1, cfg.hardware.harvest_batch_size))])
    n, batch = _sizes(acts.shape[0], eval_tokens, batch_size)
    info = {"eval_split": "heldout_documents", "eval_source": f"{len(tokens)} contexts of {h.corpus} from document "
            f"{documents} on ({acts.shape[0]} tokens; training touched documents 0-{documents - 1})",
            "documents_touched": documents}  # analyze's held-out general text starts after them
    return HeldOut(source=TensorSource(acts, source.scaling_factors), n_tokens=n, batch_size=batch, info=info)


def training_data(source, *, eval_tokens: int, batch_size: int, data: str) -> HeldOut:
    """The fallback (and train.data=synthetic, where another seed draws fresh tokens)."""
    split = "fresh_synthetic_draws" if data == "synthetic" else "training_data"
    what = "new draws of the planted features (another seed)" if data == "synthetic" else \
        "a separately shuffled stream of the training data"
    return HeldOut(source=source, n_tokens=eval_tokens, batch_size=batch_size,
                   info={"eval_split": split, "eval_source": what})
