"""Per-image figures: input | ground truth | anomaly-map overlay | reconstruction, composed with PIL."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw
from scipy import ndimage

_JET = colormaps["jet"]


def colour_range(maps: np.ndarray) -> tuple[float, float]:
    """The heat-map scale shared by a category's figures (N, H, W): its 1st percentile to its maximum."""
    return float(np.quantile(maps, 0.01)), float(maps.max())


def heat(anomaly_map: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 jet colours, scaled from lo to hi."""
    scaled = np.clip((anomaly_map - lo) / max(hi - lo, 1e-12), 0, 1)
    return (_JET(scaled)[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, lo: float, hi: float, alpha: float = 0.5) -> np.ndarray:
    """The heat map blended over the image (both (H, W, ...) at the same size)."""
    return (image * (1 - alpha) + heat(anomaly_map, lo, hi) * alpha).astype(np.uint8)


def contour(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 0)) -> np.ndarray:
    """The mask's outline (1 px) drawn on a copy of the image."""
    edge = mask.astype(bool) & ~ndimage.binary_erosion(mask.astype(bool))
    out = image.copy()
    out[edge] = colour
    return out


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(image)
    return np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR))


def panel(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, reconstruction: np.ndarray,
          lo: float, hi: float, title: str) -> Image.Image:
    """One row of four tiles at the mask's resolution with a title line."""
    size = mask.shape[0]
    image = _fit(image, size)
    tiles = [image, contour(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, -1), mask, (0, 200, 0)),
             contour(overlay(image, anomaly_map, lo, hi), mask), _fit(reconstruction, size)]
    strip = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
    canvas = Image.new("RGB", (strip.shape[1], strip.shape[0] + 16), "white")
    canvas.paste(Image.fromarray(strip), (0, 16))
    ImageDraw.Draw(canvas).text((2, 2), title, fill=(0, 0, 0))
    return canvas
