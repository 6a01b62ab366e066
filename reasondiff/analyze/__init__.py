"""analyze — what the crosscoder says about the fine-tune (`python -m reasondiff.analyze`).

Reads: the trained crosscoder, both models, held-out text (and reasoning traces).
Writes: outputs/<exp>/analyze/: ce_recovery.csv (Table 2), Figs. 5-6, latents.csv, latents.html, report.md.
Open run.py first (the recipe), then ce_recovery.py (Table 2) and contexts.py (latent pages).
"""
