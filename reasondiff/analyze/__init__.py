"""analyze — what the crosscoder says about the fine-tune (`python -m reasondiff.analyze`).

Reads: the trained crosscoder, both models, held-out text (and s1K conversations in the fine-tune's layout).
Writes: outputs/<exp>/analyze/: ce_recovery.csv (Table 2, two conventions), Figs. 5-6, latents.csv, latents.html, report.md.
Open run.py first (the recipe), then ce_recovery.py (Table 2), texts.py and contexts.py (latent pages).
"""
