"""Write samples in the MVTec AD folder layout at one resolution, with a manifest.

    <category>/train/good/<name>.png
    <category>/test/<type>/<name>.png
    <category>/ground_truth/<type>/<name>_mask.png
    <category>/manifest.csv   path, split (train | val | test), label, defect_type, mask_path, orig_width, orig_height

The validation split is carved from the train-normal images (it stays in train/good on disk; the manifest
is the truth) and is what thresholds are chosen on later.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from diyt.data.sample import GOOD, Sample
from diyt.errors import DataError

MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Row:
    path: str
    split: str
    label: int
    defect_type: str
    mask_path: str
    orig_width: int
    orig_height: int


def validation_names(train_names: Sequence[str], fraction: float, seed: int,
                     parts: Mapping[str, str] | None = None) -> set[str]:
    """The train-normal images held out for thresholds: a seeded, order-independent choice of about
    `fraction` of them, always leaving one part to train on. With `parts` (name -> part, a name not in it
    being its own part), whole parts are held out, in a seeded order, until the count is reached: no part
    is on both sides. Without parts, or with one image per part, the choice is the same."""
    parts = parts or {}
    names = sorted(train_names)
    groups = sorted({parts.get(name, name) for name in names})
    count = min(max(1, round(fraction * len(names))), len(names) - 1) if len(groups) > 1 else 0
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(parts.get(name, name), []).append(name)
    held: set[str] = set()
    for i in np.random.default_rng(seed).permutation(len(groups))[: len(groups) - 1]:
        if len(held) >= count:
            break
        held.update(members[groups[i]])
    return held


def _check_counts(samples: Sequence[Sample], where: str) -> None:
    if not samples:
        raise DataError(f"{where}: the category has no images; check data.path and data.categories")
    if not any(s.split == "train" for s in samples):
        raise DataError(f"{where}: no train/good images; anomaly detection trains on defect-free images")
    if not any(s.split == "test" for s in samples):
        raise DataError(f"{where}: no test images; add test/good and test/<defect> folders")
    seen: set[tuple[str, str, str]] = set()
    for s in samples:
        key = (s.split, s.defect_type, s.name)
        if key in seen:
            raise DataError(f"{s.origin}: duplicate image name {s.name!r} in {s.split}/{s.defect_type}")
        seen.add(key)
        if not s.is_normal and s.load_mask is None:
            raise DataError(f"{s.origin}: defective image without a mask; add ground_truth/"
                            f"{s.defect_type}/{s.name}_mask.png")


def write_category(samples: Sequence[Sample], out: Path, image_size: int, val_fraction: float,
                   split_seed: int, desc: str = "") -> list[Row]:
    """Resize every sample to image_size x image_size and write the category under `out` with its manifest."""
    _check_counts(samples, desc or str(out))
    train = [s for s in samples if s.split == "train"]
    val = validation_names([s.name for s in train], val_fraction, split_seed,
                           {s.name: s.part for s in train if s.part is not None})
    size = (image_size, image_size)
    rows = []
    for s in tqdm(samples, desc=f"prepare {desc}".strip(), unit="img", leave=False):
        image = s.load_image()
        rel = Path(s.split, s.defect_type, f"{s.name}.png")
        mask_rel = ""
        if s.load_mask is not None:
            mask = s.load_mask()
            if mask.size != image.size:
                raise DataError(f"{s.origin}: mask is {mask.size[0]}x{mask.size[1]} but the image is "
                                f"{image.size[0]}x{image.size[1]}; masks must match their images")
            binary = np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) > 127
            mask_rel = str(Path("ground_truth", s.defect_type, f"{s.name}_mask.png"))
            _save(Image.fromarray((binary * 255).astype(np.uint8)), out / mask_rel)
        _save(image.resize(size, Image.Resampling.BICUBIC) if image.size != size else image, out / rel)
        split = "val" if s.split == "train" and s.name in val else s.split
        rows.append(Row(str(rel), split, int(not s.is_normal), s.defect_type, mask_rel, *image.size))
    write_manifest(out / MANIFEST, rows)
    return rows


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", compress_level=1)  # fast to write; the files live in the DVC cache, not git


def write_manifest(path: Path, rows: Sequence[Row]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def read_manifest(category_dir: Path) -> list[Row]:
    """The manifest of a prepared category, with a clear error when it is missing or malformed."""
    path = Path(category_dir) / MANIFEST
    try:
        with open(path, newline="") as f:
            rows = [Row(r["path"], r["split"], int(r["label"]), r["defect_type"], r["mask_path"],
                        int(r["orig_width"]), int(r["orig_height"])) for r in csv.DictReader(f)]
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest; run the prepare stage first (dvc repro prepare)") from None
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path}: malformed manifest ({err}); delete it and run the prepare stage again") from None
    if not rows:
        raise DataError(f"{path}: empty manifest; run the prepare stage again")
    return rows


__all__ = ["GOOD", "MANIFEST", "Row", "read_manifest", "validation_names", "write_category"]
