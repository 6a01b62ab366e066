"""Commands printed for the user (scan's follow-ups, refusals, the report's commands): they carry the
overrides the run was made with (`+exp=`, `exp_name=`, `model.path=`, `tuned_model=` ...), less
`overwrite`, `run` and the keys a command sets itself, so they can be pasted as printed (docs/runs.md).
"""

from __future__ import annotations

import re

from reasondiff.app import preflight
from reasondiff.config import CONF_DIR, Config

RUN_OVERRIDES: list[str] = []
"""The command-line overrides of this process's run (recorded in runs.json with a run's name)."""


def _key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def experiment_args(cfg: Config) -> list[str]:
    """`+exp=NAME` when an experiment file named like exp_name exists, else a placeholder plus exp_name."""
    if (CONF_DIR / "exp" / f"{cfg.exp_name}.yaml").is_file():
        return [f"+exp={cfg.exp_name}"]
    return ["+exp=<experiment>", f"exp_name={cfg.exp_name}"]


def carried_overrides(cfg: Config, *, drop: tuple[str, ...] = ()) -> list[str]:
    """The overrides this run was made with (its command line; from the config where there was
    none, as in a library call), less the keys in `drop` (a key, or a section ending in `.`)."""
    overrides = list(RUN_OVERRIDES)
    if not overrides:
        overrides = experiment_args(cfg)
        if preflight.tuned_model_given(cfg):
            overrides.append(f"tuned_model={cfg.tuned_model}")
        if cfg.run:
            overrides.append(f"run={cfg.run}")
    return [o for o in overrides if not any(_key_of(o) == d or (d.endswith(".") and _key_of(o).startswith(d))
                                            for d in (*drop, "hydra."))]


def _shell(word: str) -> str:
    import shlex

    if re.fullmatch(r"[^\s]*<\w+>[^\s]*", word):
        return word  # a placeholder for the user to fill in (+exp=<experiment>)
    return shlex.quote(word) if re.search(r"[\s$&;|<>()*?!`\\{}\"#]", word) else word


def command_args(cfg: Config, *extra: str, drop: tuple[str, ...] = ("overwrite",)) -> str:
    """This run's overrides (`exp_name=`, `tuned_model=`, `model.path=` ... so a printed command can
    be pasted) and `extra`, which replace the carried ones of the same key; shell-quoted where needed."""
    carried = carried_overrides(cfg, drop=(*drop, *(_key_of(e) for e in extra)))
    return " ".join(_shell(w) for w in (*carried, *extra))


def user_command(app: str, cfg: Config, *extra: str, drop: tuple[str, ...] = ("overwrite",)) -> str:
    """`python -m reasondiff.<app>` with this run's overrides and `extra` (see `command_args`)."""
    return f"python -m reasondiff.{app} {command_args(cfg, *extra, drop=drop)}".rstrip()
