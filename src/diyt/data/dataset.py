"""A torch Dataset over a prepared category's manifest, decoded once and kept in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diyt.data.images import read_image
from diyt.data.layout import Row, read_manifest

Normalize = Literal["imagenet", "tf", "none"]
DAMAGED = "the prepared data is damaged: run the prepare stage again (dvc repro -f prepare)"

# (mean, std) applied to images in [0, 1]; "tf" is (x*255 - 127) / 128, TF-style EfficientNet-Lite input.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ((127 / 255,) * 3, (128 / 255,) * 3),
    "none": ((0.0,) * 3, (1.0,) * 3),
}


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation: flips, and 90-degree rotations (for textures only)."""

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False

    def __call__(self, image: torch.Tensor) -> torch.Tensor:  # (C, H, W)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        if self.vflip and torch.rand(()) < 0.5:
            image = image.flip(-2)
        if self.rot90:
            image = torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))
        return image


def normalize(images: torch.Tensor, how: Normalize) -> torch.Tensor:
    """(N, 3, H, W) or (3, H, W) in [0, 1] → normalised."""
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(3, 1, 1)
                 for v in NORMALIZATION[how])
    return (images - mean) / std


def denormalize(images: torch.Tensor, how: Normalize) -> torch.Tensor:
    """Inverse of `normalize`, back to [0, 1] (not clipped)."""
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(3, 1, 1)
                 for v in NORMALIZATION[how])
    return images * std + mean


class AnomalyDataset(Dataset):
    """Images of one prepared category, filtered by split, resized to `image_size`.

    Items are dicts: image (3, S, S) float normalised, mask (1, S, S) float in {0, 1} (zeros for normal
    images), label (0 normal, 1 defective), index (row in `self.rows`).
    """

    def __init__(self, category_dir: str | Path, splits: Sequence[str], image_size: int,
                 normalize: Normalize = "imagenet", augment: Augment | None = None):
        self.root = Path(category_dir)
        self.rows: list[Row] = [r for r in read_manifest(self.root) if r.split in splits]
        self.image_size = image_size
        self.how = normalize
        self.augment = augment
        size = (image_size, image_size)
        # uint8 in memory: a whole CPU-sized category is a few tens of MB and decoding once keeps epochs fast
        self.images = torch.from_numpy(np.stack([
            np.asarray(_resized(read_image(self.root / r.path, fix=DAMAGED), size, Image.Resampling.BICUBIC))
            for r in self.rows])).permute(0, 3, 1, 2).contiguous() if self.rows else torch.empty(0, 3, *size)
        self.labels = torch.tensor([r.label for r in self.rows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def mask(self, index: int, size: int | None = None) -> np.ndarray:
        """The ground-truth mask of item `index` as {0, 1} uint8 at `size` (default: the prepared size)."""
        row = self.rows[index]
        if not row.mask_path:
            s = size or read_image(self.root / row.path, "L", DAMAGED).size[0]
            return np.zeros((s, s), np.uint8)
        img = read_image(self.root / row.mask_path, "L", DAMAGED)
        if size:
            img = _resized(img, (size, size), Image.Resampling.NEAREST)
        return (np.asarray(img) > 127).astype(np.uint8)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image = self.images[index].float() / 255.0
        if self.augment is not None:
            image = self.augment(image)
        mask = torch.from_numpy(self.mask(index, self.image_size)).float()[None]
        return {"image": normalize(image, self.how), "mask": mask, "label": int(self.labels[index]),
                "index": index}


def _resized(img: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return img if img.size == size else img.resize(size, resample)
