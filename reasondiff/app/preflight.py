"""Everything a run needs, checked before any work and reported together.

`stage_inputs(cfg, stage)` lists what a stage reads — models, datasets, the directories of earlier
stages — each with the config key that names it. `check(cfg, stages)` then checks them all and
raises ONE UserError listing every problem (a missing local model, a hub id that is neither cached
nor reachable, an empty or malformed data file, an unfinished upstream stage), plus the settings that
cannot fit the model (a token limit beyond its context, a hook past its last layer) and the disk
space the stage will need. The same list tells `run_stage` which upstream artifacts a result
depends on (reasondiff.core.fingerprint), and `stale_links` follows each one's own recorded inputs
up the whole chain (a harvest of a fine-tune redone since is stale for everything that reads it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.core.fingerprint import FINGERPRINT_FILE
from reasondiff.core.runs import split_dir_name

log = logging.getLogger("reasondiff")

@dataclass(frozen=True)
class Input:
    key: str
    """The config key that names it (what the user changes)."""
    value: str
    kind: str
    """model | dataset | stage (a directory an earlier stage writes) | crosscoder (a train-format dir)."""
    stage: str | None = None
    """kind=stage: which stage writes it."""
    optional: bool = False
    """Read when present (analyze reads harvest's store for its metadata when there is one)."""


def _stages() -> tuple[str, ...]:
    from reasondiff.config import STAGES

    return STAGES


def stage_inputs(cfg, stage: str) -> list[Input]:
    """What `stage` reads under `cfg` (a new stage adds its line here)."""
    model = Input("model.path", cfg.model.path, "model")
    tuned = Input("tuned_model", cfg.tuned_model, "model")
    if stage == "finetune":
        return [model, Input("finetune.dataset", cfg.finetune.dataset, "dataset")]
    if stage == "bench":
        models = [model if m == "base" else tuned if m == "tuned" else Input("bench.models", m, "model")
                  for m in cfg.bench.models]
        return models + [Input(f"bench.data.{t}.path", cfg.bench.data[t].path, "dataset") for t in cfg.bench.tasks]
    corpora = [Input("harvest.corpus", cfg.harvest.corpus, "dataset")]
    if cfg.harvest.reasoning_fraction > 0 and cfg.harvest.reasoning_corpus:
        corpora.append(Input("harvest.reasoning_corpus", cfg.harvest.reasoning_corpus, "dataset"))
    if stage == "harvest":
        from reasondiff.app.reuse import base_rows_source

        lender = base_rows_source(cfg, lambda: mix_excluded_questions(cfg))[0]  # a null pair's base rows, copied from the main store (docs/null.md)
        return [model, tuned, *corpora] + ([Input("harvest.reuse_base", str(lender), "stage", "harvest")] if lender else [])
    if stage == "train":
        if cfg.train.data == "store":
            return [Input("train.data=store", str(cfg.stage_dir("harvest")), "stage", "harvest")]
        return [model, tuned, *corpora] if cfg.train.data == "live" else []
    if stage == "analyze":
        a = cfg.analyze
        crosscoder = Path(a.crosscoder_dir) if a.crosscoder_dir else cfg.stage_dir("train")
        inputs = [Input("analyze.crosscoder_dir", str(crosscoder), "crosscoder", "train"), model, tuned,
                  Input("harvest", str(cfg.stage_dir("harvest")), "stage", "harvest", optional=True),
                  Input("analyze.heldout_corpus", a.heldout_corpus, "dataset") if a.heldout_corpus else corpora[0]]
        if a.n_reasoning_contexts:
            inputs.append(reasoning_input(cfg, "analyze"))
        from reasondiff.app.ensembles import sibling_train_dirs  # seed siblings and null pairs (docs/null.md)

        return inputs + [Input("analyze.seeds / analyze.nulls", str(d), "stage", "train", optional=True)
                         for d in sibling_train_dirs(cfg)]
    if stage == "intervene":
        a, i = cfg.analyze, cfg.intervene
        crosscoder = Path(a.crosscoder_dir) if a.crosscoder_dir else cfg.stage_dir("train")
        inputs = [Input("analyze", str(cfg.stage_dir("analyze")), "stage", "analyze"),
                  Input("analyze.crosscoder_dir", str(crosscoder), "crosscoder", "train"), model, tuned,
                  Input("harvest", str(cfg.stage_dir("harvest")), "stage", "harvest", optional=True),
                  Input("analyze.heldout_corpus", a.heldout_corpus, "dataset") if a.heldout_corpus else corpora[0]]
        if a.n_reasoning_contexts and i.n_reasoning_contexts:  # analyze's reasoning text, as analyze reads it
            inputs.append(reasoning_input(cfg, "analyze"))
        if i.bench:
            inputs += [Input(f"bench.data.{t}.path", cfg.bench.data[t].path, "dataset")
                       for t in (i.bench_tasks or cfg.bench.tasks)]
        return inputs
    if stage == "scan":
        sc = cfg.scan
        inputs = [model, tuned, Input("harvest", str(cfg.stage_dir("harvest")), "stage", "harvest", optional=True),
                  Input("scan.general_corpus", sc.general_corpus, "dataset") if sc.general_corpus else corpora[0]]
        if sc.n_reasoning_contexts:
            inputs.append(reasoning_input(cfg, "scan"))
        return inputs
    return [model, tuned]


def reasoning_input(cfg, stage: str) -> Input:
    """Where `<stage>.reasoning_text` comes from: the fine-tune's dataset (its held-out rows), the
    bench's generations (on_policy) or `<stage>.reasoning_corpus` (file)."""
    section = getattr(cfg, stage)
    if section.reasoning_text == "on_policy":
        return Input(f"{stage}.reasoning_text=on_policy", str(cfg.stage_dir("bench")), "stage", "bench")
    if section.reasoning_text == "file":
        return Input(f"{stage}.reasoning_corpus", section.reasoning_corpus, "dataset")
    return Input("finetune.dataset", cfg.finetune.dataset, "dataset")


def local_data(cfg, stage: str) -> dict[str, tuple[str, dict[str, Path]]]:
    """{config key: (path, {name: file})} for every local dataset `stage` reads that is there now (a
    file, or a directory's data files): what its fingerprint records the content of
    (reasondiff.core.input_files). Models are no data (their weights are not hashed); hub ids, missing
    paths and unreadable sources are left out (the checks above report them)."""
    from reasondiff.lm.data_sources import local_files
    from reasondiff.lm.models import looks_local

    out = {}
    for item in stage_inputs(cfg, stage):
        if item.kind != "dataset" or item.key in out or not looks_local(item.value) \
                or not Path(item.value).expanduser().exists():
            continue
        try:
            files = local_files(item.value, item.key)
        except UserError:
            continue
        out[item.key] = (item.value, {file.name: file for file in files})
    return out


def finetune_dir_of(cfg) -> Path | None:
    """The finetune stage directory that made `tuned_model` (None for a model made elsewhere). For a
    null pair (docs/null.md), the reasoning fine-tune's: its analysis reads the reasoning pair's
    held-out rows (the same text), never the control fine-tune's chat rows."""
    if cfg.nulls.pair:
        reasoning = cfg.exp_dir / "finetune"
        return reasoning if reasoning.is_dir() else None
    owner = owning_stage_dir(cfg, cfg.tuned_model)
    return owner if owner is not None and split_dir_name(owner.name)[0] == "finetune" else None


def mix_excluded_questions(cfg) -> frozenset[str]:
    """question_keys (reasondiff.lm.holdout) of the fine-tune's held-out rows, when harvest mixes
    reasoning text in: scan, analyze and intervene read those rows as held-out reasoning text, so the
    harvest leaves them out and the crosscoder never trains on them. Empty without a mix."""
    from reasondiff.lm.holdout import resolve_split

    h = cfg.harvest
    if not (h.reasoning_fraction > 0 and h.reasoning_corpus):
        return frozenset()
    try:
        return resolve_split(cfg, finetune_dir_of(cfg)).heldout_questions
    except UserError as err:
        log.warning("harvest: cannot read the fine-tune's held-out rows (%s); the reasoning mix may hold rows that "
                    "scan and analyze read as held-out text", err)
        return frozenset()


def reasoning_text_problem(cfg, stage: str, produced: frozenset[Path] = frozenset()) -> str | None:
    """Reasoning text that would measure rows the fine-tune trained on: a reasoning_corpus sharing
    questions with the trained rows (unless `<stage>.allow_trained_text`), or held-out rows asked
    of a fine-tune that held none out, or held-out rows the crosscoder's activation store mixed in
    (`store_trained_problem`). One line; None when fine (or when the data cannot be read: the dataset
    check reports that). intervene reads analyze's reasoning text, as analyze reads it. `produced`:
    stage directories an earlier stage of the same run will write (absolute)."""
    import itertools

    from reasondiff.lm.data_sources import load_rows
    from reasondiff.lm.holdout import corpus_overlap, resolve_split

    owner = "analyze" if stage == "intervene" else stage
    section = getattr(cfg, owner, None)
    if stage == "intervene" and not cfg.intervene.n_reasoning_contexts:
        return None
    if section is None or not getattr(section, "n_reasoning_contexts", 0) or section.reasoning_text == "on_policy":
        return None
    try:
        split = resolve_split(cfg, finetune_dir_of(cfg))
        if section.reasoning_text == "heldout_rows":
            if split.heldout:
                return store_trained_problem(cfg, stage, split.heldout_questions, produced)
            return (f"{owner}.reasoning_text=heldout_rows: no row of {split.dataset} was held out ({split.origin}); "
                    f"re-run finetune with finetune.holdout.fraction > 0, or set {owner}.reasoning_text=on_policy")
        rows = load_rows(section.reasoning_corpus, split=getattr(section, "reasoning_split", "train"), streaming=True,
                         config_key=f"{owner}.reasoning_corpus")
        rows = [dict(r) for r in itertools.islice(rows, 20 * section.n_reasoning_contexts)]
    except UserError:
        return None
    return corpus_overlap(split, rows, stage=owner, corpus=section.reasoning_corpus,
                          allow=section.allow_trained_text)[1]


def crosscoder_store_dir(cfg, produced: frozenset[Path] = frozenset()) -> Path | None:
    """The activation store the crosscoder analyze reads was trained on: the harvest its train run
    recorded reading, else (train not run yet, or about to be redone: `produced`) the one
    train.data=store will read; None for a live-trained or foreign crosscoder."""
    crosscoder = Path(cfg.analyze.crosscoder_dir) if cfg.analyze.crosscoder_dir else cfg.stage_dir("train")
    from reasondiff.core.fingerprint import recorded

    record = None if crosscoder.absolute() in produced else recorded(crosscoder)
    if record is not None:
        harvests = [name for name in record.upstream if split_dir_name(Path(name).name)[0] == "harvest"]
        return directory_of(cfg, harvests[0]) if harvests else None
    if not cfg.analyze.crosscoder_dir and cfg.train.data == "store":
        return cfg.stage_dir("harvest")
    return None


def _reasoning_rows_read(store: dict) -> int | None:
    """How many rows of its reasoning corpus a store's harvest read (from its shards' stream states;
    None: every row, the corpus was cycled)."""
    read = 0
    for shard in store.get("shards", []):
        state = (shard.get("stream_state") or {}).get("reasoning") or {}
        if state.get("passes"):
            return None
        read = max(read, int(state.get("documents", 0)) + (1 if state.get("offset") else 0))
    return read


def store_trained_problem(cfg, stage: str, heldout: frozenset[str],
                          produced: frozenset[Path] = frozenset()) -> str | None:
    """analyze / intervene reading the fine-tune's held-out rows with a crosscoder whose activation
    store mixed some of them in (a store harvested before finetune.holdout existed left nothing out
    of its reasoning mix): one line, unless analyze.allow_trained_text. The evidence is the store's
    record: `corpus.reasoning_questions_excluded_keys` (the questions it left out) and its shards'
    stream states (how many reasoning rows it read); the rows read are looked up in its reasoning
    corpus. A store that records only a count of excluded questions left the fine-tune's held-out
    questions out when it was made (a fine-tune redone since makes it stale: `stale_links`)."""
    import itertools

    from reasondiff.lm.data_sources import load_rows
    from reasondiff.lm.holdout import question_key

    if stage not in ("analyze", "intervene") or cfg.analyze.allow_trained_text:
        return None
    store_dir = crosscoder_store_dir(cfg, produced)
    if store_dir is None or store_dir.absolute() in produced or not (store_dir / "store.json").is_file():
        return None
    store = artifacts.read_json(store_dir / "store.json")
    corpus = store.get("corpus") or {}
    if not (corpus.get("reasoning_fraction") and corpus.get("reasoning_corpus")):
        return None
    keys = corpus.get("reasoning_questions_excluded_keys")
    if keys is None and corpus.get("reasoning_questions_excluded"):
        return None
    excluded = frozenset(keys or ())
    n_read = _reasoning_rows_read(store)
    rows = load_rows(corpus["reasoning_corpus"], split=cfg.harvest.reasoning_split, streaming=True,
                     config_key="harvest.reasoning_corpus", fields=["question"])
    harvested = {question_key(row.get("question", "")) for row in itertools.islice(rows, n_read)}
    trained = (harvested & heldout) - excluded
    if not trained:
        return None
    return (f"{stage}: {len(trained)} of the {len(heldout)} held-out questions (analyze.reasoning_text=heldout_rows) "
            f"are in the reasoning mix of {store_dir}, which the crosscoder trained on ("
            + (f"it left out {len(excluded)} questions of another split" if excluded else
               "it left none out: harvested before finetune.holdout")
            + ") — redo harvest and train, set analyze.reasoning_text=on_policy, or analyze.allow_trained_text=true "
            "to measure them anyway")


# --- where inputs come from -----------------------------------------------------------------------
def owning_stage_dir(cfg, path: str | Path) -> Path | None:
    """The stage directory (finished or not) holding `path`: `<output_root>/<exp>/<stage>[@run]/...`,
    or any directory a stage wrote (it has a fingerprint.json or manifest.json)."""
    from reasondiff.lm.models import looks_local

    if not looks_local(str(path)):
        return None
    path = Path(path)
    root = Path(cfg.output_root).absolute()
    for candidate in (path, *path.parents):
        if (candidate / FINGERPRINT_FILE).is_file() or (candidate / artifacts.MANIFEST).is_file():
            return candidate
        if candidate.absolute().parent.parent == root and split_dir_name(candidate.name)[0] in _stages():
            return candidate
    return None


def upstream_dirs(cfg, stage: str) -> list[Path]:
    dirs = []
    for item in stage_inputs(cfg, stage):
        found = Path(item.value) if item.kind == "stage" else owning_stage_dir(cfg, item.value) \
            if item.kind in ("model", "crosscoder") else None
        if found is not None and found not in dirs:
            dirs.append(found)
    return dirs


def relative_name(cfg, directory: Path) -> str:
    try:
        return str(directory.absolute().relative_to(Path(cfg.output_root).absolute()))
    except ValueError:
        return str(directory.absolute())


def directory_of(cfg, name: str) -> Path:
    """The directory a recorded upstream name stands for (the inverse of `relative_name`)."""
    path = Path(name)
    return path if path.is_absolute() else Path(cfg.output_root) / path


# --- a stale input two stages up ------------------------------------------------------------------
@dataclass(frozen=True)
class StaleLink:
    reader: Path
    """A stage directory that read `redone`..."""
    redone: Path
    """...before that input was redone (or while it is being redone, or will be: the pipeline's plan)."""


def _stage_order(directory: Path) -> int:
    stage = split_dir_name(directory.name)[0]
    return _stages().index(stage) if stage in _stages() else len(_stages())


def stale_links(cfg, directories, *, pending=frozenset()) -> list[StaleLink]:
    """Every stage directory among `directories` and upstream of them whose recorded input is not
    what is there today, nearest the start of the pipeline first: each upstream's own recorded
    upstream (the harvest's finetune id) is compared with today's, all the way up. An input in
    `pending` (the pipeline will redo it) counts as redone; a directory in `pending` is not looked
    into (it will be redone on today's inputs); an input that is gone replaced nothing."""
    from reasondiff.core.fingerprint import artifact_id, recorded

    pending = {Path(p).absolute() for p in pending}
    links: list[StaleLink] = []
    seen: set[Path] = set()

    def visit(directory: Path) -> None:
        if directory.absolute() in seen or directory.absolute() in pending:
            return
        seen.add(directory.absolute())
        record = recorded(directory)
        if record is None:  # not a stage directory, or made before fingerprints
            return
        for name, read_id in record.upstream.items():
            source = directory_of(cfg, name)
            visit(source)
            if source.absolute() in pending or (source.exists() and artifact_id(source) != read_id):
                links.append(StaleLink(directory, source))

    for directory in directories:
        visit(Path(directory))
    if not links:  # an intermediate directory may be gone: each input's recorded lineage still tells
        for directory in directories:
            record = recorded(directory) if Path(directory).absolute() not in pending else None
            for name, read_id in (record.lineage if record is not None else {}).items():
                source = directory_of(cfg, name)
                if source.absolute() in pending or (source.exists() and artifact_id(source) != read_id):
                    links.append(StaleLink(Path(directory), source))
    return sorted(links, key=lambda link: _stage_order(link.reader))


def lineage(cfg, directories) -> dict[str, str]:
    """{stage directory: artifact id it had when read} for everything up the chain of `directories`
    (their own upstream and lineage records, all the way up), not the directories themselves."""
    from reasondiff.core.fingerprint import recorded

    found: dict[str, str] = {}
    seen: set[Path] = set()

    def visit(directory: Path) -> None:
        if directory.absolute() in seen:
            return
        seen.add(directory.absolute())
        record = recorded(directory)
        if record is None:
            return
        for name, read_id in {**record.lineage, **record.upstream}.items():
            found.setdefault(name, read_id)
        if not record.lineage:  # recorded before lineages were: walk what is on disk
            for name in record.upstream:
                visit(directory_of(cfg, name))

    for directory in directories:
        visit(Path(directory))
    return found


def own_finetune_output(cfg, path: str) -> bool:
    """Whether `path` is this experiment's fine-tune (`<exp>/finetune[@run]/model`)."""
    from reasondiff.lm.models import looks_local

    if not looks_local(path):
        return False  # a hub id
    model = Path(path).expanduser().absolute()
    return model.name == "model" and model.parent.parent == cfg.exp_dir.absolute() \
        and split_dir_name(model.parent.name)[0] == "finetune"


def tuned_model_given(cfg) -> bool:
    """`tuned_model` names a model this experiment does not fine-tune itself (a hub id, a local
    directory, another experiment's fine-tune): then there is nothing to fine-tune."""
    return not own_finetune_output(cfg, cfg.tuned_model)


def nothing_to_finetune(cfg) -> str:
    return (f"tuned_model={cfg.tuned_model} is given: there is nothing to fine-tune (the finetune stage writes "
            f"{cfg.exp_dir / 'finetune' / 'model'}, the default tuned_model; the other stages diff model.path "
            "against the given model)")


# --- the checks -----------------------------------------------------------------------------------
def _model_problem(cfg, item: Input, produced: set[Path]) -> str | None:
    from reasondiff.lm.models import looks_local, weights_mismatch

    owner = owning_stage_dir(cfg, item.value)
    if owner is not None and owner.absolute() in produced:
        return None
    if owner is not None and not artifacts.is_complete(owner):
        stage = split_dir_name(owner.name)[0]
        if stage in _stages():
            return (f"{item.key}={item.value}: the {stage} stage has not finished in {owner}; run it first "
                    f"(python -m reasondiff.{stage} ...) or set {item.key} to a hub id or a local model directory")
    if looks_local(item.value):
        local = Path(item.value).expanduser()
        if not local.exists():
            return f"{item.key}={item.value}: no such local directory (set {item.key} to a hub id or an HF model dir)"
        if not (local / "config.json").is_file():
            return f"{item.key}={item.value}: not a Hugging Face model directory (no config.json)"
        return weights_mismatch(local, item.key)
    if _hub_file(item.value, "config.json", cfg.model.revision if item.key == "model.path" else None) is None \
            and not _hub_up():
        local = "/path/to/" + item.value.rsplit("/", 1)[-1]
        return f"{item.key}={item.value}: not in the Hugging Face cache and the Hub is unreachable; point at a " \
               f"local copy with {item.key}={local} (huggingface-cli download {item.value} --local-dir {local})"
    return None


def _dataset_problem(item: Input) -> str | None:
    from reasondiff.lm.data_sources import validate_local
    from reasondiff.lm.models import looks_local

    if looks_local(item.value):
        try:
            validate_local(item.value, item.key)
        except UserError as err:
            return str(err)
        return None
    if not _hub_up() and not _dataset_cached(item.value):
        return f"{item.key}={item.value}: not in the Hugging Face cache and the Hub is unreachable (set {item.key} " \
               "to a local file)"
    return None


def _stage_problem(cfg, item: Input, produced: set[Path]) -> str | None:
    directory = Path(item.value)
    if item.optional or directory.absolute() in produced or artifacts.is_complete(directory):
        return None
    if item.kind == "crosscoder" and owning_stage_dir(cfg, directory) is None:
        # any directory in the train stage's format (e.g. converted from dictionary_learning)
        missing = [f for f in ("crosscoder.safetensors", "config.json") if not (directory / f).is_file()]
        foreign = any((directory / f).is_file() for f in ("model.safetensors", "cfg.json"))
        hint = f" (another tool's crosscoder? `python -m reasondiff.convert {directory} OUT` first)" if foreign else ""
        return f"{item.key}={directory}: no {' or '.join(missing)} there{hint}" if missing else None
    return f"{item.key}: no finished {item.stage} run in {directory}; run the {item.stage} stage first"


def _hub_up() -> bool:
    from reasondiff.lm.hub import prepare_hub

    return prepare_hub()


def _hub_file(repo: str, filename: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # an invalid repo id is reported when it is loaded
        return None
    return found if isinstance(found, str) else None


def _dataset_cached(repo: str) -> bool:
    try:
        import datasets.config
        import huggingface_hub.constants as hub
    except ImportError:
        return False
    org_name = repo.replace("/", "--")
    return (Path(hub.HF_HUB_CACHE) / f"datasets--{org_name}").is_dir() or \
        any(Path(datasets.config.HF_DATASETS_CACHE).glob(f"{repo.replace('/', '___')}*"))


def model_config(cfg, path: str, revision: str | None = None) -> dict[str, Any] | None:
    """config.json of a local model dir or a cached hub model (None when unavailable)."""
    from reasondiff.lm.models import looks_local

    file = Path(path) / "config.json" if looks_local(path) else _hub_file(path, "config.json", revision)
    if file is None or not Path(file).is_file():
        return None
    try:
        return json.loads(Path(file).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config


def shape_problems(cfg, stage: str) -> list[str]:
    """Settings that cannot fit the model (read from its config.json, no weights loaded)."""
    config = model_config(cfg, cfg.model.path, cfg.model.revision)
    if config is None:
        return []
    config = _text_config(config)
    n_layers, context = config.get("num_hidden_layers"), config.get("max_position_embeddings")
    problems = []
    hook_used = stage == "harvest" or (stage == "train" and cfg.train.data == "live")
    if hook_used and n_layers:
        from reasondiff.lm.models import parse_hook

        try:
            parse_hook(cfg.harvest.hook, int(n_layers))
        except UserError as err:
            problems.append(f"{err} (model.path={cfg.model.path} has {n_layers} layers)")
    if not context:
        return problems
    if stage == "bench":
        extra = cfg.bench.forcing.max_tokens_answer if cfg.bench.mode == "forced" else 0
        longest = max(cfg.bench.token_limits)
        if longest + extra >= context:
            problems.append(f"bench.token_limits={cfg.bench.token_limits}: {longest} generated tokens"
                            f"{f' + {extra} forced' if extra else ''} do not fit the {context}-position context "
                            f"of model.path={cfg.model.path} (with the prompt); lower bench.token_limits")
    for key, value, used in (("harvest.context_length", cfg.harvest.context_length, hook_used),
                             ("analyze.context_length", cfg.analyze.context_length, stage == "analyze"),
                             ("scan.context_length", cfg.scan.context_length, stage == "scan"),
                             ("finetune.max_length", cfg.finetune.max_length, stage == "finetune")):
        if used and value > context:
            problems.append(f"{key}={value} is longer than the {context}-position context of "
                            f"model.path={cfg.model.path}")
    return problems


def disk_needed(cfg, stage: str) -> tuple[int, str] | None:
    """Bytes a stage will write at most (checkpoints included), when it can be told up front
    (harvest checks again once it knows how much of a partial store is already on disk)."""
    if stage == "finetune":
        n_params = _n_params(cfg.model.path)
        if n_params is None:
            return None
        # trainer checkpoints: fp32 weights + two fp32 Adam moments (12 B/param), save_total_limit of
        # them plus the one being written; then model/ in at most fp32
        checkpoints = 0 if cfg.finetune.save_steps <= 0 else (cfg.finetune.save_total_limit + 1) * 12 * n_params
        return checkpoints + 4 * n_params, "finetune (trainer checkpoints + model/)"
    if stage == "train":
        d_model = _train_d_model(cfg)
        if d_model is None:
            return None
        n_latents = cfg.train.n_latents or cfg.train.expansion_factor * d_model
        params = 2 * 2 * d_model * n_latents + n_latents + 2 * d_model
        # checkpoint.pt (weights + Adam moments) and crosscoder.safetensors, fp32
        return 16 * params + 2**20, "train (checkpoint.pt + crosscoder.safetensors)"
    if stage == "harvest":
        config = model_config(cfg, cfg.model.path, cfg.model.revision)
        d_model = _text_config(config).get("hidden_size") if config else None
        if not d_model:
            return None
        itemsize = 4 if cfg.harvest.store_dtype == "float32" else 2
        return cfg.harvest.n_tokens * (2 * d_model * itemsize + 4), "harvest (activation shards)"
    return None


def _n_params(path: str) -> int | None:
    from reasondiff.lm.models import looks_local

    if not looks_local(path) or not Path(path).is_dir():
        return None
    files = list(Path(path).glob("*.safetensors"))
    if not files:
        return None
    header_bytes = 0
    dtype_bytes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
    n = 0
    for file in files:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        header_bytes += size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= dim
            n += count if dtype_bytes.get(entry["dtype"]) else 0
    return n or None


def _train_d_model(cfg) -> int | None:
    if cfg.train.data == "synthetic":
        return cfg.train.synthetic.d_model
    if cfg.train.data == "store":
        store = cfg.stage_dir("harvest") / "store.json"
        try:
            return int(json.loads(store.read_text())["d_model"])
        except (OSError, KeyError, ValueError):
            return None
    config = model_config(cfg, cfg.model.path, cfg.model.revision)
    return _text_config(config).get("hidden_size") if config else None


def problems(checks: list[tuple[Any, str]], *, produced: set[Path] | None = None, disk: bool = True) -> list[str]:
    """Every problem of the (config, stage) pairs, each once. `produced`: stage directories an
    earlier stage of the same run will write (not required to exist yet)."""
    produced = {p.absolute() for p in (produced or set())}
    found: list[str] = []
    seen: set[tuple[str, str]] = set()

    def add(problem: str | None) -> None:
        if problem and problem not in found:
            found.append(problem)

    for cfg, stage in checks:
        for item in stage_inputs(cfg, stage):
            if (item.key, item.value) in seen:
                continue
            seen.add((item.key, item.value))
            if item.kind == "model":
                add(_model_problem(cfg, item, produced))
            elif item.kind == "dataset":
                add(_dataset_problem(item))
            else:
                add(_stage_problem(cfg, item, produced))
        for problem in shape_problems(cfg, stage):
            add(problem)
        if stage in ("scan", "analyze", "intervene") and not found:
            add(reasoning_text_problem(cfg, stage, frozenset(produced)))
        need = disk_needed(cfg, stage) if disk and stage != "harvest" else None
        if need is not None:
            free = artifacts.free_bytes(cfg.stage_dir(stage))
            if need[0] > free:
                add(f"disk full at {artifacts.existing_ancestor(cfg.stage_dir(stage))}: {need[1]} needs about "
                    f"{artifacts.human_bytes(need[0])}, {artifacts.human_bytes(free)} free")
    return found


def check(checks: list[tuple[Any, str]], *, produced: set[Path] | None = None, disk: bool = True) -> None:
    """Raise ONE UserError listing every problem of the (config, stage) pairs."""
    found = problems(checks, produced=produced, disk=disk)
    if len(found) == 1:
        raise UserError(found[0])
    if found:
        raise UserError(f"{len(found)} problems: " + " | ".join(f"({i}) {p}" for i, p in enumerate(found, start=1)))
