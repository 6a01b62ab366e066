"""Which rows of the fine-tune's dataset were trained on and which were held out (issue 26.1).

Reasoning-text numbers measured on rows the tuned model trained on measure memorised rows. The
split is made once, by a seeded rule on the rows' CONTENT (not their order), and recorded in the
finetune manifest; scan, analyze and intervene read only the held-out rows, and preflight refuses
a reasoning corpus that shares a question with the trained rows unless asked for explicitly.

The rule (`split_rows`): a row's key is the sha256 of its whitespace-normalised question, so two
rows asking the same question always fall on the same side; the distinct keys are ranked by
sha256(f"{seed}:{key}") and the first `n` are held out (n = `holdout.n_rows`, else
round(`holdout.fraction` x distinct questions)). A hash-ranked split is stable under reordering
and appending rows, and reproducible from the data alone.

Pure file and hash logic (no model, no stage package): finetune writes the record, preflight and
the stages read it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HASH_CHARS = 16
"""Hex characters kept of each sha256 (64 bits: no collision among any dataset's rows)."""
RULE = ("rows keyed by sha256 of the whitespace-normalised question; distinct keys ranked by "
        "sha256('{seed}:{key}'); the first n held out")


def question_key(question: str) -> str:
    """Identity of a question for the split and the overlap check (whitespace-normalised)."""
    return hashlib.sha256(" ".join(str(question).split()).encode()).hexdigest()[:HASH_CHARS]


def row_key(row: Mapping[str, Any], fields: Sequence[str]) -> str:
    """Identity of a row's content (question, thinking, attempt): what exactly was trained on."""
    h = hashlib.sha256()
    for name in fields:
        h.update(b"\0" + str(row.get(name, "")).encode())
    return h.hexdigest()[:HASH_CHARS]


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


@dataclass(frozen=True)
class HoldoutSplit:
    """The split of one dataset: row indices (in the dataset's order) and their keys, per side."""

    dataset: str
    fields: tuple[str, ...]
    heldout: tuple[int, ...]
    trained: tuple[int, ...]
    question_keys: tuple[str, ...]
    """question_key of every row of the dataset (index -> key)."""
    row_keys: tuple[str, ...]
    seed: int = 0
    rule: str = RULE
    origin: str = "computed"
    """Where this split was read: "finetune manifest <path>", or "computed" from the config."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_questions(self) -> frozenset[str]:
        return frozenset(self.question_keys[i] for i in self.trained)

    @property
    def heldout_questions(self) -> frozenset[str]:
        return frozenset(self.question_keys[i] for i in self.heldout)

    def to_record(self) -> dict[str, Any]:
        """What the finetune manifest stores (outputs.holdout)."""
        return {"dataset": self.dataset, "fields": list(self.fields), "seed": self.seed, "rule": self.rule,
                "n_rows": len(self.question_keys), "n_heldout": len(self.heldout), "n_trained": len(self.trained),
                "heldout": [{"index": i, "question_sha256": self.question_keys[i], "row_sha256": self.row_keys[i]}
                            for i in self.heldout],
                "trained": [{"index": i, "question_sha256": self.question_keys[i], "row_sha256": self.row_keys[i]}
                            for i in self.trained],
                **self.extra}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], origin: str) -> HoldoutSplit:
        n = int(record["n_rows"])
        qkeys, rkeys = [""] * n, [""] * n
        for side in ("heldout", "trained"):
            for entry in record[side]:
                qkeys[entry["index"]], rkeys[entry["index"]] = entry["question_sha256"], entry["row_sha256"]
        extra = {k: v for k, v in record.items() if k not in
                 {"dataset", "fields", "seed", "rule", "n_rows", "n_heldout", "n_trained", "heldout", "trained"}}
        return cls(dataset=record["dataset"], fields=tuple(record["fields"]),
                   heldout=tuple(e["index"] for e in record["heldout"]),
                   trained=tuple(e["index"] for e in record["trained"]), question_keys=tuple(qkeys),
                   row_keys=tuple(rkeys), seed=int(record["seed"]), rule=record["rule"], origin=origin, extra=extra)


def split_rows(rows: Sequence[Mapping[str, Any]], *, dataset: str, fields: Sequence[str], fraction: float,
               n_rows: int | None, seed: int, limit_trained: int | None = None) -> HoldoutSplit:
    """Hold out `n_rows` (else round(fraction x distinct questions)) questions by the seeded rule;
    the rest are trained on (the first `limit_trained` of them when set: `finetune.limit_rows`)."""
    qkeys = [question_key(row.get("question", "")) for row in rows]
    distinct = sorted(set(qkeys), key=lambda k: _rank(seed, k))
    n = n_rows if n_rows is not None else round(fraction * len(distinct))
    n = max(0, min(n, len(distinct)))
    held = set(distinct[:n])
    heldout = tuple(i for i, k in enumerate(qkeys) if k in held)
    trained = tuple(i for i, k in enumerate(qkeys) if k not in held)
    if limit_trained is not None:
        trained = trained[:limit_trained]
    return HoldoutSplit(dataset=dataset, fields=tuple(fields), heldout=heldout, trained=trained,
                        question_keys=tuple(qkeys), row_keys=tuple(row_key(r, fields) for r in rows), seed=seed)


def recorded_split(finetune_dir: str | Path) -> HoldoutSplit | None | str:
    """The split a finished finetune run recorded in its manifest; None when `finetune_dir` holds no
    finished run; "legacy" when the run predates finetune.holdout (it trained on every row)."""
    from reasondiff.core import artifacts

    manifest_path = Path(finetune_dir) / artifacts.MANIFEST
    if not artifacts.is_complete(finetune_dir) or not manifest_path.is_file():
        return None
    manifest = artifacts.read_json(manifest_path)
    record = (manifest.get("outputs") or {}).get("holdout")
    if not record:
        return "legacy"
    return HoldoutSplit.from_record(record, origin=f"finetune manifest {manifest_path}")


def overlapping(rows: Iterable[Mapping[str, Any]], trained_questions: frozenset[str]) -> tuple[int, int]:
    """(rows sharing a question with the trained rows, rows looked at)."""
    n = hits = 0
    for row in rows:
        n += 1
        hits += question_key(row.get("question", "")) in trained_questions
    return hits, n


def resolve_split(cfg, finetune_dir: str | Path | None) -> HoldoutSplit:
    """The split behind the tuned model. Its finetune run's record when `finetune_dir` holds a
    finished run (authoritative); a run from before finetune.holdout trained on every row (no row
    held out); otherwise (finetune not run yet, or a tuned model made elsewhere) the split
    `finetune.holdout` gives on `finetune.dataset`, with `origin` saying so."""
    from reasondiff.lm.data_sources import load_rows

    ft = cfg.finetune
    fields = ("question", f"{ft.trace_source}_thinking_trajectory", f"{ft.trace_source}_attempt")
    recorded = recorded_split(finetune_dir) if finetune_dir is not None else None
    if isinstance(recorded, HoldoutSplit):
        return recorded
    rows = [dict(r) for r in load_rows(ft.dataset, split=ft.split, config_key="finetune.dataset", fields=fields)]
    if recorded == "legacy":
        split = split_rows(rows, dataset=ft.dataset, fields=fields, fraction=0.0, n_rows=0, seed=ft.holdout.seed)
        return replace(split, origin=f"finetune run {finetune_dir} (made before finetune.holdout: it trained on "
                                     "every row)")
    split = split_rows(rows, dataset=ft.dataset, fields=fields, fraction=ft.holdout.fraction, n_rows=ft.holdout.n_rows,
                       seed=ft.holdout.seed, limit_trained=ft.limit_rows)
    origin = ("computed from finetune.holdout (the finetune stage has not finished yet)" if finetune_dir is not None
              else f"computed from finetune.holdout: tuned_model={cfg.tuned_model} was not made by a finetune "
                   "stage here, so which rows it trained on is not recorded (a released model may have trained on "
                   "all of them: reasoning_text=on_policy reads its own generations instead)")
    return replace(split, origin=origin)


TRAINED_ROWS = "trained rows"
"""The label every table gives reasoning text that the fine-tune trained on (allow_trained_text)."""
LABELS = {"heldout_rows": "held-out rows", "on_policy": "on-policy", "file": "file"}


def corpus_overlap(split: HoldoutSplit, rows: Sequence[Mapping[str, Any]], *, stage: str, corpus: str,
                   allow: bool) -> tuple[str, str | None]:
    """(label, problem) of reasoning_text=file rows: "file" when none shares a question with the
    rows the fine-tune trained on; otherwise "trained rows" and, unless `allow`, the one-line refusal."""
    hits, n = overlapping(rows, split.trained_questions)
    if not hits:
        return LABELS["file"], None
    if allow:
        return TRAINED_ROWS, None
    return TRAINED_ROWS, (f"{stage}.reasoning_corpus={corpus}: {hits} of the {n} rows read share a question with the "
                          f"rows the fine-tune trained on ({split.origin}); use {stage}.reasoning_text=heldout_rows "
                          f"or on_policy, or {stage}.allow_trained_text=true to measure trained rows (labelled so)")
