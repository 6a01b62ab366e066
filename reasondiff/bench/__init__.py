"""bench — token-budget sweeps of the base and tuned models (`python -m reasondiff.bench`).

Reads: both models (`model.path`, `tuned_model`) and gsm8k / MATH-500 / boolq (`bench.data`).
Writes: outputs/<exp>/bench/: generations.jsonl, results.csv, summary.csv (Table 1), Figs. 3-4.
Open run.py first (the sweep), then grading.py (what counts as a correct answer).

The names below are bench's public pieces, what later stages may use: `on_policy_conversations` (the
tuned model's own generations in the chat layout: on-policy reasoning text for scan and analyze,
`reasoning_text=on_policy`), and the pieces of its sweep that run the same sweep on other models
(intervene's budget sweeps of intervened models): the same questions, prompts, prefix-mode sweep, grader,
tables, intervals and paired test. Imported on first use.
"""

from reasondiff import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "on_policy_conversations": "reasondiff.bench.on_policy",
    "GenerationLog": "reasondiff.bench.run",
    "ModelSpec": "reasondiff.bench.run",
    "model_layout": "reasondiff.bench.run",
    "prompt_opened": "reasondiff.bench.run",
    "question_prompt": "reasondiff.bench.run",
    "resolve_models": "reasondiff.bench.run",
    "sweep_chunk": "reasondiff.bench.run",
    "sweep_fingerprint": "reasondiff.bench.run",
    "thinking_opened": "reasondiff.bench.run",
    "write_reports": "reasondiff.bench.run",
    "HFGenerator": "reasondiff.bench.generation",
    "length_sorted_batches": "reasondiff.bench.generation",
    "load_questions": "reasondiff.bench.prompts",
    "regrade_rows": "reasondiff.bench.scoring",
    "paired_comparison": "reasondiff.bench.tables",
    "mcnemar_exact": "reasondiff.bench.stats",
    "wilson_interval": "reasondiff.bench.stats",
})
__all__ = ["GenerationLog", "HFGenerator", "ModelSpec", "length_sorted_batches", "load_questions", "mcnemar_exact",
           "model_layout", "on_policy_conversations", "paired_comparison", "prompt_opened", "question_prompt", "regrade_rows",
           "resolve_models", "sweep_chunk", "sweep_fingerprint", "thinking_opened", "wilson_interval", "write_reports"]
