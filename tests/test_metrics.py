"""Metrics against known values: hand-computed tiny cases, sklearn, and a slow AUPRO reference."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score

from diyt.errors import DataError
from diyt.eval.metrics import (
    METRIC_KEYS,
    aupro,
    f1_at,
    f1_max,
    image_ap,
    image_auroc,
    per_defect_type_auroc,
    pixel_auroc,
    pr_points,
    pro_curve,
    roc_points,
    summarize,
)
from diyt.eval.thresholds import image_threshold, pixel_threshold


def reference_aupro(masks, maps, fpr_limit=0.3, connectivity=8):
    """Slow AUPRO: one binarisation per distinct score, explicit per-region overlaps, sklearn's auc."""
    structure = np.ones((3, 3)) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    labelled = [ndimage.label(m, structure=structure) for m in masks]
    ok = masks == 0
    points = [(0.0, 0.0), (1.0, 1.0)]
    for t in np.unique(maps):
        above = maps >= t
        overlaps = [above[i][lab == r].mean() for i, (lab, n) in enumerate(labelled) for r in range(1, n + 1)]
        points.append((above[ok].sum() / ok.sum(), np.mean(overlaps)))
    fpr, pro = np.array(sorted(points)).T  # along the curve: FPR, then PRO, both non-decreasing
    inside = fpr <= fpr_limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < fpr_limit:  # interpolate between the last point inside and the first one past the limit
        x2, y2 = fpr[~inside][0], pro[~inside][0]
        x, y = np.append(x, fpr_limit), np.append(y, y[-1] + (y2 - y[-1]) * (fpr_limit - x[-1]) / (x2 - x[-1]))
    return auc(x, y) / fpr_limit


def random_regions(rng, n, h, w, max_side):
    """Masks (n, h, w) with one random rectangle and a few random defect pixels per image."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for mask in masks:
        rh, rw = rng.integers(1, max_side + 1, size=2)
        top, left = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        mask[top:top + rh, left:left + rw] = 1
        mask[rng.integers(0, h, 3), rng.integers(0, w, 3)] = 1
    return masks


# Hand-computed AUPRO: one 4x4 image, region A (2 px, top left) and region B (2x2, bottom right), 10 ok px.
HAND_MASK = np.array([[[1, 1, 0, 0],
                       [0, 0, 0, 0],
                       [0, 0, 1, 1],
                       [0, 0, 1, 1]]])
HAND_MAP = np.array([[[4, 4, 3, 2],
                      [2, 2, 1, 1],
                      [0, 0, 4, 3],
                      [0, 0, 2, 1]]], dtype=float)
# threshold  A covered  B covered  PRO = mean              false positives  FPR
#  >= 4        2/2        1/4      (1 + 1/4) / 2 = 0.625    0               0
#  >= 3        2/2        2/4      (1 + 1/2) / 2 = 0.75     1               0.1
#  >= 2        2/2        3/4      (1 + 3/4) / 2 = 0.875    4               0.4
#  >= 1        2/2        4/4      1                        6               0.6
#  >= 0        2/2        4/4      1                        10              1
# curve (0,0) (0,.625) (.1,.75) (.4,.875) (.6,1) (1,1) (1,1); PRO at FPR .3 = .75 + .125 * (.2/.3) = 5/6
# area to .3 = .1 * (.625 + .75) / 2 + .2 * (.75 + 5/6) / 2 = 11/160 + 19/120 = 109/480; / .3 = 109/144
HAND_AUPRO = 109 / 144


# -------------------------------------------------------------------------------------------------- aupro
def test_aupro_hand_computed_two_regions():
    fpr, pro = pro_curve(HAND_MASK, HAND_MAP, max_points=None)
    np.testing.assert_allclose(fpr, [0, 0, 0.1, 0.4, 0.6, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.625, 0.75, 0.875, 1, 1, 1])
    assert aupro(HAND_MASK, HAND_MAP) == pytest.approx(HAND_AUPRO, abs=1e-12)
    assert reference_aupro(HAND_MASK, HAND_MAP) == pytest.approx(HAND_AUPRO, abs=1e-12)


def test_aupro_hand_computed_with_a_defect_free_image():
    """The hand case beside a defect-free 4x4 image whose map holds a 5 and a 3: its 16 pixels join the false
    positives' denominator (26 ok pixels in all) and its 5 comes before any region is covered."""
    good_map = np.zeros((1, 4, 4))
    good_map[0, 0, 0], good_map[0, 3, 3] = 5, 3
    masks, maps = np.concatenate([HAND_MASK, np.zeros_like(HAND_MASK)]), np.concatenate([HAND_MAP, good_map])
    # threshold  PRO     FP  FPR       (curve from (0, 0); PRO at FPR .3 = .875 + .125 * (7.8 - 6) / 2 = .9875)
    #  >= 5      0       1   1/26
    #  >= 4      .625    1   1/26
    #  >= 3      .75     3   3/26
    #  >= 2      .875    6   6/26
    #  >= 1      1       8   8/26
    # area * 26 = (.625 + .75) / 2 * 2 + (.75 + .875) / 2 * 3 + (.875 + .9875) / 2 * 1.8 = 5.48875; / 26 / .3
    expected = 5.48875 / 26 / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert reference_aupro(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_is_one_for_a_perfect_map():
    masks = random_regions(np.random.default_rng(0), 6, 32, 32, 12)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, masks * 5.0 + np.random.default_rng(1).random(masks.shape)) == pytest.approx(1.0, abs=1e-12)


def test_aupro_of_random_scores_is_about_015():
    rng = np.random.default_rng(0)
    masks = random_regions(rng, 32, 64, 64, 24)
    assert aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.02)


def test_aupro_matches_the_official_reference_on_anomalib_case():
    # anomalib's test_aupro.py: a 1-px-wide vertical defect in a row-major ramp, FPR limit 1/3 -> 1/6
    maps = (np.arange(2800) / 2800.0).reshape(1, 400, 7)
    for columns in ([3], [1, 3, 5]):
        masks = np.zeros((1, 400, 7), dtype=np.uint8)
        masks[..., columns] = 1
        assert aupro(masks, maps, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=1e-3)


@pytest.mark.parametrize("decimals", [2, None])
def test_aupro_matches_slow_reference(decimals):
    rng = np.random.default_rng(3)
    masks = random_regions(rng, 3, 10, 12, 5)
    maps = rng.random(masks.shape)
    if decimals is not None:  # many ties
        maps = maps.round(decimals)
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(reference_aupro(masks, maps, limit), abs=1e-6)


def test_aupro_is_invariant_to_monotone_transforms():
    rng = np.random.default_rng(4)
    masks = random_regions(rng, 4, 16, 16, 6)
    maps = rng.random(masks.shape)
    base = aupro(masks, maps)
    assert aupro(masks, np.exp(maps)) == pytest.approx(base, abs=1e-12)
    assert aupro(masks, 3 * maps + 1) == pytest.approx(base, abs=1e-12)


def test_regions_are_8_connected():
    # diagonal pair D = (0,0),(1,1) plus a lone pixel S; only (0,0) is above the three ok pixels scored 2
    masks = np.array([[[1, 0, 0, 0],
                       [0, 1, 0, 0],
                       [0, 0, 0, 1]]])
    maps = np.array([[[3, 2, 2, 2],
                      [0, 1, 0, 0],
                      [0, 0, 0, 1]]], dtype=float)
    # 8-connected: PRO = (1/2 + 0) / 2 = 1/4 flat up to FPR 3/9 -> AUPRO 1/4 (4-connected: (1 + 0 + 0) / 3)
    assert aupro(masks, maps) == pytest.approx(0.25, abs=1e-12)
    assert reference_aupro(masks, maps, connectivity=4) == pytest.approx(1 / 3, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_aupro_never_exceeds_one(data):
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)))
    masks = data.draw(arrays(np.bool_, shape))
    tied_or_any = st.sampled_from([0.0, 0.25, 0.5, 1.0, 7.0]) | st.floats(-1e3, 1e3)
    maps = data.draw(arrays(np.float64, shape, elements=tied_or_any))
    assume(masks.any() and not masks.all())
    assert 0.0 <= aupro(masks, maps) <= 1.0
    fpr, pro = pro_curve(masks, maps, max_points=None)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0) and pro.max() <= 1.0


# -------------------------------------------------------------------------------------------------- image
LABELS = np.array([0, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.6, 0.5, 0.7, 0.2])


def test_image_auroc_and_ap_match_sklearn_and_hand_values():
    rng = np.random.default_rng(5)
    labels, scores = rng.integers(0, 2, 200), rng.random(200)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # pairs (defect > normal): 0.5>0.1, 0.7>0.1, 0.7>0.6, 0.2>0.1 -> 4 of 6
    assert image_auroc(LABELS, SCORES) == pytest.approx(4 / 6)
    # ranked 0.7(1) 0.6(0) 0.5(1) 0.2(1): AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4
    assert image_ap(LABELS, SCORES) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_f1_at_threshold_by_hand():
    # >= 0.5 flags 0.6, 0.5, 0.7: TP 2, FP 1, FN 1 -> P = R = 2/3
    assert f1_at(LABELS, SCORES, 0.5) == pytest.approx(2 / 3)
    # a score equal to the threshold is anomalous: >= 0.6 flags 0.6, 0.7 -> P 1/2, R 1/3 -> F1 0.4
    assert f1_at(LABELS, SCORES, 0.6) == pytest.approx(0.4)
    assert f1_at(LABELS, SCORES, 0.65) == pytest.approx(0.5)


def test_f1_max_is_the_best_f1_at_any_threshold():
    rng = np.random.default_rng(6)
    labels, scores = rng.integers(0, 2, 100), rng.random(100)
    best, threshold = f1_max(labels, scores)
    assert f1_at(labels, scores, threshold) == pytest.approx(best)
    assert all(best >= f1_at(labels, scores, t) - 1e-12 for t in np.append(scores, [-1.0, 2.0]))
    # hand: >= 0.2 flags all three defects and one normal -> P 3/4, R 1 -> 6/7
    assert f1_max(LABELS, SCORES) == pytest.approx((6 / 7, 0.2))


def test_per_defect_type_auroc_by_hand():
    labels = [0, 0, 1, 1, 1, 1]
    types = ["good", "good", "crack", "crack", "hole", "hole"]
    scores = [0.1, 0.5, 0.9, 0.3, 0.2, 0.05]
    # crack {.9, .3} vs good {.1, .5}: 3 of 4 pairs; hole {.2, .05}: 1 of 4
    assert per_defect_type_auroc(labels, scores, types) == pytest.approx({"crack": 0.75, "hole": 0.25})


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(7)
    masks = random_regions(rng, 5, 16, 16, 8)
    maps = rng.random(masks.shape) + masks * 0.3
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_curves_are_thinned_with_endpoints_kept():
    rng = np.random.default_rng(8)
    labels, scores = rng.integers(0, 2, 5000), rng.random(5000)
    fpr, tpr = roc_points(labels, scores, max_points=100)
    assert len(fpr) <= 100 and (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    recall, precision = pr_points(labels, scores, max_points=100)
    assert len(recall) <= 100 and (recall[0], recall[-1], precision[-1]) == (1, 0, 1)
    masks = random_regions(rng, 4, 32, 32, 10)
    fpr, pro = pro_curve(masks, rng.random(masks.shape), max_points=50)
    assert len(fpr) <= 50 and (fpr[0], pro[0], fpr[-1], pro[-1]) == (0, 0, 1, 1)


# ------------------------------------------------------------------------------------------------ summary
def test_summarize_gives_plain_floats_under_the_published_keys():
    rng = np.random.default_rng(9)
    masks = random_regions(rng, 6, 16, 16, 6)
    masks[:3] = 0
    labels = masks.reshape(6, -1).max(axis=1)
    maps = rng.random(masks.shape) + masks
    scores = maps.reshape(6, -1).max(axis=1)
    result = summarize(labels, scores, masks, maps, threshold=1.0)
    assert tuple(result) == (*METRIC_KEYS, "threshold")
    assert all(type(v) is float for v in result.values())
    json.dumps(result)


def test_undefined_metrics_and_bad_shapes_raise_clearly():
    with pytest.raises(DataError, match="3 normal and 0 defective"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="0 normal and 2 defective"):
        per_defect_type_auroc([1, 1], [0.1, 0.2], ["crack", "hole"])
    with pytest.raises(DataError, match="0 defect regions"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="pixel AUROC"):
        pixel_auroc(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        pixel_auroc(np.full((1, 2, 2), 255), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="finite"):
        aupro(HAND_MASK, np.where(HAND_MASK, np.nan, 0.0))


# ----------------------------------------------------------------------------------------------- thresholds
def test_thresholds_by_hand():
    assert image_threshold(np.arange(1, 101), "quantile", q=0.99) == pytest.approx(99.01)
    assert image_threshold([2, 4, 4, 4, 5, 5, 7, 9], "mean_std", k=3.0) == pytest.approx(5 + 3 * 2)
    maps = np.arange(8, dtype=float).reshape(2, 2, 2)
    assert pixel_threshold(maps, "quantile", q=0.5) == pytest.approx(3.5)
    assert pixel_threshold(maps, "mean_std", k=1.0) == pytest.approx(3.5 + np.sqrt(5.25))
    with pytest.raises(DataError, match="val_fraction"):
        image_threshold([])


def test_test_labels_never_move_the_threshold():
    for fn in (image_threshold, pixel_threshold):
        assert not any("label" in name for name in inspect.signature(fn).parameters)
    rng = np.random.default_rng(10)
    val_scores, test_scores = rng.random(30), rng.random(20)
    labels_a = (test_scores > 0.5).astype(int)  # two opposite labellings of one test set
    labels_b = 1 - labels_a
    threshold = image_threshold(val_scores, "quantile", q=0.5)
    assert image_threshold(val_scores, "quantile", q=0.5) == threshold  # same val scores, whatever the test labels
    assert f1_at(labels_a, test_scores, threshold) != f1_at(labels_b, test_scores, threshold)
    masks = random_regions(rng, 20, 8, 8, 3)
    a = summarize(labels_a, test_scores, masks, rng.random(masks.shape), threshold)
    b = summarize(labels_b, test_scores, masks, rng.random(masks.shape), threshold)
    assert a["threshold"] == b["threshold"] == threshold
