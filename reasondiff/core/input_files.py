"""What a local data file held when a stage read it: its size, modification time and SHA-256.

A stage's settings (reasondiff.core.fingerprint) hold a local dataset's *path*; a file rewritten
under the same path (a control set regenerated with other options) keeps the settings equal, so a
killed run would resume on other rows and a finished one be reused as if nothing changed. The stage
contract therefore records, beside the settings and outside their digest, the identity of every
local data file a stage reads (`fingerprint.json`: `input_files`), and refuses to resume or reuse a
run when one differs (reasondiff.app.stage.decide).

Cost, and what it can miss: a file up to `WHOLE_FILE_BYTES` (256 MiB) is
hashed whole; a larger one by `SAMPLE_BLOCKS` blocks of `BLOCK_BYTES` spread evenly over it, the
first and the last included (64 MiB read whatever its size) — there a rewrite that keeps the size
and touches no sampled block goes unnoticed (a regenerated dataset changes bytes throughout). A
file whose size and mtime (ns) equal the recorded ones is taken as unchanged without being read
(make's and rsync's rule), so re-checking a finished stage costs one `stat` per file.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

WHOLE_FILE_BYTES = 256 * 2**20
BLOCK_BYTES = 2**20
SAMPLE_BLOCKS = 64


def identify(files: dict[str, Path], known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """{name: {"size", "mtime_ns", "sha256", "sampled"}} of `files` ({name: path}). An entry of
    `known` (a recorded identity) whose size and mtime_ns still match is kept without reading the file."""
    known = known or {}
    out = {}
    for name, path in files.items():
        stat = Path(path).stat()
        before = known.get(name)
        if before and before.get("size") == stat.st_size and before.get("mtime_ns") == stat.st_mtime_ns:
            out[name] = dict(before)
        else:
            out[name] = dict(_identity(str(path), stat.st_size, stat.st_mtime_ns))
    return out


@functools.lru_cache(maxsize=256)
def _identity(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """Cached on (path, size, mtime): the pipeline's plan and the stage it then runs read a file once."""
    digest = hashlib.sha256()
    sampled = size > WHOLE_FILE_BYTES
    with open(path, "rb") as handle:
        if not sampled:
            for chunk in iter(lambda: handle.read(BLOCK_BYTES), b""):
                digest.update(chunk)
        else:
            last = size - BLOCK_BYTES
            for block in range(SAMPLE_BLOCKS):
                handle.seek(last * block // (SAMPLE_BLOCKS - 1))
                digest.update(handle.read(BLOCK_BYTES))
    return {"size": size, "mtime_ns": mtime_ns, "sha256": digest.hexdigest(), "sampled": sampled}


def difference(source: str, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> str | None:
    """What changed between two identities of `source` (a file, or a directory's files), in words;
    None when every file holds what it held (a newer mtime alone is no change)."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None:
            changes.append(f"{name} is new")
        elif new is None:
            changes.append(f"{name} is gone")
        elif old.get("size") != new["size"] or old.get("sha256") != new["sha256"]:
            size = (f"size {old.get('size')} -> {new['size']} bytes" if old.get("size") != new["size"]
                    else f"same size {new['size']} bytes")
            label = "sha256 of sampled blocks" if new.get("sampled") else "sha256"
            changes.append(f"{name}: {size}, {label} {str(old.get('sha256'))[:12]} -> {new['sha256'][:12]}")
    if not changes:
        return None
    if set(before) == set(after) == {Path(source).name}:
        return changes[0].split(": ", 1)[1]  # the source is this one file: its name is said already
    return "; ".join(changes)
