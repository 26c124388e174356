"""The dashboard's live inference on bad uploads (Streamlit's AppTest on the micro project): each is refused with
one message naming the upload, any mode is scored, and the page goes on working."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import badfiles as bf
from clirun import ROOT
from conftest import Project
from diyt import inference

APP = str(ROOT / "dashboard" / "app.py")


def open_page() -> AppTest:
    """The live inference page on the micro project's bundle (DIYT_ROOT set by the caller, read on every run)."""
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("views/inference.py").run()
    assert not at.exception and not at.error
    return at


@pytest.fixture(scope="module")
def page(made) -> Iterator[AppTest]:
    """One page for all the uploads that must leave it working."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIYT_ROOT", str(made.root))
        yield open_page()


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="inference_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def verdict(at: AppTest) -> list[str]:
    return [e.value for e in (*at.error, *at.success) if e.value.startswith("Verdict")]


def test_the_uploader_takes_image_types_only(page):
    uploader = page.file_uploader(key="inference_upload")
    assert list(uploader.proto.type) == list(inference.UPLOAD_TYPES)
    assert f"at most {inference.MAX_UPLOAD_BYTES // 2**20} MB" in uploader.proto.label


def test_another_type_sent_past_the_browser_is_refused(made, monkeypatch):
    """The browser offers image types only; Streamlit refuses another one that reaches the server anyway."""
    monkeypatch.setenv("DIYT_ROOT", str(made.root))
    page = open_page()
    page.file_uploader(key="inference_upload").set_value(("notes.txt", b"text", "text/plain")).run()
    assert [e.value for e in page.exception] and "Invalid file extension: `.txt`" in page.exception[0].value
    assert not verdict(page) and not page.metric


@pytest.mark.parametrize("name, make, problem", [
    ("corrupt.png", bf.corrupt, "not a readable image"),
    ("truncated.png", bf.truncated, "not a readable image (OSError: image file is truncated"),
    ("empty.png", bf.zero_byte, "not a readable image"),
    ("text.jpg", lambda: b"plain text", "not a readable image"),
    ("bomb.png", bf.bomb, "larger than 64,000,000 pixels (a decompression bomb?)"),
    ("huge.png", bf.huge, "larger than 64,000,000 pixels"),
    ("big.png", lambda: b"\0" * (inference.MAX_UPLOAD_BYTES + 1), "MB is over the 20 MB upload limit"),
], ids=["corrupt", "truncated", "zero-byte", "text-named-jpg", "decompression-bomb", "huge", "over-the-limit"])
def test_bad_uploads_are_named_and_the_page_recovers(page, name, make, problem):
    upload(page, name, make())
    assert len(page.error) == 1 and not verdict(page)
    message = page.error[0].value
    assert message.startswith(f"Cannot score this upload: {name}: ") and problem in message
    assert "/tmp" not in message  # the upload's name, not the server's temporary path
    upload(page, "fine.png", bf.png())
    assert len(verdict(page)) == 1 and not [e for e in page.error if not e.value.startswith("Verdict")]


@pytest.mark.parametrize("mode", bf.MODES)
def test_every_mode_is_scored(page, mode):
    upload(page, f"part.{'jpg' if mode == 'CMYK' else 'png'}", bf.in_mode(mode))
    assert len(verdict(page)) == 1 and len(page.image) == 2


def test_a_broken_bundle_is_named_on_the_page(made, tmp_path, monkeypatch):
    """A bundle of another format version: the page names the file and says how to make it, and stops."""
    root = tmp_path / "project"
    shutil.copytree(made.root, root)
    manifest = Project(root).bundle / "bundle.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 99}))
    monkeypatch.setenv("DIYT_ROOT", str(root))
    at = AppTest.from_file(APP, default_timeout=60).run()
    st.cache_resource.clear()
    at.switch_page("views/inference.py").run()
    assert not at.exception
    shown = " ".join(i.value for i in at.info)
    assert f"cannot be loaded: {manifest}: bundle format version 99" in shown and "dvc repro" in shown
