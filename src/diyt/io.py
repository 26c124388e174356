"""Atomic writes: an output either exists complete or not at all, whatever kills the process.

A write goes to a temporary `.<name>.<8 random characters>.tmp` beside its target and is renamed over it; what a
killed write left there is removed by the next write of the same target.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diyt.errors import DiytError


# a write that fails for want of room or a writable disk, wherever in it: said as the output's, not the caller's
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@contextlib.contextmanager
def _naming(path: Path, only: frozenset[int] | None = None) -> Iterator[None]:
    """Turn an OSError (or only those of the errnos `only`; any other stays the caller's) into one error naming
    `path` and what is in the way, unless that is the output or our temporary."""
    try:
        yield
    except OSError as err:
        if only is not None and err.errno not in only:
            raise
        other = Path(err.filename) if err.filename else path
        blocker = "" if other == path or other.name.endswith(".tmp") else f": {other}"
        raise DiytError(f"{path}: cannot write it ({err.strerror or err}{blocker}); choose a writable place "
                        "with room") from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporaries (and a folder's replaced copy) that a killed write of `path` left beside it."""
    path = Path(path)
    for stale in (*path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"), path.with_name(f".{path.name}.old")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, clean: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it.

    `clean=False` skips clearing a killed write's leftovers, which lists the folder: for one of thousands of files.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean:
            remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp = Path(tmp)
    try:
        with _naming(path, only=FULL_DISK):
            yield tmp
        with _naming(path):
            if tmp.exists():  # mkstemp makes 0600 files; give the result the usual permissions
                tmp.chmod(0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _naming(path, only=FULL_DISK):
            yield tmp
        with _naming(path):
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700 folders
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj: object) -> str:
    """How DiyT writes JSON: indented, keys in their given order, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json_text(obj))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
