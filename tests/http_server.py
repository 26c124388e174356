"""Test archives and a small HTTP server on 127.0.0.1 that serves them: it honours Range requests and can cut
a response short, ignore Range, stall or send slowly, to exercise the downloader's recovery paths."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import socket
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from diyt.data import sources
from diyt.data.sources import Archive


RATE_CHUNK = 16 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server: subprocess.Popen, seconds: float = 15) -> None:
    """Terminate a server process, and kill it if it has not exited within `seconds`."""
    server.terminate()
    try:
        server.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@dataclass
class Seen:
    path: str
    range: str | None
    status: int


@dataclass
class ArchiveServer:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping (once)
    ignore_range: bool = False
    stall_s: float = 0.0
    rate: int | None = None  # bytes per second, to make a download last

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> ArchiveServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # dropped connections are the point
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(state: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            requested = self.headers.get("Range")
            data = state.files.get(self.path)
            if data is None:
                return self._reply(404, requested, b"")
            if state.stall_s:
                time.sleep(state.stall_s)
            match = re.fullmatch(r"bytes=(\d+)-", requested or "")
            if match is None or state.ignore_range:
                return self._reply(200, requested, data)
            start = int(match.group(1))
            if start >= len(data):
                return self._reply(416, requested, b"", {"Content-Range": f"bytes */{len(data)}"})
            return self._reply(206, requested, data[start:],
                               {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})

        def _reply(self, status: int, requested: str | None, body: bytes, headers: dict | None = None) -> None:
            state.requests.append(Seen(self.path, requested, status))
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut_after.pop(self.path, None)
            if cut is None and state.rate:
                for start in range(0, len(body), RATE_CHUNK):
                    self.wfile.write(body[start : start + RATE_CHUNK])
                    time.sleep(RATE_CHUNK / state.rate)
                return
            if cut is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    return Handler


def tar_bytes(files: dict[str, bytes], mode: str = "w:xz", extra: tuple[tarfile.TarInfo, ...] = ()) -> bytes:
    """A tar archive of `files` (name -> content), plus any hand-made members (links, devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], extra: tuple[tuple[zipfile.ZipInfo, bytes], ...] = ()) -> bytes:
    """A zip archive of `files` (name -> content), plus any hand-made entries (e.g. a symlink)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return buf.getvalue()


def tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def zip_symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def unsafe_archives(outside: Path) -> dict[str, tuple[str, bytes, str]]:
    """name -> (archive file name, archive bytes, offending member)."""
    good = {"ok/good.txt": b"fine"}  # a safe member first: it must not survive the refusal either
    absolute = str(outside / "abs_evil.txt")
    return {
        "tar-dotdot": ("a.tar.xz", tar_bytes({**good, "../evil.txt": b"x"}), "../evil.txt"),
        "tar-nested-dotdot": ("a.tar", tar_bytes({**good, "ok/../../evil.txt": b"x"}, "w"), "ok/../../evil.txt"),
        "tar-absolute": ("a.tar.gz", tar_bytes({**good, absolute: b"x"}, "w:gz"), absolute),
        "tar-symlink": ("a.tar.xz", tar_bytes(good, extra=(tar_member("ok/link", tarfile.SYMTYPE, "/etc"),)),
                        "ok/link"),
        "tar-hardlink": ("a.tar.xz", tar_bytes(good, extra=(tar_member("ok/hard", tarfile.LNKTYPE,
                                                                        "ok/good.txt"),)), "ok/hard"),
        "tar-device": ("a.tar.xz", tar_bytes(good, extra=(tar_member("ok/dev", tarfile.CHRTYPE),)), "ok/dev"),
        "zip-dotdot": ("a.zip", zip_bytes({**good, "../evil.txt": b"x"}), "../evil.txt"),
        "zip-absolute": ("a.zip", zip_bytes({**good, absolute: b"x"}), absolute),
        "zip-symlink": ("a.zip", zip_bytes(good, extra=((zip_symlink("ok/link"), b"/etc/passwd"),)), "ok/link"),
    }


def serve_spec(monkeypatch, server: ArchiveServer, source: str, name: str, data: bytes, checksum: bool = True,
               **changes) -> None:
    """Point the registry's spec for `source` at an archive on the local server (configuration, not a mock);
    without `checksum`, as a publisher that gives none."""
    archive = Archive(url=server.add(f"/{name}", data), filename=name,
                      sha256=hashlib.sha256(data).hexdigest() if checksum else None)
    monkeypatch.setitem(sources.SPECS, source, dataclasses.replace(sources.SPECS[source], archive=archive,
                                                                   **changes))
