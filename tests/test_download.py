"""Downloads (resume, checksums, network failures) and safe extraction, against a local HTTP server."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from http_server import ArchiveServer, tar_bytes, unsafe_archives, zip_bytes

from diyt.data.download import download, extract
from diyt.errors import DataError

PAYLOAD = os.urandom(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with ArchiveServer() as srv:
        yield srv


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -------------------------------------------------------------------------------------------- download
def test_download_verifies_then_skips(server, tmp_path):
    url = server.add("/data.bin", PAYLOAD)
    dest = tmp_path / "cache" / "data.bin"
    assert download(url, dest, sha256=SHA256, md5=MD5, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    download(url, dest, sha256=SHA256, progress=False)
    assert len(server.requests) == 1  # verified copy kept, nothing fetched


def test_resume_after_a_cut_connection(server, tmp_path):
    url = server.add("/data.tar.xz", PAYLOAD)
    server.cut_after["/data.tar.xz"] = 100_000
    dest = tmp_path / "data.tar.xz"
    with pytest.raises(DataError, match="resume") as err:
        download(url, dest, sha256=SHA256, progress=False)
    assert url in _one_line(err)
    part = tmp_path / "data.tar.xz.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    cut_at = part.stat().st_size

    download(url, dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1].range == f"bytes={cut_at}-" and server.requests[-1].status == 206


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.add("/data.bin", PAYLOAD)
    server.ignore_range = True
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(b"stale bytes from another file")
    download(url, dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0].range is not None and server.requests[0].status == 200


def test_partial_file_past_the_end_restarts(server, tmp_path):
    url = server.add("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD + b"junk")
    download(url, dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r.status for r in server.requests] == [416, 200]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url = server.add("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        download(url, dest, sha256=wrong, progress=False)
    msg = _one_line(err)
    assert url in msg and wrong in msg and SHA256 in msg and "data.path" in msg
    assert list(tmp_path.iterdir()) == []


def test_md5_mismatch_is_caught_too(server, tmp_path):
    url = server.add("/data.bin", PAYLOAD)
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        download(url, tmp_path / "data.bin", sha256=SHA256, md5="f" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_existing_dest_is_fetched_again(server, tmp_path):
    url = server.add("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"corrupt")
    download(url, dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_http_error_names_the_url(server, tmp_path):
    url = server.url("/missing.zip")
    with pytest.raises(DataError, match="HTTP 404") as err:
        download(url, tmp_path / "missing.zip", progress=False)
    assert url in _one_line(err) and "data.path" in str(err.value)


def test_connection_refused_names_the_url(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.zip"
    with pytest.raises(DataError, match="download failed") as err:
        download(url, tmp_path / "data.zip", progress=False)
    assert url in _one_line(err) and "data.path" in str(err.value)


def test_stalled_server_times_out(server, tmp_path):
    url = server.add("/slow.bin", PAYLOAD)
    server.stall_s = 1.0
    with pytest.raises(DataError, match="timed out") as err:
        download(url, tmp_path / "slow.bin", progress=False, timeout=0.2)
    assert url in _one_line(err)


# --------------------------------------------------------------------------------------------- extract
FILES = {"root/a.txt": b"alpha", "root/sub/b.bin": os.urandom(5000)}


@pytest.mark.parametrize("name, make", [
    ("data.tar.xz", lambda: tar_bytes(FILES, "w:xz")),
    ("data.tar.gz", lambda: tar_bytes(FILES, "w:gz")),
    ("data.tar", lambda: tar_bytes(FILES, "w")),
    ("data.zip", lambda: zip_bytes(FILES)),
    ("no_suffix", lambda: tar_bytes(FILES, "w:xz")),  # detected by content
])
def test_extract_formats(tmp_path, name, make):
    archive = tmp_path / name
    archive.write_bytes(make())
    target = extract(archive, tmp_path / "out")
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == set(FILES)
    assert (target / "root/sub/b.bin").read_bytes() == FILES["root/sub/b.bin"]


def test_extract_replaces_an_existing_target(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(zip_bytes(FILES))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "root" / "a.txt").exists()


@pytest.mark.parametrize("case", list(unsafe_archives(Path("/x"))))
def test_unsafe_members_are_refused(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    filename, data, member = unsafe_archives(outside)[case]
    archive = tmp_path / "in" / filename
    archive.parent.mkdir()
    archive.write_bytes(data)
    target = tmp_path / "work" / "target"
    with pytest.raises(DataError) as err:
        extract(archive, target)
    msg = _one_line(err)
    assert str(archive) in msg and repr(member) in msg
    assert list((tmp_path / "work").iterdir()) == []  # no target, no temporary folder
    assert list(outside.iterdir()) == [] and not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "outside", "work"]


@pytest.mark.parametrize("name, make", [
    ("t.tar.xz", lambda: tar_bytes(FILES, "w:xz")),
    ("t.tar.gz", lambda: tar_bytes(FILES, "w:gz")),
    ("t.zip", lambda: zip_bytes(FILES)),
])
def test_truncated_archive(tmp_path, name, make):
    archive = tmp_path / name
    data = make()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        extract(archive, tmp_path / "out")
    assert str(archive) in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_not_an_archive(tmp_path):
    archive = tmp_path / "notes.txt"
    archive.write_text("hello")
    with pytest.raises(DataError, match="not a .zip or .tar"):
        extract(archive, tmp_path / "out")
