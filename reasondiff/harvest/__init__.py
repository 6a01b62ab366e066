"""harvest — paired residual activations of both models at one hook (`python -m reasondiff.harvest`).

Reads: both models (`model.path`, `tuned_model`) and a text corpus (`harvest.corpus`).
Writes: outputs/<exp>/harvest/: activation shards [n_tokens, 2, d_model] + token ids, store.json, stats.json.
Open run.py first (the harvest loop), then store.py (the on-disk format and its readers).

The names below are harvest's public reader, what other stages may use: the store, the live
source (train.data=live) and the corpus contexts harvest did not use (analyze's held-out text).
They are imported on first use so `python -m reasondiff.<app> --help` stays instant.
"""

from reasondiff import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "ActivationStore": "reasondiff.harvest.store",
    "LiveActivationSource": "reasondiff.harvest.store",
    "heldout_contexts": "reasondiff.harvest.corpus",
    "reasoning_texts": "reasondiff.harvest.corpus",
})
__all__ = ["ActivationStore", "LiveActivationSource", "heldout_contexts", "reasoning_texts"]
