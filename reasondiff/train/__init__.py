"""train — a sparse crosscoder over the paired activations (`python -m reasondiff.train`).

Reads: harvest's activation store (or both models live, or planted synthetic features).
Writes: outputs/<exp>/train/: crosscoder.safetensors + config.json, metrics.csv, summary.json.
Open run.py first (data source, training loop, checkpoints); the crosscoder itself is reasondiff.crosscoder.
"""
