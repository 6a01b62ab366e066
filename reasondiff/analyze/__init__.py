"""analyze — what the crosscoder says about the fine-tune (`python -m reasondiff.analyze`).

Reads: the trained crosscoder, both models, held-out text (and s1K conversations in the fine-tune's layout).
Writes: outputs/<exp>/analyze/: ce_recovery.csv (Table 2, two conventions), Figs. 5-6, latents.csv, latents.html, report.md.
Open run.py first (the recipe), then ce_recovery.py (Table 2), texts.py and contexts.py (latent pages).

The names below are analyze's public reader, what later stages may use (intervene reads the same texts,
crosscoder and models as analyze, and adds its section to analyze's report). Imported on first use.
"""

from reasondiff import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "Contexts": "reasondiff.analyze.texts",
    "check_crosscoder_format": "reasondiff.analyze.run",
    "crosscoder_dir": "reasondiff.analyze.run",
    "heldout_contexts": "reasondiff.analyze.run",
    "load_models": "reasondiff.analyze.run",
    "open_harvest": "reasondiff.analyze.run",
    "reasoning_contexts": "reasondiff.analyze.run",
    "rebuild_report": "reasondiff.analyze.report",
    "report_arguments": "reasondiff.analyze.run",
})
__all__ = ["Contexts", "check_crosscoder_format", "crosscoder_dir", "heldout_contexts", "load_models", "open_harvest",
           "reasoning_contexts", "rebuild_report", "report_arguments"]
