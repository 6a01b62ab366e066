"""scan — where in the network the fine-tune changed the model, layer by layer (`python -m reasondiff.scan`).

Reads: both models (`model.path`, `tuned_model`), held-out general text (harvest's corpus after the
documents harvest used, or `scan.general_corpus`) and reasoning conversations in the fine-tune's
layout (`scan.reasoning_corpus`, default `finetune.dataset`).
Writes: outputs/<exp>/scan/: scan.csv (per text x layer: relative change, cosine, CKA, fraction of
KL(base || tuned) closed by activation patching in each direction), scan.png + scan.pdf,
recommendation.json (the hook where the causal effect first becomes large, and how to follow up).
Open run.py first (the recipe), then passes.py (the two streamed passes), patching.py (every layer
read in one forward, every layer patched in one batch) and similarity.py (the maths).
"""
