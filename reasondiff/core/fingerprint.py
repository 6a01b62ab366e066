"""What a stage's result depends on, recorded with it: its settings and the upstream artifacts it read.

A stage's *settings* are the config keys it reads — its own section taken whole (so keys added
later are fingerprinted without anyone remembering to), plus the shared keys that change its
results (`seed`, `model.*`, `tuned_model`, `format.*`, `hardware.dtype`, ...) — minus the keys
listed in `COSMETIC`, whose change provably leaves the results identical. Its *upstream* is the
artifact id of every stage directory it read (the tuned model, the activation store, the
crosscoder): a fresh id is drawn each time a stage finishes, so any redo of an upstream stage makes
its readers stale.

`run_stage` writes both to `<stage dir>/fingerprint.json` when work starts, and the hash with
the artifact id into `COMPLETED` and `manifest.json` when it ends. Beside them, outside the hash,
it records what each local data file the stage reads held (reasondiff.core.input_files: a file
rewritten under the same path leaves the settings equal). A re-run compares:
same settings and upstream -> skip (or resume partial work); other settings -> refuse, naming each
changed key with both values; same settings, redone upstream -> stale, redo; same settings, a data
file rewritten since -> refuse, naming it. Resuming partial work
tolerates the keys in `RESUME_TOLERANT` (they only affect work done after the resume point, or the
stage keeps its own finer-grained fingerprint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.core.runs import name_from_overrides

log = logging.getLogger("reasondiff")

FINGERPRINT_FILE = "fingerprint.json"

MODEL_KEYS = ("model", "hardware.dtype", "hardware.attn_implementation")
"""What every stage that runs a language model reads besides its section (the weights, the precision)."""

COSMETIC: dict[str, str] = {
    # where and how a run executes, never what it computes
    "model.name": "a display label in tables and figure titles",
    "model.build_tiny": "where the model comes from, not what it is (model.path is fingerprinted)",
    "hardware.name": "a label of the hardware profile",
    "hardware.device": "the same computation on another device (floating-point rounding may differ)",
    "hardware.memory_gb": "only used to warn up front when a setting cannot fit",
    "hardware.gradient_checkpointing": "recomputes the same activations in the backward pass",
    "hardware.finetune_micro_batch": "gradient accumulation keeps the effective batch (finetune.effective_batch_size)",
    "hardware.bench_batch_size": "each question is generated greedily on its own row, padding masked (equal up to "
                                 "floating-point rounding)",
    "hardware.harvest_batch_size": "each context's activations do not depend on the other contexts (unless "
                                   "harvest.max_norm_ratio is set: its median is the batch's, so then it counts)",
    "hardware.analyze_batch_size": "the passes accumulate sums over contexts (unless harvest.max_norm_ratio is set: "
                                   "its median is the batch's, so then it counts)",
    "hardware.dataloader_workers": "how batches are loaded, not which",
    "hardware.cpu_threads": "how many cores compute the same thing",
    "hardware.malloc_mmap_threshold_kb": "where the C library places freed memory, not what is computed",
    "hardware.progress_log_seconds": "how often progress is logged",
    "finetune.logging_steps": "how often the loss is logged",
    "finetune.save_steps": "how often a resumable checkpoint is saved",
    "finetune.save_total_limit": "how many checkpoints are kept while training",
    "finetune.keep_checkpoints": "whether checkpoints are deleted after a finished run",
    "finetune.push_to_hub": "where a finished model is uploaded",
    "finetune.hub_model_id": "where a finished model is uploaded",
    "bench.vllm_gpu_memory_utilization": "memory reserved by vLLM",
    "train.log_every": "how often metrics are logged",
    "train.checkpoint_every": "how often a resumable checkpoint is saved",
    "train.keep_checkpoint": "whether checkpoint.pt is deleted after a finished run",
    "train.compile": "torch.compile of the same forward and loss",
    "train.sparse": "the dense or the sparse step computes the same gradients (equal up to floating-point "
                    "rounding: tests/test_train_sparse.py)",
    "train.sparse_max_density": "when train.sparse=auto takes the sparse step (the same gradients up to "
                                "floating-point rounding)",
    "train.sparse_kernel": "compiled C++ kernels or torch ops compute the sparse step's same gradients (equal up "
                           "to floating-point rounding: tests/test_train_sparse.py)",
    "harvest.reuse_base": "the base model's rows are copied from the main store instead of computed again: the same "
                          "rows, each checked by its token id (docs/null.md)",
    "analyze.checkpoint_every": "how often the streamed sums are saved",
    "scan.checkpoint_every": "how often the streamed sums are saved",
    "intervene.checkpoint_every": "how often the streamed sums are saved",
    "analyze.checkpoint_minutes": "how often the streamed sums are saved",
    "scan.checkpoint_minutes": "how often the streamed sums are saved",
    "intervene.checkpoint_minutes": "how often the streamed sums are saved",
}
"""Keys never fingerprinted, each with the reason its change leaves the results identical."""

RESUME_TOLERANT: dict[str, tuple[str, ...]] = {
    # used only after the resume point
    "finetune": ("finetune.sample_generations", "finetune.sample_max_new_tokens", "finetune.save_dtype"),
    # a store may grow, stats are computed at the end, both backends give the same activations
    "harvest": ("harvest.n_tokens", "harvest.stats_sample_tokens", "harvest.backend"),
    "train": ("train.eval_tokens",),
    # every generations.jsonl row carries its own fingerprint: rows of other settings are kept but unused
    "bench": ("*",),
    # each streamed pass keeps its own fingerprint and starts over when it differs
    "analyze": ("*",),
    "scan": ("*",),
    # each text pass keeps its own fingerprint; every generations.jsonl row carries one
    "intervene": ("*",),
}
"""Keys that may change between a kill and the resume of a PARTIAL run (a finished run is
still compared on every key)."""


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.l1_coeff": 2.0, ...} from a (nested) dataclass or dict; lists stay values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: _jsonable(obj)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _selected(key: str, prefixes: Iterable[str]) -> bool:
    return any(p == "*" or key == p or key.startswith(p + ".") for p in prefixes)


def reads(cfg, stage: str) -> tuple[str, ...]:
    """Config keys (or sections) `stage` reads, before the cosmetic ones are taken out."""
    if stage == "finetune":
        return ("seed", "format", "finetune", *MODEL_KEYS)
    if stage == "bench":
        models = cfg.bench.models
        extra = (("model",) if "base" in models else ()) + (("tuned_model",) if "tuned" in models else ())
        return ("seed", "format", "bench", "hardware.dtype", "hardware.attn_implementation", *extra)
    if stage == "harvest":
        return ("seed", "harvest", "tuned_model", *MODEL_KEYS, "hardware.harvest_batch_size",
                *reasoning_mix_keys(cfg))
    if stage == "train":
        if cfg.train.data == "live":
            return ("seed", "train", "harvest", "tuned_model", *MODEL_KEYS, "hardware.harvest_batch_size",
                    *reasoning_mix_keys(cfg))
        return ("seed", "train")
    if stage == "analyze":
        reasoning = reasoning_text_keys(cfg, cfg.analyze) if cfg.analyze.n_reasoning_contexts else ()
        return ("seed", "analyze", "tuned_model", *MODEL_KEYS, "hardware.analyze_batch_size", "harvest.corpus",
                "harvest.corpus_split",
                "harvest.corpus_config", "harvest.text_column", "harvest.hook", "harvest.drop_first_position",
                "harvest.max_norm_ratio", *reasoning)
    if stage == "intervene":
        # analyze's texts, crosscoder and position rules (analyze.* and harvest.* as analyze reads them), the
        # bench's questions, prompts and grader for the budget sweep
        extra = ("bench", "format") if cfg.intervene.bench else ()
        reasoning = ("analyze.reasoning_text", *reasoning_text_keys(cfg, cfg.analyze)) \
            if cfg.intervene.n_reasoning_contexts else ()
        return ("seed", "intervene", "tuned_model", *MODEL_KEYS, "hardware.analyze_batch_size", "analyze.crosscoder_dir",
                "analyze.heldout_corpus", "analyze.reasoning_corpus", "analyze.exclude_first_position",
                "harvest.corpus", "harvest.corpus_split", "harvest.corpus_config", "harvest.text_column",
                "harvest.hook", "harvest.drop_first_position", "harvest.max_norm_ratio", *reasoning, *extra)
    if stage == "scan":
        # CKA's minibatch and the massive-activation median are per context: no batch size counts
        harvest = ("harvest.drop_first_position", "harvest.max_norm_ratio")
        if not cfg.scan.general_corpus:
            harvest += ("harvest.corpus", "harvest.corpus_split", "harvest.corpus_config", "harvest.text_column")
        else:
            harvest += ("harvest.text_column",)
        reasoning = reasoning_text_keys(cfg, cfg.scan) if cfg.scan.n_reasoning_contexts else ()
        return ("seed", "scan", "tuned_model", *MODEL_KEYS, *harvest, *reasoning)
    # a stage this module does not know yet: its section and the models, to be safe
    return ("seed", stage, "tuned_model", *MODEL_KEYS)


def reasoning_mix_keys(cfg) -> tuple[str, ...]:
    """What harvest's reasoning mix depends on outside `harvest.*`: the fine-tune's held-out questions
    are left out of it (reasondiff.app.preflight.mix_excluded_questions), so which rows are held out
    changes the store even when the tuned model is not this experiment's fine-tune (a hub id: no
    upstream id moves). Nothing without a mix, so such a harvest keeps its fingerprint."""
    h = cfg.harvest
    if not (h.reasoning_fraction > 0 and h.reasoning_corpus):
        return ()
    return ("finetune.dataset", "finetune.split", "finetune.holdout")


def reasoning_text_keys(cfg, section) -> tuple[str, ...]:
    """What a stage's reasoning text (`<stage>.reasoning_text`, config/common.py) depends on outside
    its own section: the layout, and the fine-tune's held-out rows or the bench's prompts."""
    keys = ("format", "finetune.trace_source")
    if section.reasoning_text == "heldout_rows":
        keys += ("finetune.dataset", "finetune.split", "finetune.holdout")
    elif section.reasoning_text == "on_policy":
        # generations of questions the fine-tune trained on are dropped (reasondiff.bench.on_policy)
        keys += ("bench", "finetune.dataset", "finetune.split", "finetune.holdout", "finetune.limit_rows")
    return keys


BATCH_MEDIAN_KEYS = ("hardware.harvest_batch_size", "hardware.analyze_batch_size")
"""Batch sizes that choose the batch whose median norm drops massive-activation tokens."""


def _excluded(cfg, stage: str, key: str) -> bool:
    if key in BATCH_MEDIAN_KEYS and cfg.harvest.max_norm_ratio is not None:
        return False
    if key in COSMETIC:
        return True
    if stage == "train" and cfg.train.data != "synthetic" and key.startswith("train.synthetic."):
        return True  # planted-feature settings only apply to train.data=synthetic
    return stage == "harvest" and key == "harvest.live_buffer_tokens"  # train.data=live only


def settings(cfg, stage: str) -> dict[str, Any]:
    """The fingerprinted settings of `stage` under `cfg`: dotted key -> value. Paths inside
    output_root are written relative to it, so a moved outputs/ tree keeps its fingerprints."""
    wanted = reads(cfg, stage)
    return {key: portable(value, cfg.output_root) for key, value in flatten(cfg).items()
            if _selected(key, wanted) and not _excluded(cfg, stage, key)}


def portable(value: Any, output_root: str) -> Any:
    """A path inside output_root written relative to it (`<output_root>/...`); any other value as is."""
    root = str(Path(output_root)).rstrip("/") + "/"
    if isinstance(value, str) and value.startswith(root):
        return "<output_root>/" + value[len(root):]
    return value


@dataclass
class Fingerprint:
    settings: dict[str, Any]
    upstream: dict[str, str] = field(default_factory=dict)
    """Upstream stage directory (relative to output_root) -> its artifact id when this run read it."""
    lineage: dict[str, str] = field(default_factory=dict)
    """Every stage directory further up (what the upstream read, and so on) -> its id then: the
    chain stays checkable when an intermediate directory is deleted (a large activation store).
    Not part of the digest: it follows from the upstream ids."""
    input_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Config key of each local data source the stage reads -> {"path": as in the settings, "files":
    reasondiff.core.input_files.identify(...)}: what the files held when the run started. Not part of
    the digest, so runs recorded before it existed keep theirs (and resume as before)."""

    @property
    def digest(self) -> str:
        payload = json.dumps({"settings": self.settings, "upstream": self.upstream}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.digest, "settings": self.settings, "upstream": self.upstream,
                "lineage": self.lineage, "input_files": self.input_files}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(settings=dict(data.get("settings", {})), upstream=dict(data.get("upstream", {})),
                   lineage=dict(data.get("lineage", {})), input_files=dict(data.get("input_files", {})))


def new_artifact_id(fingerprint: Fingerprint) -> str:
    """Drawn once per finished run: a redo with the same settings still gets a new id, so every
    reader of the old result becomes stale (weights differ across machines even at equal settings)."""
    return hashlib.sha256(f"{fingerprint.digest}-{uuid.uuid4().hex}".encode()).hexdigest()[:16]


def artifact_id(directory: Path) -> str | None:
    """The artifact id of a finished stage directory (None when not finished); markers of older
    versions get a stable id from their text."""
    marker = artifacts.read_marker(directory)
    if marker is None:
        return None
    if marker.get("artifact_id"):
        return str(marker["artifact_id"])
    return "legacy-" + hashlib.sha256(json.dumps(marker, sort_keys=True).encode()).hexdigest()[:12]


def recorded(directory: Path) -> Fingerprint | None:
    path = Path(directory) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return Fingerprint.from_json(artifacts.read_json(path))
    except (ValueError, OSError):
        return None  # unreadable: treated like a directory of an older version


def write(directory: Path, stage: str, fingerprint: Fingerprint, run: str) -> None:
    artifacts.write_json(Path(directory) / FINGERPRINT_FILE, {"stage": stage, "run": run, **fingerprint.to_json()})


# --- comparing -------------------------------------------------------------------------------------
_ABSENT = object()


def changed_keys(old: dict[str, Any], new: dict[str, Any], *, defaults: dict[str, Any],
                 tolerate: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key whose value differs. A key the old record lacks
    (added to the schema since) counts as changed only when the new value is not its default; a key
    the schema dropped is ignored."""
    tolerate = tuple(tolerate)
    changes = []
    for key in sorted(new):
        if _selected(key, tolerate):
            continue
        before = old.get(key, _ABSENT)
        after = new[key]
        if before is _ABSENT:
            if after != defaults.get(key, _ABSENT):
                changes.append((key, "(unset)", after))
        elif before != after:
            changes.append((key, before, after))
    return changes


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def describe_changes(changes: list[tuple[str, Any, Any]]) -> tuple[str, str]:
    """("train.l1_coeff=2.0", "4.0") for one change; joined by ", " for several."""
    return (", ".join(f"{k}={_show(a)}" for k, a, _ in changes),
            ", ".join(_show(b) for _, _, b in changes))


def suggested_run(stage: str, changes: list[tuple[str, Any, Any]]) -> str:
    """The run name a job with these overrides would get (what `run=` a separate run could use)."""
    return name_from_overrides(stage, [f"{k}={b:g}" if isinstance(b, float) else f"{k}={_show(b)}"
                                       for k, _, b in changes])


def unportable(value: Any, output_root: str) -> Any:
    """The inverse of `portable`: a recorded `<output_root>/...` path under this output_root."""
    if isinstance(value, str) and value.startswith("<output_root>/"):
        return str(Path(output_root) / value[len("<output_root>/"):])
    return value


def as_override(key: str, value: Any, output_root: str) -> str:
    """`key=value` as typed on a command line, from a recorded setting (paths recorded relative to
    output_root put back)."""
    value = unportable(value, output_root)
    if isinstance(value, list):
        return f"{key}=[{','.join(_show(v) for v in value)}]"
    return f"{key}={'null' if value is None else _show(value)}"


class SettingsChanged(UserError):
    """A finished or partial run made with other settings: one line for a stage run alone; the
    pipeline words its own (it knows which command does what the user most likely wants)."""

    def __init__(self, message: str, *, stage: str, directory: Path, changes: list[tuple[str, Any, Any]],
                 finished: bool) -> None:
        super().__init__(message)
        self.stage, self.directory, self.changes, self.finished = stage, Path(directory), changes, finished


def refusal(stage: str, directory: Path, changes: list[tuple[str, Any, Any]], *, finished: bool) -> SettingsChanged:
    before, after = describe_changes(changes)
    separate = f"run={suggested_run(stage, changes)}"
    if finished:
        message = (f"{stage}: finished with {before}; you asked {after} ({directory}) — overwrite=true to "
                   f"redo it there, or {separate} for a separate run beside it")
    else:
        message = (f"{stage}: {directory} holds a partial run made with other settings ({before}; you asked "
                   f"{after}) — the old settings resume it, overwrite=true starts it over, or {separate} makes "
                   "a separate run beside it")
    return SettingsChanged(message, stage=stage, directory=directory, changes=changes, finished=finished)
