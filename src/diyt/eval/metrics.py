"""Image- and pixel-level anomaly metrics as the MVTec AD benchmark measures them; pure functions on arrays.

Bergmann et al., "The MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset for Unsupervised
Anomaly Detection", IJCV 2021 (AUPRO: section 5.1.1 and the official evaluation code).

Conventions: image `labels` are {0, 1} with 1 = defective, `scores` are higher-is-more-anomalous; pixel
`masks` are {0, 1} (N, H, W) and `maps` are float (N, H, W). A score at or above a threshold is predicted
anomalous (`>=`, like `sklearn.metrics.precision_recall_curve` and `diyt.eval.thresholds`).
A metric that is undefined on the given test set (one class only) raises `DataError`; callers decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import (
    auc,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from diyt.errors import DataError

METRIC_KEYS = ("image_auroc", "image_ap", "f1", "f1_max", "pixel_auroc", "aupro")
# 8-connected regions within one image, never across images of the (N, H, W) stack
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


class Curve(NamedTuple):
    """A curve for plots: ROC (x=fpr, y=tpr), PR (x=recall, y=precision) or PRO (x=fpr, y=pro)."""

    x: np.ndarray
    y: np.ndarray


# ------------------------------------------------------------------------------------------------ image
def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of defective (1) vs normal (0) images."""
    labels, scores = _image_inputs(labels, scores)
    _require_both_classes(labels, "image AUROC")
    return float(roc_auc_score(labels, scores))


def image_ap(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision with the defective images as the positive class."""
    labels, scores = _image_inputs(labels, scores)
    _require_both_classes(labels, "image AP")
    return float(average_precision_score(labels, scores))


def f1_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> float:
    """F1 of the defective class when an image is predicted anomalous iff score >= threshold."""
    labels, scores = _image_inputs(labels, scores)
    _require_defects(labels, "F1")
    return float(f1_score(labels, scores >= threshold, zero_division=0.0))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """The best F1 over every test score as threshold, and that threshold (an oracle: report it as such)."""
    labels, scores = _image_inputs(labels, scores)
    _require_defects(labels, "F1-max")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # the last (precision=1, recall=0) point has no threshold
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def per_defect_type_auroc(labels: ArrayLike, scores: ArrayLike, defect_types: Sequence[str]) -> dict[str, float]:
    """{defect type: image AUROC of all normal images vs the defective images of that type}."""
    labels, scores = _image_inputs(labels, scores)
    types = np.asarray(defect_types, dtype=str)
    if types.shape != labels.shape:
        raise ValueError(f"defect_types has shape {types.shape} but labels have shape {labels.shape}")
    _require_both_classes(labels, "per-defect-type AUROC")
    normal = labels == 0
    result = {}
    for kind in sorted(set(types[labels == 1])):
        keep = normal | ((labels == 1) & (types == kind))
        result[str(kind)] = float(roc_auc_score(labels[keep], scores[keep]))
    return result


def roc_points(labels: ArrayLike, scores: ArrayLike, max_points: int | None = 500) -> Curve:
    """The image ROC curve (x=fpr, y=tpr), thinned to at most `max_points` (endpoints kept)."""
    labels, scores = _image_inputs(labels, scores)
    _require_both_classes(labels, "the ROC curve")
    fpr, tpr, _ = roc_curve(labels, scores)
    return _thin(Curve(fpr, tpr), max_points)


def pr_points(labels: ArrayLike, scores: ArrayLike, max_points: int | None = 500) -> Curve:
    """The image precision-recall curve (x=recall, y=precision), thinned to at most `max_points`."""
    labels, scores = _image_inputs(labels, scores)
    _require_defects(labels, "the PR curve")
    precision, recall, _ = precision_recall_curve(labels, scores)
    return _thin(Curve(recall, precision), max_points)


# ------------------------------------------------------------------------------------------------ pixel
def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """ROC AUC over every pixel of the test set, defect pixels (mask 1) as positives."""
    masks, maps = _pixel_inputs(masks, maps)
    n_defect = int(np.count_nonzero(masks))
    if n_defect in (0, masks.size):
        raise DataError(f"pixel AUROC is undefined: {n_defect} of {masks.size} test pixels are defective; "
                        "it needs both defect and defect-free pixels (check the ground-truth masks)")
    fpr, tpr, _ = roc_curve(masks.ravel(), maps.ravel())  # roc_auc_score's own path, less its label checks
    return float(auc(fpr, tpr))


def pro_curve(masks: ArrayLike, maps: ArrayLike, max_points: int | None = 500) -> Curve:
    """The PRO curve (x=fpr, y=pro) at every distinct score, from (0, 0) to (1, 1).

    As the official MVTec AD evaluation's `compute_pro` (pro_curve_util.py): sort all pixels by score once;
    each defect-free pixel raises the FPR by 1/num_ok_pixels, each pixel of an 8-connected ground-truth region
    raises the PRO by 1/(num_regions * region_size); ties keep only the last point of each distinct score.
    `max_points=None` returns every point (what `aupro` integrates).
    """
    masks, maps = _pixel_inputs(masks, maps)
    regions, num_regions = ndimage.label(masks, structure=_REGION_STRUCTURE)  # (N, H, W) int
    num_ok = int(np.count_nonzero(regions == 0))
    if num_regions == 0 or num_ok == 0:
        raise DataError(f"AUPRO is undefined: the test masks hold {num_regions} defect regions and {num_ok} "
                        "defect-free pixels; it needs both (check the ground-truth masks)")
    pro_step = 1.0 / np.bincount(regions.ravel())  # (num_regions + 1,): 1 / region size, per label
    pro_step[0] = 0.0

    order = np.argsort(maps, axis=None)[::-1]  # (N*H*W,) descending score
    scores = maps.ravel()[order]
    last_of_score = np.append(scores[1:] != scores[:-1], True)
    del scores
    regions = regions.ravel()[order]
    del order
    fpr = np.cumsum(regions == 0, dtype=np.int64)[last_of_score] / num_ok
    pro = np.cumsum(pro_step[regions])[last_of_score] / num_regions
    pro = np.minimum(pro, 1.0)  # cumsum rounding may pass 1
    curve = Curve(np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0])))
    return _thin(curve, max_points)


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to FPR `fpr_limit`, divided by `fpr_limit` (1.0 = perfect).

    The official MVTec AD evaluation's `trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit`
    (generic_util.py): trapezoid rule, the PRO at `fpr_limit` linearly interpolated between its neighbours.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, max_points=None)
    end = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:end] <= fpr_limit; fpr[-1] == 1
    x, y = fpr[:end], pro[:end]
    if x[-1] < fpr_limit:
        left, right = end - 1, end
        slope = (pro[right] - pro[left]) / (fpr[right] - fpr[left])
        x = np.append(x, fpr_limit)
        y = np.append(y, pro[left] + slope * (fpr_limit - fpr[left]))
    return float(auc(x, y) / fpr_limit)


# ---------------------------------------------------------------------------------------------- summary
def summarize(labels: ArrayLike, scores: ArrayLike, masks: ArrayLike, maps: ArrayLike, threshold: float,
              fpr_limit: float = 0.3) -> dict[str, float]:
    """Every headline metric as plain floats: METRIC_KEYS plus the image `threshold` that F1 used."""
    best_f1, _ = f1_max(labels, scores)
    return {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": image_ap(labels, scores),
        "f1": f1_at(labels, scores, threshold),
        "f1_max": best_f1,
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps, fpr_limit),
        "threshold": float(threshold),
    }


# ------------------------------------------------------------------------------------------------ inputs
def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D labels in {0, 1} (N,) and finite scores (N,)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels and scores must be 1-D of one length, got shapes {labels.shape} "
                         f"and {scores.shape}")
    _check_binary(labels, "labels")
    _check_finite(scores, "scores")
    return labels.astype(np.int64), scores


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated masks in {0, 1} (N, H, W) as bool and finite maps (N, H, W)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks and maps must both be (N, H, W) of one shape, got masks {masks.shape} "
                         f"and maps {maps.shape}")
    _check_binary(masks, "masks")
    _check_finite(maps, "maps")
    return masks.astype(bool, copy=False), maps


def _check_binary(values: np.ndarray, name: str) -> None:
    if values.dtype != bool and np.any((values != 0) & (values != 1)):
        raise ValueError(f"{name} must hold only 0 and 1, got values {np.unique(values)[:5]}...")


def _check_finite(values: np.ndarray, name: str) -> None:
    if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite numbers (found NaN, inf or a non-numeric dtype {values.dtype})")


def _require_both_classes(labels: np.ndarray, what: str) -> None:
    n_defect = int(labels.sum())
    if n_defect == 0 or n_defect == labels.size:
        raise DataError(f"{what} is undefined: the test set has {labels.size - n_defect} normal and {n_defect} "
                        "defective images; it needs both (add test images of the missing kind)")


def _require_defects(labels: np.ndarray, what: str) -> None:
    if not labels.any():
        raise DataError(f"{what} is undefined: the test set has no defective images (add some)")


def _thin(curve: Curve, max_points: int | None) -> Curve:
    """At most `max_points` points evenly spread along the curve's index, first and last kept."""
    n = len(curve.x)
    if max_points is None or n <= max_points:
        return curve
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2 (the endpoints), got {max_points}")
    keep = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    return Curve(curve.x[keep], curve.y[keep])
