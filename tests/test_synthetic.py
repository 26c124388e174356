"""The embedded synthetic dataset: deterministic, pixel-exact masks, and not separable by global statistics."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from diyt.data.synthetic import CATEGORIES, GROUP_TEST_DEFECT, SUBTLE_EVERY, defect_types, generate, render
from diyt.errors import DataError

DEFECT_NAMES = {"scratch", "hole", "crack", "stain", "missing"}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _files(samples) -> dict[tuple[str, str, str], bytes]:
    """Every image and mask as PNG bytes, keyed like the files they become."""
    files = {}
    for s in samples:
        files[(s.split, s.defect_type, s.name)] = _png(s.load_image())
        if s.load_mask is not None:
            files[(s.split, s.defect_type, s.name + "_mask")] = _png(s.load_mask())
    return files


@pytest.mark.parametrize("category", CATEGORIES)
def test_same_seed_same_bytes_other_seed_other_images(category):
    first = _files(generate(category, 2, 1, 5, 64, seed=7))
    assert first == _files(generate(category, 2, 1, 5, 64, seed=7))
    other = _files(generate(category, 2, 1, 5, 64, seed=8))
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first if not k[2].endswith("_mask"))


def test_a_sample_does_not_depend_on_the_others():
    small = generate("nut", 1, 1, 5, 64, seed=3)
    large = generate("nut", 4, 3, 10, 64, seed=3)
    by_key = {(s.split, s.defect_type, s.name): s for s in large}
    for s in reversed(small):  # another order, other counts: the same pixels
        twin = by_key[(s.split, s.defect_type, s.name)]
        assert _png(s.load_image()) == _png(twin.load_image())


@pytest.mark.parametrize("category", CATEGORIES)
def test_counts_names_and_splits(category):
    samples = generate(category, 5, 3, 11, 32, seed=0)
    types = defect_types(category)
    train = [s for s in samples if s.split == "train"]
    good = [s for s in samples if s.split == "test" and s.is_normal]
    bad = [s for s in samples if not s.is_normal]
    assert (len(train), len(good), len(bad)) == (5, 3, 11)
    assert all(s.is_normal and s.load_mask is None for s in train + good)
    assert all(s.split == "test" and s.load_mask is not None for s in bad)
    assert [s.name for s in train] == ["000", "001", "002", "003", "004"]
    keys = [(s.split, s.defect_type, s.name) for s in samples]
    assert len(set(keys)) == len(keys)
    per_type = Counter(s.defect_type for s in bad)
    assert set(per_type) == set(types) and max(per_type.values()) - min(per_type.values()) <= 1
    for t in types:
        names = sorted(s.name for s in bad if s.defect_type == t)
        assert names == [f"{i:03d}" for i in range(per_type[t])]


@pytest.mark.parametrize("category", CATEGORIES)
def test_images_and_masks(category):
    for s in generate(category, 1, 1, len(defect_types(category)), 64, seed=1):
        image = s.load_image()
        assert image.mode == "RGB" and image.size == (64, 64)
        if s.load_mask is None:
            continue
        mask = s.load_mask()
        assert mask.mode == "L" and mask.size == image.size
        values = np.unique(np.asarray(mask))
        assert set(values.tolist()) == {0, 255}, f"{s.origin}: mask values {values}"


@pytest.mark.parametrize("category", CATEGORIES)
def test_mask_is_exactly_what_the_defect_changed(category):
    """Render the clean image of a defective sample's key: they differ exactly on the mask."""
    cat, types = CATEGORIES.index(category), defect_types(category)
    for index, s in enumerate(generate(category, 0, 0, (SUBTLE_EVERY // 2 + 1) * len(types), 128, seed=5)):
        key, rank = (5, cat, GROUP_TEST_DEFECT, index), index // len(types)
        defective, mask = render(category, 128, key, s.defect_type, subtle=rank == SUBTLE_EVERY // 2)
        clean, none = render(category, 128, key)
        assert none is None
        assert np.array_equal(np.asarray(s.load_image()), defective)
        assert np.array_equal(np.asarray(s.load_mask()) > 0, mask)
        changed = (defective != clean).any(axis=-1)
        assert np.array_equal(changed, mask), s.origin
        assert 0.0005 < mask.mean() < 0.06, f"{s.origin}: defect covers {mask.mean():.2%}"


def test_defect_types():
    for category in CATEGORIES:
        assert len(defect_types(category)) >= 3
        assert set(defect_types(category)) <= DEFECT_NAMES
    assert set().union(*map(defect_types, CATEGORIES)) == DEFECT_NAMES
    with pytest.raises(DataError, match="no defect 'crack'"):
        render("weave", 32, (0, 0, 2, 0), "crack")


def test_normal_images_vary():
    for category in CATEGORIES:
        a, b = (np.asarray(s.load_image(), np.float32) for s in generate(category, 2, 0, 0, 64, seed=0))
        assert np.abs(a - b).mean() > 5, category


@pytest.mark.parametrize("category", CATEGORIES)
def test_global_statistics_do_not_separate_defects(category):
    """Neither the mean nor the spread of the intensity tells a defective image from a normal one."""
    samples = generate(category, 0, 40, 60, 128, seed=0)
    grey = [np.asarray(s.load_image().convert("L"), np.float64) for s in samples]
    labels = [0 if s.is_normal else 1 for s in samples]
    for name, stat in (("mean", np.mean), ("std", np.std)):
        auc = roc_auc_score(labels, [stat(g) for g in grey])
        assert max(auc, 1 - auc) < 0.8, f"{category}: image {name} alone separates defects (AUROC {auc:.3f})"


def test_unknown_category():
    with pytest.raises(DataError, match=r"'marble'.*weave, stone, nut"):
        generate("marble", 1, 1, 1, 32, seed=0)
