"""finetune — SFT of the base model on s1K-1.1 reasoning traces with trl (`python -m reasondiff.finetune`).

Reads: the base model (`model.path`) and s1K-1.1 (`finetune.dataset`, hub id or local file).
Writes: outputs/<exp>/finetune/: model/ (HF dir + tokenizer), checkpoints/, metrics.csv, loss_curve.png, samples.json.
Open run.py first (the recipe), then data.py (the s1 layout, loss masks, overlong policies).
"""
