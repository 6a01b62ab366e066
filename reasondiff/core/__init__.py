"""Files and records, with no model and no Hydra: atomic artifacts and manifests, run names and
locks, fingerprints, metrics (CSV + W&B), figures, resumable streamed passes, UserError.

The lowest floor: imports nothing else of reasondiff.
"""
