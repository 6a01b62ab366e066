"""What every stage app shares: the stage contract (stable dirs, fingerprints, skip / resume /
refuse / redo, manifest, signals, the Hydra wrapper), the checks before any work (preflight),
multirun sweeps and `--help`.

Imports `lm/` and `core/` only; what a stage package must do first (the tiny world's builder) is
handed in by the apps (`execute(prepare=...)`).
"""
