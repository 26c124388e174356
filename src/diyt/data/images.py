"""Safe image and mask reading: one clear `DataError` naming the file, never a deep traceback."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diyt.errors import DataError

# Decompression bombs: refuse images over 64 megapixels (PIL warns at the limit, errors at twice it).
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def read_image(path: str | os.PathLike, mode: str = "RGB", fix: str | None = None) -> Image.Image:
    """Read an image fully into memory, converted to `mode` ("RGB" or "L"); 16-bit inputs are scaled to 8 bits.

    `fix` replaces the advice that ends each error message (e.g. for files a stage wrote: run it again).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = _to_8bit(img)
                return img.convert(mode)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found; {fix or 'check the path'}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image is larger than {MAX_PIXELS:,} pixels (a decompression bomb?); "
                        f"{fix or 'resize it or remove it'}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({err.__class__.__name__}: {err}); "
                        f"{fix or 'replace or remove the file'}") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images scaled to 0..255 by their bit depth, not by their range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8), mode="L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).round().astype(np.uint8), mode="L")
    return img


def read_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a defect mask as a {0, 1} uint8 array (anti-aliased masks thresholded at > 127, label masks that
    store defects as 1 read as they are).

    With `size` (width, height), a mask of another size is an error naming both sizes.
    """
    img = read_image(path, mode="L")
    if size is not None and img.size != tuple(size):
        raise DataError(f"{path}: mask is {img.size[0]}x{img.size[1]} but its image is {size[0]}x{size[1]}; "
                        "masks must match their images")
    arr = np.asarray(img)
    return (arr > (0 if arr.max() == 1 else 127)).astype(np.uint8)
