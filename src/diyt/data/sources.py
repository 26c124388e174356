"""Dataset sources: MVTec AD, BTAD, Magnetic Tile, a user's folder, and the synthetic set.

Each source yields the `Sample`s of one category. A real dataset is read from `data.path` when set, otherwise
downloaded once into `<cache_dir>/<source>/` (checksum-verified where the publisher's archive is stable) and
extracted there; either way its layout and image counts are checked against the spec below.

MVTec AD: Bergmann et al., "MVTec AD - A Comprehensive Real-World Dataset for Unsupervised Anomaly
Detection", CVPR 2019. BTAD: Mishra et al., "VT-ADL: A Vision Transformer Network for Image Anomaly Detection
and Localization", ISIE 2021. Magnetic Tile: Huang, Qiu, Yuan, "Surface defect saliency of magnetic tile",
The Visual Computer, 2020.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from diyt.config import KNOWN_CATEGORIES, DataParams
from diyt.data.download import download, extract
from diyt.data.images import read_image, read_mask
from diyt.data.layout import validation_names
from diyt.data.sample import GOOD, Sample
from diyt.errors import DataError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class Counts(NamedTuple):
    """Images of one category of a complete copy."""

    train_good: int
    test_good: int
    test_defect: int


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from, how its folders read, and what a complete copy holds."""

    archive: Archive
    marker: str  # the folder that marks the dataset's root; "{category}" is filled in
    read: Callable[[Path, str, int, str], list[Sample]]  # (root, category, split_seed, split_by) -> samples
    counts: Mapping[str, Counts] = field(default_factory=dict)  # per category; absent = not checked
    defect_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # per category, per type


# ------------------------------------------------------------------------------------------ folder trees
@dataclass(frozen=True)
class TreeLayout:
    """An MVTec-AD-like tree: train/<good>/, test/<type>/, ground_truth/<type>/<stem><mask_suffix>.*"""

    good: str
    mask_suffix: str


MVTEC_TREE = TreeLayout(good="good", mask_suffix="_mask")
BTAD_TREE = TreeLayout(good="ok", mask_suffix="")  # masks are named like their image (.png, or .bmp in 03)


def read_tree(cat: Path, layout: TreeLayout) -> list[Sample]:
    """Every image of one category folder, each defective one paired with its mask; gaps are errors."""
    train_dir = cat / "train" / layout.good
    train = _images(train_dir)
    if not train:
        raise DataError(f"{train_dir}: no training images; put the category's defect-free images in "
                        f"train/{layout.good}/")
    if len(train) < 2:
        raise DataError(f"{train_dir}: only 1 training image; add more (at least 2: one is held out to choose "
                        "the thresholds on)")
    test_types = [d for d in _subdirs(cat / "test") if _images(d)]
    if not test_types:
        raise DataError(f"{cat / 'test'}: no test images; add test/{layout.good}/ and test/<defect>/ folders")
    samples = [_sample(p, "train", GOOD) for p in train]
    gt = cat / "ground_truth"
    for folder in test_types:
        if folder.name == layout.good:
            samples += [_sample(p, "test", GOOD) for p in _images(folder)]
            continue
        masks = {p.stem: p for p in _images(gt / folder.name)}
        for image in _images(folder):
            mask = masks.pop(image.stem + layout.mask_suffix, None)
            if mask is None:
                raise DataError(f"{image}: defective image without a mask; add "
                                f"{gt / folder.name / (image.stem + layout.mask_suffix)}.png")
            samples.append(_sample(image, "test", folder.name, mask))
        if masks:
            raise DataError(f"{min(masks.values())}: mask without an image; add its image to {folder} or "
                            "remove the mask")
    tested = {d.name for d in test_types}
    for folder in _subdirs(gt):
        if folder.name not in tested and _images(folder):
            raise DataError(f"{_images(folder)[0]}: mask without an image; add test/{folder.name}/ or remove "
                            f"{folder}")
    if len(tested) == 1 or layout.good not in tested:
        kind, missing = ("normal", "a test/<defect>/ folder and its masks") if layout.good in tested else \
            ("defective", f"test/{layout.good}/")
        raise DataError(f"{cat / 'test'}: only {kind} test images, so the evaluation cannot tell normal from "
                        f"defective; add {missing}")
    return samples


def _tree_reader(layout: TreeLayout) -> Callable[[Path, str, int, str], list[Sample]]:
    return lambda root, category, seed, split_by: read_tree(root / category, layout)


# ------------------------------------------------------------------------------------------ magnetic tile
MT_FREE = "MT_Free"
MT_TRAIN_FRACTION = 0.8  # of the defect-free tiles; the rest, and every defective tile, are test images


def read_magnetic_tile(root: Path, category: str, seed: int, split_by: str = "image") -> list[Sample]:
    """MT_<Type>/Imgs/<name>.jpg with a same-named .png mask; MT_Free split train/test by `seed`, by image or,
    with `split_by` "part", by tile (`tile_parts`): a tile photographed six times lands on one side."""
    samples: list[Sample] = []
    for folder in _subdirs(root):
        if not folder.name.startswith("MT_"):
            continue
        files = _images(folder / "Imgs")
        images = [p for p in files if p.suffix.lower() == ".jpg"]
        if folder.name == MT_FREE:
            parts = tile_parts([p.stem for p in images]) if split_by == "part" else {}
            # the same seeded choice as the validation split: sorted names, shuffled by `seed`
            held_out = validation_names([p.name for p in images], 1.0 - MT_TRAIN_FRACTION, seed,
                                        {p.name: parts[p.stem] for p in images if p.stem in parts})
            samples += [_sample(p, "test" if p.name in held_out else "train", GOOD, part=parts.get(p.stem))
                        for p in images]
            continue
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        defect = folder.name.removeprefix("MT_").lower()
        for image in images:
            if image.stem not in masks:
                raise DataError(f"{image}: defective tile without its mask {image.stem}.png; the copy is "
                                "incomplete")
            samples.append(_sample(image, "test", defect, masks[image.stem]))
    if not any(s.is_normal for s in samples):
        raise DataError(f"{root / MT_FREE / 'Imgs'}: no defect-free tiles (*.jpg); point data.path at the "
                        "folder holding MT_Free/, MT_Blowhole/, ...")
    return samples


MT_NAME = re.compile(r"exp(\d+)_num_(\d+)")


def tile_parts(stems: list[str]) -> dict[str, str]:
    """Magnetic Tile names the photographs `exp<k>_num_<n>`: each tile is photographed under six setups,
    exp1 to exp6, in that order, with increasing frame numbers n. So in order of n, a tile's run ends where
    the setup number stops increasing. Name -> part (the run's first name); a name of another form is its
    own part. Checked against the backbone's features: 96 % of the free tiles' nearest neighbours (other
    than themselves) fall in the same run, and 148 of the 170 runs hold six photographs."""
    numbered = sorted((int(m[2]), int(m[1]), stem) for stem in stems if (m := MT_NAME.fullmatch(stem)))
    parts, first, last_setup = {}, "", None
    for _, setup, stem in numbered:
        if last_setup is None or setup <= last_setup:
            first = stem
        parts[stem], last_setup = first, setup
    return parts


# ---------------------------------------------------------------------------------------------- registry
# MVTec AD per-category counts: the MVTec AD paper, Table 1 (3629 train, 467 good + 1258 defective test).
MVTEC_AD_COUNTS = {
    "bottle": Counts(209, 20, 63), "cable": Counts(224, 58, 92), "capsule": Counts(219, 23, 109),
    "carpet": Counts(280, 28, 89), "grid": Counts(264, 21, 57), "hazelnut": Counts(391, 40, 70),
    "leather": Counts(245, 32, 92), "metal_nut": Counts(220, 22, 93), "pill": Counts(267, 26, 141),
    "screw": Counts(320, 41, 119), "tile": Counts(230, 33, 84), "toothbrush": Counts(60, 12, 30),
    "transistor": Counts(213, 60, 40), "wood": Counts(247, 19, 60), "zipper": Counts(240, 32, 119),
}
MT_COMMIT = "cc4eb530b57b9cb7225bf76023873043ffd50655"

SPECS: dict[str, DatasetSpec] = {
    # URL and sha256 as in anomalib (src/anomalib/data/datamodules/image/mvtecad.py); md5 as in anomalib
    # before v1 (DownloadInfo hash). MVTec also serves one archive per category (bottle.tar.xz, ...) from
    # the same share, without published checksums. The tar holds <category>/ folders at its top.
    "mvtec_ad": DatasetSpec(
        archive=Archive(
            url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
            filename="mvtec_anomaly_detection.tar.xz",
            sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
            md5="eefca59f2cede9c3fc5b6befbfec275e"),
        marker="{category}", read=_tree_reader(MVTEC_TREE), counts=MVTEC_AD_COUNTS),
    # URL and sha256 as in anomalib (src/anomalib/data/datamodules/image/btech.py); md5 as in anomalib
    # before v1. The zip holds BTech_Dataset_transformed/<01|02|03>/; images are .bmp (01, 03) or .png (02),
    # masks .png (01, 02) or .bmp (03) (dataset-ninja/btad src/convert.py). Per-category counts are not
    # pinned: only the dataset's totals are published with confidence (1799 train, 451 ok + 290 ko test).
    "btad": DatasetSpec(
        archive=Archive(
            url="https://avires.dimi.uniud.it/papers/btad/btad.zip", filename="btad.zip",
            sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
            md5="c1fa4d56ac50dd50908ce04e81037a8e"),
        marker="{category}", read=_tree_reader(BTAD_TREE)),
    # GitHub's archive of a pinned commit: GitHub does not promise byte-stable archives, so no checksum is
    # enforced; the extracted layout and the per-type counts below are verified instead.
    "magnetic_tile": DatasetSpec(
        archive=Archive(
            url=f"https://github.com/abin24/Magnetic-tile-defect-datasets./archive/{MT_COMMIT}.zip",
            filename=f"magnetic_tile-{MT_COMMIT[:7]}.zip"),
        marker=MT_FREE, read=read_magnetic_tile,
        counts={"tile": Counts(762, 190, 392)},  # 952 defect-free: round(0.2 * 952) test, the rest train
        defect_counts={"tile": {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}}),
}


# ----------------------------------------------------------------------------------------------- loading
def load_samples(data: DataParams, category: str, cache_dir: Path) -> list[Sample]:
    """The samples of one category of `data.source`: read, downloaded or generated, then checked."""
    known = KNOWN_CATEGORIES.get(data.source)
    if known is not None and category not in known:
        raise DataError(f"data.categories: {category!r} is not a category of {data.source} "
                        f"(allowed: {', '.join(known)})")
    loader = _LOADERS.get(data.source, _load_spec)
    return loader(data, category, Path(cache_dir))


def fetch(spec: DatasetSpec, cache: Path, progress: bool = True) -> Path:
    """Download and extract the spec's archive into `cache` once; the archive is removed once extracted."""
    extracted = cache / "extracted"
    if not extracted.is_dir():
        a = spec.archive
        archive = download(a.url, cache / a.filename, sha256=a.sha256, md5=a.md5, progress=progress)
        extract(archive, extracted)
        archive.unlink()
    return extracted


def _load_spec(data: DataParams, category: str, cache_dir: Path) -> list[Sample]:
    if data.source not in SPECS:
        raise DataError(f"data.source: no dataset spec for {data.source!r} (known: {', '.join(SPECS)})")
    spec = SPECS[data.source]
    if data.path:
        base, fix = Path(data.path), "point data.path at the folder that holds it"
    else:
        base = fetch(spec, cache_dir / data.source)
        fix = f"delete {base} to download it again"
    root = _find_root(base, spec.marker.format(category=category), fix)
    samples = spec.read(root, category, data.split_seed, data.split_by)
    _check_counts(samples, spec, f"{root} ({data.source} {category})", category, data.split_by)
    return samples


def _load_folder(data: DataParams, category: str, cache_dir: Path) -> list[Sample]:
    root = Path(data.path or "")
    if not data.path or not root.is_dir():
        raise DataError(f"data.path: {data.path!r} is not a folder; data.source=folder needs a folder of "
                        "categories in MVTec AD layout")
    cat = root / category
    if not cat.is_dir():
        found = ", ".join(d.name for d in _subdirs(root)) or "none"
        raise DataError(f"{cat}: no such category folder (found: {found}); set data.categories to "
                        "sub-folders of data.path")
    return read_tree(cat, MVTEC_TREE)


def _load_synthetic(data: DataParams, category: str, cache_dir: Path) -> list[Sample]:
    from diyt.data import synthetic  # imported on use: the real sources do not need it

    s = data.synthetic
    return list(synthetic.generate(category, s.n_train, s.n_test_good, s.n_test_defect, data.image_size,
                                   data.split_seed))


_LOADERS = {"synthetic": _load_synthetic, "folder": _load_folder}


def _find_root(base: Path, marker: str, fix: str) -> Path:
    """`base`, or the sub-folder of it, that holds `marker`/ (archives often wrap their content in one)."""
    if not base.is_dir():
        raise DataError(f"{base}: not a folder; set data.path to the dataset's extracted folder")
    for root in (base, *_subdirs(base)):
        if (root / marker).is_dir():
            return root
    raise DataError(f"{base}: no {marker}/ folder here or one level down; {fix}")


def _check_counts(samples: list[Sample], spec: DatasetSpec, where: str, category: str,
                  split_by: str = "image") -> None:
    """The copy's image counts against the spec's; split by part, only the totals of normal and defective."""
    fix = "the copy is incomplete or not the official release; download it again or fix data.path"
    expected = spec.counts.get(category)
    if expected is not None:
        got = Counts(sum(s.split == "train" for s in samples),
                     sum(s.split == "test" and s.is_normal for s in samples),
                     sum(not s.is_normal for s in samples))
        if split_by == "part":  # how many normal images land in test depends on the parts' sizes
            expected, got = ({"normal": c.train_good + c.test_good, "defective": c.test_defect}
                             for c in (expected, got))
        else:
            expected, got = dict(expected._asdict()), dict(got._asdict())
        if got != expected:
            raise DataError(f"{where}: expected {expected} images, found {got}; {fix}")
    types = spec.defect_counts.get(category)
    if types is not None:
        got_types = dict(Counter(s.defect_type for s in samples if not s.is_normal))
        if got_types != dict(types):
            raise DataError(f"{where}: expected defect types {dict(types)}, found {got_types}; {fix}")


# ----------------------------------------------------------------------------------------------- helpers
def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if folder.is_dir() else []


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file())


def _sample(image: Path, split: str, defect_type: str, mask: Path | None = None, part: str | None = None) -> Sample:
    return Sample(name=image.stem, split=split, defect_type=defect_type, load_image=partial(read_image, image),
                  load_mask=None if mask is None else partial(load_binary_mask, mask, image), origin=str(image),
                  part=part)


def load_binary_mask(mask: Path, image: Path) -> Image.Image:
    """A defect mask as a PIL "L" image of 0/255 (thresholded at > 127), checked against its image's size."""
    return Image.fromarray(read_mask(mask, _image_size(image)) * np.uint8(255))


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:  # the header only
            return img.size
    except Exception:  # noqa: BLE001 - read_image names the file and the problem in one line
        return read_image(path).size


__all__ = ["SPECS", "Archive", "Counts", "DatasetSpec", "TreeLayout", "fetch", "load_binary_mask",
           "load_samples", "read_magnetic_tile", "read_tree"]
