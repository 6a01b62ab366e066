"""What an app does with its command line before Hydra sees it: `--help`, typo'd keys, `run=a=b`.

- `--help` prints the app's own keys (its section and the shared keys it reads), each with its
  current value and the first line of the docstring under the dataclass field — the typed schema
  is the documentation. Hydra's own help stays at `--hydra-help`.
- A key that is not in the schema fails in one line naming the nearest valid key (Hydra's message
  suggests appending it with `+`, which the typed schema would refuse anyway).
- `run=l1_coeff=4` is quoted for Hydra's override grammar, which does not allow `=` in a value.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from typing import Any

GROUPS = ("model", "hardware", "exp", "pair", "sweep", "debug")
APP_TITLES = {
    "finetune": "stage 1: SFT of the base model on s1K-1.1 (trl)",
    "bench": "stage 2: token-budget sweeps, accuracy and time per token limit",
    "harvest": "stage 3: paired residual activations of the base and tuned models",
    "scan": "after harvest: where the fine-tune changed the model, layer by layer (representation change, "
            "activation patching), and the hook to harvest",
    "train": "stage 4: sparse crosscoder on the paired activations",
    "analyze": "stage 5: CE recovery, decoder norms, latents, report.md",
    "intervene": "after analyze: causal tests of the latents (patch / ablate / steer latent sets against random "
                 "sets, the Activation Difference Lens, budget sweeps of intervened models)",
    "pipeline": "every stage in order: skips finished ones, redoes stale ones",
}
SWEEPS_OF = {"train": ("l1_coeff", "k"), "bench": ("token_limits",), "harvest": ("layers",)}
HARDWARE_OF = {"finetune": ("finetune_micro_batch", "gradient_checkpointing"), "bench": ("bench_batch_size",),
               "harvest": ("harvest_batch_size",), "scan": ("analyze_batch_size",), "analyze": ("analyze_batch_size",),
               "intervene": ("analyze_batch_size", "bench_batch_size"), "train": ()}
HARDWARE_SHARED = ("name", "device", "dtype", "attn_implementation", "memory_gb", "dataloader_workers", "cpu_threads",
                   "malloc_mmap_threshold_kb", "progress_log_seconds")


# --- the schema's own documentation ---------------------------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} from the string literal under each field of a dataclass's source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _first_sentence(text: str, limit: int = 120) -> str:
    sentence = text.split(". ", 1)[0].rstrip(".") + "." if text else ""
    return sentence if len(sentence) <= limit else sentence[:limit - 1].rstrip() + "…"


def schema_entries(obj: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, one-line description) for every leaf of a config dataclass."""
    out = []
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += schema_entries(value, key + ".")
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            for name, sub in value.items():
                out += schema_entries(sub, f"{key}.{name}.")
        else:
            out.append((key, value, _first_sentence(docs.get(f.name, ""))))
    return out


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _wanted(app: str, cfg) -> list[str]:
    """Prefixes of the keys an app reads (the pipeline: the shared ones, stages point to their --help)."""
    from reasondiff.core.fingerprint import reads

    shared = ["exp_name", "output_root", "seed", "overwrite", "run", "wait_for_lock", "wandb"]
    if app == "pipeline":
        return [*shared, "pipeline", "model", "tuned_model", "format", *(f"hardware.{k}" for k in HARDWARE_SHARED)]
    hardware = [f"hardware.{k}" for k in (*HARDWARE_SHARED, *HARDWARE_OF.get(app, ()))]
    return [*shared, *reads(cfg, app), *hardware, *(f"sweeps.{k}" for k in SWEEPS_OF.get(app, ()))]


def app_help(app: str, overrides: list[str]) -> str:
    from hydra import compose, initialize_config_dir

    from reasondiff.config import CONF_DIR, STAGES, to_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_config(compose(config_name=app, overrides=[o for o in overrides if not o.startswith("-")]))
    wanted = _wanted(app, cfg)
    entries = [e for e in schema_entries(cfg) if any(e[0] == w or e[0].startswith(w + ".") for w in wanted)]
    own = [e for e in entries if e[0].startswith(f"{app}.")]
    rest = [e for e in entries if not e[0].startswith(f"{app}.")]
    width = min(44, max(len(f"{k}={_show(v)}") for k, v, _ in entries) + 2)
    groups = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in GROUPS}

    def line(key: str, value: Any, doc: str) -> str:
        text = f"{key}={_show(value)}"
        return f"  {text:<{width}} {doc}".rstrip() if len(text) < width else f"  {text}\n  {'':<{width}} {doc}".rstrip()

    out = [f"python -m reasondiff.{app} — {APP_TITLES.get(app, app)}", "",
           f"usage: python -m reasondiff.{app} [+exp=NAME] [key=value ...]",
           f"       python -m reasondiff.{app} --cfg job --resolve [+exp=NAME ...]   print the resolved config",
           f"       python -m reasondiff.{app} -m +exp=NAME +sweep=GRID [...]         multirun (a tally at the end)",
           "", "config groups: " + "  ".join(
               f"{'+' if g in ('exp', 'pair', 'sweep', 'debug') else ''}{g}={{{','.join(groups[g])}}}" for g in GROUPS),
           f"values below: {' '.join(overrides) or 'the defaults'} applied", ""]
    if own:
        out += [f"{app}.* (reasondiff/config/{app}.py)", *(line(*e) for e in own), ""]
    out += ["shared keys this app reads", *(line(*e) for e in rest)]
    if app == "pipeline":
        out += ["", "each stage's keys: " + ", ".join(f"python -m reasondiff.{s} --help" for s in STAGES)]
    if app == "train" and cfg.train.data == "live":
        out += ["", "train.data=live also reads harvest.* (python -m reasondiff.harvest --help)"]
    out += ["", "Hydra's own options: --hydra-help"]
    return "\n".join(out)


# --- typo'd keys ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _valid_keys() -> tuple[frozenset[str], tuple[str, ...]]:
    """(every key and section of the schema, prefixes under which any key is allowed (dict fields))."""
    from reasondiff.config import Config

    keys: set[str] = set()
    open_prefixes: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            keys.add(key)
            hint = hints.get(f.name)
            if dataclasses.is_dataclass(hint):
                walk(hint, key + ".")
            elif typing.get_origin(hint) is dict:
                open_prefixes.append(key + ".")
                value_type = typing.get_args(hint)[1] if typing.get_args(hint) else None
                if dataclasses.is_dataclass(value_type):
                    for sub in dataclasses.fields(value_type):
                        keys.add(f"{key}.*.{sub.name}")

    walk(Config, "")
    return frozenset(keys), tuple(open_prefixes)


def unknown_key(app: str, overrides: list[str]) -> str | None:
    """A one-line error for the first override naming no config key, else None."""
    keys, open_prefixes = _valid_keys()
    for override in overrides:
        if override.startswith("-") or "=" not in override and not override.startswith("~"):
            continue
        key = override.lstrip("~").split("=", 1)[0]
        if override.startswith("+") or key.startswith("hydra") or key.split("@")[0].split("/")[0] in GROUPS:
            continue
        if key in keys or _in_open_dict(key, keys, open_prefixes):
            continue
        pool = sorted(k for k in keys if "*" not in k)
        for prefix in open_prefixes:  # bench.data.gsm8k.pth -> bench.data.gsm8k.path
            if key.startswith(prefix) and "." in key[len(prefix):]:
                name = key[len(prefix):].split(".")[0]
                pool += [k.replace(f"{prefix}*.", f"{prefix}{name}.") for k in keys if k.startswith(f"{prefix}*.")]
        section = key.rsplit(".", 1)[0] if "." in key else ""
        near = difflib.get_close_matches(key, [k for k in pool if k.startswith(section + ".")] if section else pool,
                                         n=1, cutoff=0.5) or difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else ""
        return (f"{key} is not a config key{hint} (python -m reasondiff.{app} --help lists the keys; "
                "config groups are model=, hardware=, +exp=, +sweep=, +debug=)")
    return None


def bad_value(app: str, argv: list[str]) -> str | None:
    """A one-line error for an override whose value the typed schema refuses (`train.l1_coeff=abc`),
    else None. Hydra reports it in five lines (and exit code 1); composing the config here first
    finds it in the schema's words. A multirun's comma lists are left to the sweeper."""
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import ValidationError

    from reasondiff.config import CONF_DIR

    if any(a in ("-m", "--multirun") or a.startswith("--cfg") for a in argv):
        return None
    overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=app, overrides=overrides)
    except Exception as err:  # noqa: BLE001 (only a refused value is ours to word; Hydra reports the rest)
        cause = err
        while cause is not None and not isinstance(cause, ValidationError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            return None
        key = getattr(cause, "full_key", None) or ""
        given = next((o.lstrip("+") for o in overrides if key and o.lstrip("+").split("=", 1)[0] == key), key)
        reason = one_line_error(cause)
        return (f"{given}: {reason} (python -m reasondiff.{app} --help shows each key's current value)")
    return None


def _in_open_dict(key: str, keys: frozenset[str], open_prefixes: tuple[str, ...]) -> bool:
    """`bench.data.NAME` (a new entry) or `bench.data.NAME.path` (a field of the entry's schema)."""
    for prefix in open_prefixes:
        if key.startswith(prefix):
            parts = key[len(prefix):].split(".")
            return len(parts) == 1 or f"{prefix}*.{'.'.join(parts[1:])}" in keys or \
                not any(k.startswith(f"{prefix}*.") for k in keys)
    return False


def multirun_first(argv: list[str]) -> list[str]:
    """`+exp=X seed=1,2 -m` -> `-m +exp=X seed=1,2`: Hydra's parser takes the overrides as one run of
    positional arguments, so an override after `-m` ended it with "unrecognized arguments"."""
    flags = [a for a in argv if a in ("-m", "--multirun")]
    return [*flags, *(a for a in argv if a not in ("-m", "--multirun"))]


def quote_run_values(argv: list[str]) -> list[str]:
    """`run=l1_coeff=4` -> `run='l1_coeff=4'` (Hydra's grammar has no `=` in unquoted values)."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "run" and "=" in value and not value.startswith(("'", '"')):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def help_requested(argv: list[str]) -> bool:
    return any(a in ("--help", "-h") for a in argv)


def one_line_error(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
