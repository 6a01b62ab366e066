"""bench — token-budget sweeps of the base and tuned models (`python -m reasondiff.bench`).

Reads: both models (`model.path`, `tuned_model`) and gsm8k / MATH-500 / boolq (`bench.data`).
Writes: outputs/<exp>/bench/: generations.jsonl, results.csv, summary.csv (Table 1), Figs. 3-4.
Open run.py first (the sweep), then grading.py (what counts as a correct answer).
"""
