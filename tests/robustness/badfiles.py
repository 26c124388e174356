"""Bad inputs as bytes, and small MVTec-layout folder datasets to plant them in."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (24, 20)  # (width, height) of the planted images: small, and not square, so resizing is exercised


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def picture(seed: int = 0, size: tuple[int, int] = SIZE) -> Image.Image:
    """A noisy RGB image, different for every seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mask(size: tuple[int, int] = SIZE, value: int = 255) -> Image.Image:
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[4:12, 6:14] = value
    return Image.fromarray(arr)


def png(seed: int = 0) -> bytes:
    return encode(picture(seed))


# --------------------------------------------------------------------------------------------- broken files
def corrupt() -> bytes:
    """A PNG signature followed by garbage."""
    return b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8))


def truncated() -> bytes:
    """A valid PNG cut in the middle of its pixel data."""
    data = png(2)
    return data[: len(data) // 2]


def zero_byte() -> bytes:
    return b""


def bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb: the pixels never arrive)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


def huge() -> bytes:
    """A real, fully decodable image of 8200 x 8200 pixels (67 megapixels, over the limit), a few kB on disk."""
    return encode(Image.new("1", (8200, 8200)))


# ------------------------------------------------------------------------------------------------- modes
def in_mode(mode: str, seed: int = 0) -> bytes:
    """The same picture stored as grayscale, RGBA, palette, 16-bit grayscale or CMYK (a JPEG)."""
    rgb = picture(seed)
    if mode == "I;16":
        arr = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return encode(Image.fromarray(arr))
    if mode == "CMYK":
        return encode(rgb.convert("CMYK"), "JPEG")
    if mode == "P":
        return encode(rgb.quantize(64))
    return encode(rgb.convert(mode))


MODES = ("L", "RGBA", "P", "I;16", "CMYK")


# ---------------------------------------------------------------------------------------------- datasets
def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path, category: str = "widget", n_train: int = 6, n_good: int = 2,
         defects: dict[str, int] | None = None) -> Path:
    """An MVTec AD category folder of noisy images: train/good, test/good, test/<type> with their masks."""
    cat = root / category
    for i in range(n_train):
        write(cat / "train" / "good" / f"{i:03d}.png", png(i))
    for i in range(n_good):
        write(cat / "test" / "good" / f"{i:03d}.png", png(100 + i))
    for kind, count in (defects if defects is not None else {"scratch": 2}).items():
        for i in range(count):
            write(cat / "test" / kind / f"{i:03d}.png", png(200 + i))
            write(cat / "ground_truth" / kind / f"{i:03d}_mask.png", encode(mask()))
    return cat
