"""intervene — causal tests of what the diff found, at the crosscoder's hook (`python -m reasondiff.intervene`).

Reads: analyze's crosscoder, hook and latent table (latents.csv), both models, the same held-out general text
and reasoning conversations as analyze, and the bench's tasks.
Writes: outputs/<exp>/intervene/: intervene.csv (patch_set / ablate_set of latent sets against frequency-matched
random sets, the whole-residual ceiling, steering; 95% intervals), adl_tokens.csv + adl_vectors.safetensors (the
Activation Difference Lens), bench_intervened/ (budget sweeps of intervened models in the bench's schema),
kl_closed.png, steering.png, report_section.md (included in analyze's report).
Open run.py first (the recipe), then edits.py (the interventions), passes.py (how they are run and scored),
selection.py (the sets), adl.py, live.py (interventions during generation) and budget.py.
"""
