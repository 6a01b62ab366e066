"""Which finished harvest store can lend its base-model rows to a named harvest run.

A null pair (docs/null.md) harvests the same corpus with the same settings as the main run and the
same base model: the base model's activations are already on disk in the main store, row for row.
Running the base model again would cost a second forward over the same text (half of a control
harvest, all of a base-vs-base one). The rows are reused when the main store was made with the same
settings except the tuned model and the keys that do not change a row (how many tokens, the stats
sample, the backend, the shard size), left the same held-out questions out of its reasoning mix, holds at least as many tokens, and drops no token by its norm
(`harvest.max_norm_ratio` drops a token when EITHER model's norm is large, so the kept rows depend
on the tuned model). The harvest checks every reused row's token id against its own stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reasondiff.core import artifacts, fingerprint

ROW_NEUTRAL = ("tuned_model", "harvest.n_tokens", "harvest.stats_sample_tokens", "harvest.backend",
               "harvest.shard_tokens", "harvest.reuse_base")
"""Settings a reused base row does not depend on."""


def base_rows_source(cfg, excluded_questions: Callable[[], frozenset[str]]) -> tuple[Path | None, str]:
    """(the main harvest directory whose base rows this named harvest run can reuse, or None; why not).
    `excluded_questions()`: the questions this run's reasoning mix leaves out
    (reasondiff.app.preflight.mix_excluded_questions; passed in, as preflight reads this module)."""
    if not cfg.run or not cfg.harvest.reuse_base:
        return None, "harvest.reuse_base=false" if cfg.run else "the main run"
    main = cfg.exp_dir / "harvest"
    if not artifacts.is_complete(main):
        return None, f"no finished main harvest in {main}"
    if cfg.harvest.max_norm_ratio is not None:
        return None, "harvest.max_norm_ratio is set (the kept tokens depend on the tuned model)"
    if cfg.harvest.backend != "hf":
        return None, "harvest.backend=bridge"
    old = fingerprint.recorded(main)
    if old is None:
        return None, f"{main} records no settings"
    ours = fingerprint.settings(cfg, "harvest")
    # the held-out split is compared as the questions it leaves out of the reasoning mix (below): a
    # control pair's finetune.dataset names its own chat rows, yet both read the reasoning fine-tune's split
    split_keys = ("finetune.dataset", "finetune.split", "finetune.holdout")
    changed = sorted(k for k in set(old.settings) | set(ours)
                     if k not in ROW_NEUTRAL and not k.startswith(split_keys) and old.settings.get(k) != ours.get(k))
    if changed:
        return None, f"{main} was made with other settings ({', '.join(changed)})"
    store = artifacts.read_json(main / "store.json")
    if (problem := _other_exclusions(store.get("corpus") or {}, excluded_questions())) is not None:
        return None, f"{main} {problem}"
    if int(store.get("n_tokens", 0)) < cfg.harvest.n_tokens:
        return None, f"{main} holds {store.get('n_tokens', 0)} tokens, fewer than harvest.n_tokens={cfg.harvest.n_tokens}"
    return main, ""


def _other_exclusions(corpus: dict, ours: frozenset[str]) -> str | None:
    """Why the main store's reasoning mix left out other questions than this run's would (None when
    the same): its rows would differ from ours at every reasoning context after the first such row."""
    if "reasoning_questions_excluded_keys" in corpus:
        if set(corpus["reasoning_questions_excluded_keys"]) == ours:
            return None
    elif int(corpus.get("reasoning_questions_excluded") or 0) == len(ours):
        return None  # a store from before the keys were recorded: its count is all it says
    return (f"left other held-out questions out of its reasoning mix ({corpus.get('reasoning_questions_excluded', 0)}; "
            f"this run leaves out {len(ours)})")
