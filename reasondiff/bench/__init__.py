"""bench — token-budget sweeps of the base and tuned models (`python -m reasondiff.bench`).

Reads: both models (`model.path`, `tuned_model`) and gsm8k / MATH-500 / boolq (`bench.data`).
Writes: outputs/<exp>/bench/: generations.jsonl, results.csv, summary.csv (Table 1), Figs. 3-4.
Open run.py first (the sweep), then grading.py (what counts as a correct answer).

Public to other stages: `on_policy_conversations` (the tuned model's own generations in the chat
layout: on-policy reasoning text for scan and analyze, `reasoning_text=on_policy`).
"""

from reasondiff import lazy_exports

__getattr__ = lazy_exports(__name__, {"on_policy_conversations": "reasondiff.bench.on_policy"})
__all__ = ["on_policy_conversations"]
