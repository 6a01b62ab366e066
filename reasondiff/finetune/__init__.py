"""finetune — SFT of the base model on s1K-1.1 reasoning traces with trl (`python -m reasondiff.finetune`).

Reads: the base model (`model.path`) and s1K-1.1 (`finetune.dataset`, hub id or local file).
Writes: outputs/<exp>/finetune/: model/ (HF dir + tokenizer), checkpoints/, metrics.csv, loss_curve.png + .pdf (Fig. 2), samples.json.
Open run.py first (the recipe), then data.py (rows, overlong policies, the length report); a row's
chat layout and loss mask are reasondiff/lm/sft_example.py (scan and analyze read rows through it too).

The names below are finetune's public reader of its own layout, what other stages may use to feed
a model text exactly as SFT tokenized it (scan), and the rows it never trained on
(`heldout_rows(cfg)`, `holdout_split(cfg)`: the held-out reasoning text of scan, analyze and
intervene, read from the finetune manifest). Imported on first use.
"""

from reasondiff import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "TRACE_FIELDS": "reasondiff.lm.sft_example",
    "heldout_rows": "reasondiff.finetune.heldout",
    "holdout_split": "reasondiff.finetune.heldout",
    "reasoning_rows": "reasondiff.finetune.heldout",
    "tokenize_example": "reasondiff.lm.sft_example",
    "trim_thinking_middle": "reasondiff.lm.sft_example",
    "validate_row": "reasondiff.finetune.data",
})
__all__ = ["TRACE_FIELDS", "heldout_rows", "holdout_split", "reasoning_rows", "tokenize_example", "trim_thinking_middle", "validate_row"]
