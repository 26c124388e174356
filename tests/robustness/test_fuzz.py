"""Fuzzing the image, mask and archive readers with random and mutated bytes: each input is read, or refused
with a DataError; never another exception, never a hang. Seeded and small, so a CI run is fast and repeatable;
raise FUZZ_EXAMPLES for a longer hunt."""

from __future__ import annotations

import io
import os
import signal
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from http_server import tar_bytes, zip_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import badfiles as bf
from diyt.data.download import extract
from diyt.data.images import read_image, read_mask
from diyt.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on malformed metadata, e.g. corrupt EXIF
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 150))
HANG_S = 20  # one input; the deadline below flags a slow one, this stops a stuck one
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _saved(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _image_seeds() -> dict[str, bytes]:
    rgb = bf.picture(size=(12, 9))
    return {"png": _saved(rgb, "PNG"), "jpg": _saved(rgb, "JPEG"), "bmp": _saved(rgb, "BMP"),
            "tif": _saved(rgb, "TIFF", compression="tiff_lzw"), "gif": _saved(rgb.quantize(16), "GIF"),
            "webp": _saved(rgb, "WEBP"), "png16": bf.in_mode("I;16"), "cmyk.jpg": bf.in_mode("CMYK"),
            "rgba.png": bf.in_mode("RGBA"), "mask.png": bf.encode(bf.mask((12, 9)))}


def _archive_seeds() -> dict[str, bytes]:
    files = {"cat/train/good/000.png": bf.png(), "cat/readme.txt": b"hello", "cat/empty/": b""}
    return {"tar.xz": tar_bytes(files, "w:xz"), "tar.gz": tar_bytes(files, "w:gz"), "tar": tar_bytes(files, "w"),
            "zip": zip_bytes(files)}


IMAGES, ARCHIVES = _image_seeds(), _archive_seeds()


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """A seed file with a few bytes overwritten, a slice cut out or duplicated, and maybe truncated."""
    kind = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[kind])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        a, b = sorted(draw(st.tuples(st.integers(0, len(data)), st.integers(0, len(data)))))
        data = data[:a] + (data[a:b] * 2 if draw(st.booleans()) else b"") + data[b:]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return kind, bytes(data)


def anything(seeds: dict[str, bytes]):
    """Random bytes under a seed's name, or a mutated seed."""
    return st.one_of(st.tuples(st.sampled_from(sorted(seeds)), st.binary(max_size=4096)), mutated(seeds))


class Hang(Exception):
    pass


def _raise_hang(signum, frame):
    raise Hang(f"no answer within {HANG_S} s")


def _in_temp(kind: str, data: bytes, fn):
    """fn(path, folder) on `data` written to a file named like the seed; a hang is an error, not a stuck run."""
    with tempfile.TemporaryDirectory(prefix="diyt-fuzz-") as tmp:
        path = Path(tmp) / f"input.{kind}"
        path.write_bytes(data)
        previous = signal.signal(signal.SIGALRM, _raise_hang)
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
        try:
            return fn(path, Path(tmp))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@FUZZ
@given(anything(IMAGES))
def test_image_reader(case):
    kind, data = case

    def read(path: Path, _tmp: Path) -> None:
        try:
            img = read_image(path)
        except DataError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            return
        assert img.mode == "RGB" and min(img.size) >= 1

    _in_temp(kind, data, read)


@FUZZ
@given(anything(IMAGES))
def test_mask_reader(case):
    kind, data = case

    def read(path: Path, _tmp: Path) -> None:
        try:
            mask = read_mask(path)
        except DataError as err:
            assert str(path) in str(err)
            return
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}

    _in_temp(kind, data, read)


@FUZZ
@given(anything(ARCHIVES))
def test_archive_reader(case):
    kind, data = case

    def unpack(path: Path, tmp: Path) -> None:
        target = tmp / "out"
        try:
            extract(path, target)
        except DataError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            assert sorted(p.name for p in tmp.iterdir()) == [path.name]  # nothing extracted, no temporary folder
            return
        inside = target.resolve()
        for p in target.rglob("*"):
            assert not p.is_symlink() and p.resolve().is_relative_to(inside) and (p.is_file() or p.is_dir())

    _in_temp(kind, data, unpack)
