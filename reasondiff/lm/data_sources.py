"""Rows of a dataset from the Hugging Face Hub or a local file, behind one function.

Every stage accepts either a hub id (what users run) or a local .jsonl/.json/.parquet/.csv/.txt
file (offline runs, tests on ../shared/data). A local file is checked before any work: an empty
file, a line that is not JSON, or a row without a required field fails at once in one line naming
the config key, the file, the 1-based line and the field — not after the first shards were written,
and not with the row number of some chunk of the file the datasets library happened to parse.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reasondiff.core.errors import UserError
from reasondiff.lm.models import looks_local

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def local_files(source: str, config_key: str) -> list[Path]:
    """The files a local source names (a file, or a directory of them); UserError when there are none."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"{config_key}={source}: no such local file")
    files = sorted(p for p in path.iterdir() if p.suffix in _LOCAL_FORMATS) if path.is_dir() else [path]
    if not files or files[0].suffix not in _LOCAL_FORMATS:
        raise UserError(f"{config_key}={source}: expected a {'/'.join(_LOCAL_FORMATS)} file or a directory of them")
    return files


def validate_local(source: str, config_key: str, fields: Sequence[str] = ()) -> None:
    """Check a local source before it is read: not empty, and for JSON Lines every line parses and
    holds `fields` (not null)."""
    for file in local_files(source, config_key):
        stat = file.stat()
        _validate_file(str(file), stat.st_size, stat.st_mtime_ns, config_key, tuple(fields))


@functools.lru_cache(maxsize=64)
def _validate_file(file: str, size: int, mtime_ns: int, config_key: str, fields: tuple[str, ...]) -> None:
    """Cached on (file, size, mtime): analyze and harvest reading one corpus check it once."""
    path = Path(file)
    if size == 0:
        raise UserError(f"{config_key}={file}: the file is empty")
    if path.suffix != ".jsonl":
        return
    rows = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise UserError(f"{config_key}={file}: line {number} is not valid JSON ({_reason(err)})") from err
            if not isinstance(row, dict):
                raise UserError(f"{config_key}={file}: line {number} is a JSON {type(row).__name__}, expected an "
                                "object with named fields")
            problem = field_problem(row, fields)
            if problem:
                raise UserError(f"{config_key}={file}: line {number} {problem}")
            rows += 1
    if rows == 0:
        raise UserError(f"{config_key}={file}: no rows (only blank lines)")


def _reason(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        # some messages end in "at" themselves ("Unterminated string starting at")
        return f"{err.msg.removesuffix(' at')} at column {err.colno}"
    return str(err).splitlines()[0]


def load_rows(source: str, *, split: str = "train", config_name: str | None = None, streaming: bool = False,
              config_key: str = "dataset", fields: Sequence[str] = ()):
    """A `datasets.Dataset` (or IterableDataset when streaming) from a hub id or a local file/dir.
    A local source is validated first (`validate_local`, with the required `fields`)."""
    import datasets

    if looks_local(source):
        validate_local(source, config_key, fields)
        files = local_files(source, config_key)
        builder = _LOCAL_FORMATS[files[0].suffix]
        try:
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                         streaming=streaming)
        except Exception as err:  # datasets raises many types for malformed files
            raise UserError(f"{config_key}={source}: could not read it as {builder} "
                            f"({_first_line(err)})") from err
    from reasondiff.lm.hub import prepare_hub

    prepare_hub()
    try:
        return datasets.load_dataset(source, config_name, split=split, streaming=streaming)
    except Exception as err:
        raise UserError(f"{config_key}={source}: could not load from the Hugging Face Hub "
                        f"({_first_line(err)}); offline? set {config_key} to a local file") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def field_problem(row: Mapping[str, Any], fields: Iterable[str]) -> str | None:
    """What is wrong with `row`'s required fields, telling a missing field from a null one."""
    missing = [f for f in fields if f not in row]
    null = [f for f in fields if f in row and row[f] is None]
    if not missing and not null:
        return None
    parts = []
    if missing:
        parts.append(f"has no field {', '.join(missing)} (fields: {', '.join(sorted(row)) or 'none'})")
    if null:
        parts.append(f"has {', '.join(null)} set to null")
    return " and ".join(parts)


def require_fields(row: Mapping[str, Any], fields: Iterable[str], *, index: int, source: str) -> None:
    """`index` is the 0-based row of the dataset (for a JSON Lines file, its non-blank lines)."""
    problem = field_problem(row, fields)
    if problem:
        raise UserError(f"{source}: row {index} {problem}")
