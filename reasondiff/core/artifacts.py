"""Atomic writes, manifests and completion markers: the contract between stages.

"Exists" never means "complete": a stage directory is finished only when `COMPLETED`, written
last, is present. Every file goes through `atomic_write` (staging file in the same directory,
fsync, os.replace, fsync of the directory), so a kill at any point leaves either the old file or
the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

COMPLETED = "COMPLETED"
MANIFEST = "manifest.json"


def _file_mode() -> int:
    """What open() would give a new file (0666 minus the umask): mkstemp's 0600 would make every
    artifact unreadable to the rest of a team sharing outputs/."""
    umask = 0o022
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o666 & ~umask


@contextlib.contextmanager
def _staged(path: Path, prefix: str, suffix: str) -> Iterator[tuple[int, str]]:
    """(fd, staging path) beside `path`, with the mode a plain open() gives; moved over `path` when the
    block ends, removed when it raises. What atomic_write and atomic_save share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, _file_mode())
    try:
        yield fd, tmp
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a staging file next to `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    with _staged(path, f".{path.name}.", ".tmp") as (fd, _), os.fdopen(fd, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(directory: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def atomic_save(path: str | os.PathLike, save_fn) -> None:
    """For libraries that write to a path themselves (torch.save, safetensors, savefig):
    `save_fn(staging_path)` writes the file, then it is moved into place atomically."""
    path = Path(path)
    with _staged(path, f".{path.stem}.", path.suffix) as (fd, tmp):
        os.close(fd)
        save_fn(tmp)
        with contextlib.suppress(OSError):  # some writers (safetensors) replace the file: mkstemp's 0600 back
            os.chmod(tmp, _file_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


def sha256_file(path: str | os.PathLike, chunk: int = 16 * 2**20) -> str:
    """The sha256 of a file, read in chunks (shard and crosscoder checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_dir(final: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Build a directory under a staging name and swap it into place when the block succeeds."""

    @contextlib.contextmanager
    def _cm() -> Iterator[Path]:
        target = Path(final)
        staging = target.with_name(f".{target.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
        fsync_dir(target.parent)

    return _cm()


def is_complete(directory: str | os.PathLike) -> bool:
    return (Path(directory) / COMPLETED).is_file()


def mark_complete(directory: str | os.PathLike, record: dict[str, Any] | None = None) -> None:
    """Write `COMPLETED` (last): a small JSON record — when, and for a stage its fingerprint and
    artifact id (reasondiff.core.fingerprint), so that downstream stages can tell a redone input."""
    record = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(record or {})}
    write_text(Path(directory) / COMPLETED, json.dumps(record, sort_keys=True) + "\n")


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The `COMPLETED` record, None when the directory is not complete. Markers written before
    records existed (a bare timestamp) read as {"finished_at": <text>, "legacy": True}."""
    path = Path(directory) / COMPLETED
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        record = {"finished_at": text.strip(), "legacy": True}
    return record


def clear_complete(directory: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(directory) / COMPLETED).unlink()


def _git(*args: str, text: bool = True, cwd: Path | None = None) -> str | bytes | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=text, timeout=10,
                             cwd=cwd or Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(cwd: Path | None = None) -> str | None:
    out = _git("rev-parse", "HEAD", cwd=cwd)
    return out.strip() or None if isinstance(out, str) else None


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The code a stage runs: `commit` (HEAD), `dirty` (tracked changes or untracked, not ignored,
    files) and `diff_sha256` (of `git diff HEAD` plus every untracked file's path and bytes), so a
    result made from an uncommitted tree can be told apart from one made at the commit. Taken when
    the stage STARTS: a commit made while a long stage runs is not the code that ran. All None
    outside a git checkout (an installed wheel). `cwd`: a directory of the checkout (default: this
    package's)."""
    commit = git_commit(cwd)
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None}
    top = _git("rev-parse", "--show-toplevel", cwd=cwd)
    root = Path(top.strip()) if isinstance(top, str) and top.strip() else None
    status = _git("status", "--porcelain", cwd=root)
    diff = _git("diff", "HEAD", "--binary", text=False, cwd=root)
    untracked = _git("ls-files", "--others", "--exclude-standard", "-z", cwd=root)  # paths from the root
    if root is None or status is None or diff is None or untracked is None:
        return {"commit": commit, "dirty": None, "diff_sha256": None}
    digest = hashlib.sha256(diff)
    for name in sorted(n for n in untracked.split("\0") if n):
        digest.update(b"\0untracked\0" + name.encode())
        with contextlib.suppress(OSError):
            digest.update((root / name).read_bytes())
    dirty = bool(status.strip())
    return {"commit": commit, "dirty": dirty, "diff_sha256": digest.hexdigest() if dirty else None}


def dirty_warning(state: dict[str, Any], stage: str) -> str | None:
    """One line when the tree a stage runs from has uncommitted changes (None when clean/unknown)."""
    if not state.get("dirty"):
        return None
    return (f"{stage}: the working tree has uncommitted changes (on {str(state['commit'])[:10]}, diff sha256 "
            f"{str(state['diff_sha256'])[:12]}); the manifest records them, commit first for a reproducible result")


_VERSIONED = ("reasondiff", "torch", "transformers", "trl", "datasets", "transformer-lens", "hydra-core",
              "safetensors", "math-verify", "vllm")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def build_manifest(stage: str, *, inputs: dict[str, Any], outputs: dict[str, Any], seed: int,
                   wall_seconds: float, extra: dict[str, Any] | None = None,
                   git: dict[str, Any] | None = None) -> dict[str, Any]:
    """`git`: `git_state()` taken when the stage started (taken now when not given)."""
    git = git if git is not None else git_state()
    return {
        "stage": stage,
        "inputs": inputs,
        "outputs": outputs,
        "seed": seed,
        "wall_seconds": round(wall_seconds, 3),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "git_diff_sha256": git["diff_sha256"],
        "versions": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }


class DiskSpaceError(RuntimeError):
    pass


def existing_ancestor(path: str | os.PathLike) -> Path:
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(path: str | os.PathLike) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def human_bytes(n: float) -> str:
    """1.23 GB, 45.6 MB, 789 kB: disk messages readable for a 50 GB store and a tiny test alike."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size or unit == "kB":
            return f"{n / size:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n:.0f} B"


def ensure_free_space(directory: str | os.PathLike, bytes_needed: int, what: str) -> None:
    """Refuse up front, not when the disk fills halfway through a shard."""
    probe = existing_ancestor(directory)
    free = shutil.disk_usage(probe).free
    if bytes_needed > free:
        raise DiskSpaceError(
            f"disk full at {probe}: {what} needs about {human_bytes(bytes_needed)}, {human_bytes(free)} free; "
            "free space or lower the token count"
        )


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# What libraries say when a write hits a full or read-only disk without raising a plain OSError:
# torch.save ("unexpected pos ... PytorchStreamWriter failed writing file"), safetensors (Rust io
# errors), numpy/pyarrow wrapping the OSError text.
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull", "os error 28",
                   "unexpected pos", "failed writing file")
_READ_ONLY_TEXT = ("read-only file system", "readonlyfilesystem", "os error 30")


def disk_error_kind(error: BaseException) -> str | None:
    """"full" or "read-only" when `error` (or anything in its cause/context chain) is a write that
    failed for lack of space or a read-only filesystem; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return "full"
        if isinstance(current, OSError) and current.errno == errno.EROFS:
            return "read-only"
        text = str(current).lower()
        if any(marker in text for marker in _READ_ONLY_TEXT):
            return "read-only"
        if any(marker in text for marker in _DISK_FULL_TEXT):
            return "full"
        current = current.__cause__ or current.__context__
    return None
