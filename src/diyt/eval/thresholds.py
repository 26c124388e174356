"""Decision thresholds from held-out normal (validation) images only: the test labels never touch a threshold.

A score at or above the threshold is predicted anomalous, as in `diyt.eval.metrics.f1_at`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from diyt.errors import DataError

Method = Literal["quantile", "mean_std"]


def image_threshold(val_scores: ArrayLike, method: Method = "quantile", q: float = 0.99, k: float = 3.0) -> float:
    """Image threshold from the scores (N,) of validation normal images."""
    return _from_normals(np.asarray(val_scores).ravel(), method, q, k, "image")


def pixel_threshold(val_maps: ArrayLike, method: Method = "quantile", q: float = 0.99, k: float = 3.0) -> float:
    """Pixel threshold from every pixel of the validation normal anomaly maps (N, H, W)."""
    return _from_normals(np.asarray(val_maps).ravel(), method, q, k, "pixel")


def _from_normals(values: np.ndarray, method: Method, q: float, k: float, level: str) -> float:
    """`quantile`: the q-quantile (linear interpolation); `mean_std`: mean + k * std (population, ddof=0)."""
    if values.size == 0:
        raise DataError(f"no validation normal images to set the {level} threshold from "
                        "(raise data.val_fraction or add normal training images)")
    if not np.isfinite(values).all():
        raise ValueError(f"validation {level} scores must be finite (found NaN or inf)")
    if method == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        return float(np.quantile(values, q))
    if method == "mean_std":
        return float(values.mean(dtype=np.float64) + k * values.std(dtype=np.float64))
    raise ValueError(f"method must be 'quantile' or 'mean_std', got {method!r}")
