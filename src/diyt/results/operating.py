"""The image-level operating point at a chosen threshold: precision, recall, F1, confusion, per-image outcome.

Same convention as `diyt.eval.metrics`: label 1 = defective, an image is predicted anomalous iff
score >= threshold.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix, precision_score, recall_score

from diyt.eval.metrics import f1_at

OUTCOMES = ("TP", "FP", "FN", "TN")


class OperatingPoint(NamedTuple):
    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int


def operating_point(labels: ArrayLike, scores: ArrayLike, threshold: float) -> OperatingPoint:
    """Precision, recall and F1 of the defective class and the confusion counts at `threshold`."""
    labels, scores = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    predicted = scores >= threshold
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel().tolist()
    return OperatingPoint(float(threshold), float(precision_score(labels, predicted, zero_division=0.0)),
                          float(recall_score(labels, predicted, zero_division=0.0)),
                          f1_at(labels, scores, threshold), tp, fp, fn, tn)


def confusion_frame(point: OperatingPoint) -> pd.DataFrame:
    """The 2x2 confusion matrix: rows the truth, columns the prediction."""
    return pd.DataFrame([[point.tp, point.fn], [point.fp, point.tn]],
                        index=pd.Index(["defective", "normal"], name="actual"),
                        columns=pd.Index(["predicted defective", "predicted normal"]))


def outcomes(labels: ArrayLike, scores: ArrayLike, threshold: float) -> np.ndarray:
    """Each image's outcome at `threshold`: "TP", "FP", "FN" or "TN" (N,)."""
    labels, predicted = np.asarray(labels) == 1, np.asarray(scores, dtype=np.float64) >= threshold
    return np.select([labels & predicted, ~labels & predicted, labels & ~predicted], OUTCOMES[:3], OUTCOMES[3])


def slider_range(scores: ArrayLike, threshold: float, steps: int = 500) -> tuple[float, float, float]:
    """(low, high, step) of a threshold slider covering every score and the chosen threshold."""
    values = np.append(np.asarray(scores, dtype=np.float64), threshold)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return low, high, (high - low) / steps


def gallery(frame: pd.DataFrame, threshold: float, defect_types: Collection[str] | None = None,
            kinds: Collection[str] | None = None, descending: bool = True) -> pd.DataFrame:
    """The rows of a scores frame (label, score, defect_type) with an `outcome` column at `threshold`, kept by
    defect type and outcome (None keeps all) and sorted by score."""
    frame = frame.assign(outcome=outcomes(frame["label"], frame["score"], threshold))
    if defect_types is not None:
        frame = frame[frame["defect_type"].isin(list(defect_types))]
    if kinds is not None:
        frame = frame[frame["outcome"].isin(list(kinds))]
    return frame.sort_values("score", ascending=not descending, kind="stable").reset_index(drop=True)
