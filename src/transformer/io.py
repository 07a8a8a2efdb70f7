"""Atomic file and directory writes: a crash leaves either the old file or the new one, never half.

Every writer here writes into a temporary sibling, flushes and fsyncs it, renames it over the
target (atomic on POSIX) and fsyncs the parent directory so that the rename itself survives a
power cut. Directories (a model directory, a checkpoint, a prepared data set, an export) are all
written through `atomic_directory`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

# What `atomic_directory` puts between a directory's name and the random part of its temporary one.
_UNFINISHED = ".tmp-"


def fsync_dir(directory: Path | str) -> None:
    """Make a rename or creation inside `directory` durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary sibling of `path`, then move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def fsync_tree(directory: Path | str) -> None:
    """fsync every file of a freshly written directory, then the directory itself."""
    directory = Path(directory)
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(directory)


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished directory `tmp` to `out`; an old `out` is moved aside, then removed."""
    old: Path | None = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            old.rmdir()
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: Path | str) -> Iterator[Path]:
    """Write the directory `out` atomically: fill the empty temporary directory this yields.

    When the block ends normally, every file in it is fsynced and it replaces `out` (an existing
    `out` is moved aside, then removed; an empty one is simply replaced). When the block raises,
    or the process is interrupted, the temporary directory is removed and `out` is left as it
    was. The directory gets the usual permissions (0777 less the umask) rather than the private
    ones `tempfile` gives. Its name, `.NAME.tmp-XXXX` beside `out`, is what
    `unfinished_directories` finds after a crash.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{_UNFINISHED}"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def unfinished_directories(parent: Path | str, name_pattern: str = "*") -> list[Path]:
    """The temporary directories that `atomic_directory` writes for outputs in `parent` whose
    name matches `name_pattern` and that a killed process left behind (safe to delete once no
    writer runs)."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.glob(f".{name_pattern}{_UNFINISHED}*") if p.is_dir())


def current_umask() -> int:
    """The process umask (read by setting and restoring it), for files made via `tempfile`,
    which creates them private (0600 / 0700) whereas outputs should get the usual permissions."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
