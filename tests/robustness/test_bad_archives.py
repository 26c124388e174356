"""Bad dataset archives and a failing server, through the prepare stage: tampered, truncated and traversing
archives (../, absolute paths, symlinks, hard links, devices) and a server that stops mid-download. Each is refused
in one line naming the archive or URL and what to do; nothing is extracted or prepared, nothing lands outside."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from http_server import ArchiveServer, serve_spec, tar_bytes, unsafe_archives

import badfiles as bf
from clirun import call, refused, stage, untouched
from conftest import MICRO

DATASET = "mvtec_ad"


def bottle(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The files of a tiny MVTec AD 'bottle' category, as the publisher's tar holds them."""
    files = {f"bottle/train/good/{i:03d}.png": bf.png(i) for i in range(4)}
    return files | {"bottle/test/good/000.png": bf.png(10), "bottle/test/broken/000.png": bf.png(11),
                    "bottle/ground_truth/broken/000_mask.png": bf.encode(bf.mask())} | (extra or {})


@pytest.fixture
def server():
    with ArchiveServer() as srv:
        yield srv


def prepare(tmp: Path):
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": DATASET, "categories": ["bottle"], "image_size": 32,
                                               "val_fraction": 0.4}, "model": MICRO["model"]}))
    return call(stage("prepare"), ["--params", params, "--out", tmp / "prepared", "--cache", tmp / "cache"])


def nothing_prepared(tmp: Path) -> None:
    assert not (tmp / "prepared").exists()
    assert not (tmp / "cache" / DATASET / "extracted").exists()
    untouched(tmp)


def test_an_intact_archive_prepares(monkeypatch, server, tmp_path):
    serve_spec(monkeypatch, server, DATASET, "mvtec.tar.xz", tar_bytes(bottle()), counts={})
    outcome = prepare(tmp_path)
    assert outcome.code == 0, outcome.stderr
    category = tmp_path / "prepared" / DATASET / "bottle"
    with open(category / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert Counter((r["split"], r["defect_type"], r["label"]) for r in rows) == {
        ("train", "good", "0"): 2, ("val", "good", "0"): 2, ("test", "good", "0"): 1, ("test", "broken", "1"): 1}
    assert all((category / r["path"]).is_file() for r in rows)
    assert [r["mask_path"] for r in rows if r["label"] == "1"] == ["ground_truth/broken/000_mask.png"]
    assert (category / "ground_truth" / "broken" / "000_mask.png").is_file()


def test_tampered_archive(monkeypatch, server, tmp_path):
    data = tar_bytes(bottle())
    serve_spec(monkeypatch, server, DATASET, "mvtec.tar.xz", data, counts={})
    server.files["/mvtec.tar.xz"] = tar_bytes(bottle({"bottle/train/good/004.png": bf.png(4)}))
    message = refused(prepare(tmp_path), f"/mvtec.tar.xz: sha256 checksum mismatch (expected "
                      f"{hashlib.sha256(data).hexdigest()}", "the download was deleted: run again to retry")
    assert "data.path" in message
    assert list((tmp_path / "cache" / DATASET).iterdir()) == []  # neither the archive nor a .part
    nothing_prepared(tmp_path)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_archive(monkeypatch, server, tmp_path, cut):
    data = tar_bytes(bottle())
    serve_spec(monkeypatch, server, DATASET, "mvtec.tar.xz", data[: int(len(data) * cut)], checksum=False,
               counts={})
    archive = tmp_path / "cache" / DATASET / "mvtec.tar.xz"
    refused(prepare(tmp_path), f"{archive}: truncated or corrupt archive", "delete it and download it again")
    nothing_prepared(tmp_path)


@pytest.mark.parametrize("case", list(unsafe_archives(Path("/x"))))
def test_traversing_and_linking_archives(monkeypatch, server, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    filename, data, member = unsafe_archives(outside)[case]
    serve_spec(monkeypatch, server, DATASET, filename, data, counts={})
    archive = tmp_path / "cache" / DATASET / filename
    refused(prepare(tmp_path), f"{archive}: refusing member {member!r}", "the archive is not the expected dataset")
    nothing_prepared(tmp_path)
    assert list(outside.iterdir()) == [] and not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("abs_evil.txt"))


def test_server_stops_mid_download_then_resumes(monkeypatch, server, tmp_path):
    data = tar_bytes(bottle(), "w")  # uncompressed: big enough to cut in the middle
    serve_spec(monkeypatch, server, DATASET, "mvtec.tar", data, counts={})
    server.cut_after["/mvtec.tar"] = len(data) // 3
    refused(prepare(tmp_path), f"/mvtec.tar: the connection closed after {len(data) // 3} of {len(data)} bytes",
            "run again to resume mvtec.tar.part")
    part = tmp_path / "cache" / DATASET / "mvtec.tar.part"
    assert part.stat().st_size == len(data) // 3
    nothing_prepared(tmp_path)
    outcome = prepare(tmp_path)  # the same command again picks up where the download stopped
    assert outcome.code == 0, outcome.stderr
    assert server.requests[-1].range == f"bytes={len(data) // 3}-" and server.requests[-1].status == 206
    assert (tmp_path / "prepared" / DATASET / "bottle" / "manifest.csv").is_file()
