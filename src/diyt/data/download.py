"""Resumable, checksum-verified downloads and safe archive extraction.

A download streams into `<dest>.part` and resumes it with an HTTP Range request; `dest` appears only once
its checksum verifies. An archive is extracted into a temporary folder beside the target, member by member
after checking each one (no paths outside the target, no links, no device files), then renamed into place.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from shutil import copyfileobj
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from diyt.errors import DataError
from diyt.io import atomic_dir

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation (connect, each read), not for the whole download
USER_AGENT = "diyt-downloader/0.1"
PART_SUFFIX = ".part"

# Python >= 3.11.4 sanitises tar members itself as well; our own checks below do not rely on it.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, lzma.LZMAError, zlib.error,
            NotImplementedError, RuntimeError)  # zipfile: an unknown compression or version, an encrypted member
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}  # else an OSError is the archive's


# -------------------------------------------------------------------------------------------- download
def download(url: str, dest: Path, sha256: str | None = None, md5: str | None = None, progress: bool = True,
             timeout: float = TIMEOUT_S) -> Path:
    """Fetch `url` into `dest` (resuming a previous `.part`) and verify it; an existing verified `dest` is kept."""
    dest = Path(dest)
    expected = {algo: digest.lower() for algo, digest in (("sha256", sha256), ("md5", md5)) if digest}
    if dest.exists():
        if _mismatch(dest, expected) is None:
            return dest
        dest.unlink()  # a stale or corrupt copy: fetch it afresh
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    _fetch(url, part, progress, timeout)
    mismatch = _mismatch(part, expected)
    if mismatch is not None:
        part.unlink(missing_ok=True)
        algo, want, got = mismatch
        raise DataError(f"{url}: {algo} checksum mismatch (expected {want}, got {got}); the download was "
                        "deleted: run again to retry, and if it persists the server serves another file, so "
                        "get the dataset by hand and set data.path to it")
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of `url` to `part` (or rewrite it when the server cannot resume)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    restart, total = False, None
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout) as resp:
            if offset and not _resumes(resp, offset):
                restart = resp.status != 200  # a 200 carries the whole file: use it from byte 0
                offset = 0
            if not restart:
                total = _content_length(resp)
                total = None if total is None else offset + total
                _stream(resp, part, offset, total, progress)
    except HTTPError as err:
        if err.code != 416 or not offset:
            raise DataError(f"{url}: HTTP {err.code} {err.reason}; check the URL, or set data.path to a "
                            "local copy of the dataset") from None
        restart = True  # the range starts past the end: the partial file is stale
    except (URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        raise DataError(f"{url}: download failed ({reason}); run again to resume {part.name}, or set "
                        "data.path to a local copy of the dataset") from None
    if restart:
        part.unlink(missing_ok=True)
        _fetch(url, part, progress, timeout)
        return
    if total is not None and part.stat().st_size < total:
        raise DataError(f"{url}: the connection closed after {part.stat().st_size} of {total} bytes; run "
                        f"again to resume {part.name}, or set data.path to a local copy of the dataset")


def _resumes(resp, offset: int) -> bool:
    return resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-")


def _content_length(resp) -> int | None:
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _stream(resp, part: Path, offset: int, total: int | None, progress: bool) -> None:
    with open(part, "ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(PART_SUFFIX), disable=not progress, leave=False) as bar:
        while chunk := resp.read(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))


def _mismatch(path: Path, expected: dict[str, str]) -> tuple[str, str, str] | None:
    """The first (algorithm, expected, actual) that does not match, or None when all match."""
    if not expected:
        return None
    hashes = {algo: hashlib.new(algo) for algo in expected}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    for algo, want in expected.items():
        got = hashes[algo].hexdigest()
        if got != want:
            return algo, want, got
    return None


# --------------------------------------------------------------------------------------------- extract
def extract(archive: Path, target: Path) -> Path:
    """Extract a .zip, .tar, .tar.gz or .tar.xz into `target`, atomically; unsafe members are refused."""
    archive, target = Path(archive), Path(target)
    extractor = _EXTRACTORS[_archive_kind(archive)]
    with atomic_dir(target) as tmp:  # creating and renaming the folder: its own one-line error
        try:
            extractor(archive, tmp.resolve())
        except (*_CORRUPT, OSError) as err:
            if isinstance(err, OSError) and err.errno in _UNWRITABLE:
                raise DataError(f"{target}: cannot write what {archive.name} holds ({err.strerror}); free some "
                                f"space or make {target.parent} writable, then run again") from None
            detail = next(iter(str(err).splitlines()), "").rstrip(":")  # tarfile lists every method it tried
            raise DataError(f"{archive}: truncated or corrupt archive ({type(err).__name__}: {detail}); delete "
                            "it and download it again") from None
    return target


def _archive_kind(archive: Path) -> str:
    """'zip' or 'tar', by content first (magic bytes), by suffix for files too short to tell."""
    try:
        with open(archive, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise DataError(f"{archive}: cannot read the archive ({err.strerror or err})") from None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    compressed = (b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh")
    if head.startswith(compressed) or head[257:262] == b"ustar":
        return "tar"
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")):
        return "tar"
    raise DataError(f"{archive}: not a .zip or .tar(.gz/.xz) archive; delete it and download it again")


def _member_path(archive: Path, root: Path, name: str, kind: str) -> Path:
    """Where a member lands under `root`, after refusing links, devices and paths that leave `root`."""
    if kind not in ("file", "folder"):
        raise DataError(f"{archive}: refusing member {name!r}, a {kind} (only files and folders are "
                        "extracted); the archive is not the expected dataset")
    posix = name.replace("\\", "/")
    dest = (root / posix).resolve()
    if (posix.startswith("/") or PureWindowsPath(name).drive or ".." in PurePosixPath(posix).parts
            or not dest.is_relative_to(root)):
        raise DataError(f"{archive}: refusing member {name!r}, its path leaves the extraction folder; the "
                        "archive is not the expected dataset")
    return dest


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "folder"
    kinds = ((member.issym, "symbolic link"), (member.islnk, "hard link"), (member.ischr, "character device"),
             (member.isblk, "block device"), (member.isfifo, "FIFO"))
    return next((kind for test, kind in kinds if test()), "special file")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "folder"
    mode = info.external_attr >> 16  # Unix mode bits when the archive was made on Unix, else 0
    if stat.S_IFMT(mode) in (0, stat.S_IFREG):  # no file type recorded means a plain file
        return "file"
    kinds = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "folder"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            _member_path(archive, root, member.name, _tar_kind(member))
            tf.extract(member, root, **_TAR_FILTER)


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            kind = _zip_kind(info)
            dest = _member_path(archive, root, info.filename, kind)
            if kind == "folder":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                copyfileobj(src, dst, CHUNK)


_EXTRACTORS = {"tar": _extract_tar, "zip": _extract_zip}

__all__ = ["download", "extract"]
