"""Training batches whose content is a pure function of (seed, epoch, step), whatever the process count.

The order of an epoch is torch's DistributedSampler permutation, seeded with seed + epoch. Its strided split
across ranks means the union of the ranks' k-th local batches is exactly the k-th global batch of a single
process, so lr and batch mean the same for any nproc. Augmentation draws are seeded per (seed, epoch, index),
so neither workers, ranks nor a resume in the middle of an epoch change what an image looks like.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from diyt.config import DataParams
from diyt.data.dataset import AnomalyDataset, Augment
from diyt.errors import ConfigError
from diyt.model.backbone import FeatureSource
from diyt.model.map_cache import MapCache

Key = tuple[int, int]  # (epoch, dataset index)


class TrainImages(Dataset):
    """The train split of some categories: item (epoch, index) → (image (3, S, S), index)."""

    def __init__(self, parts: Sequence[AnomalyDataset], seed: int):
        self.parts = list(parts)
        self.seed = seed
        self.offsets = list(itertools.accumulate(len(p) for p in self.parts))

    def __len__(self) -> int:
        return self.offsets[-1] if self.offsets else 0

    def digest(self) -> str:
        """SHA-256 of the decoded train images, category by category: what a resumed run must train on."""
        sha = hashlib.sha256()
        for part in self.parts:
            sha.update(str(tuple(part.images.shape)).encode())
            sha.update(part.images.contiguous().numpy())
        return sha.hexdigest()

    def locate(self, index: int) -> tuple[AnomalyDataset, int]:
        part = bisect.bisect_right(self.offsets, index)
        return self.parts[part], index - (self.offsets[part - 1] if part else 0)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        epoch, index = key
        part, row = self.locate(index)
        seed = int(np.random.SeedSequence((self.seed, epoch, index)).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also seed CUDA
            return self.item(part, row, index), index

    def item(self, part: AnomalyDataset, row: int, index: int) -> torch.Tensor:
        """The augmented input of one image (the augmentation draws from the seeded default generator)."""
        return part[row]["image"]

    def describe(self, index: int) -> str:
        """The image behind a dataset index, for error messages: <category>/<path>."""
        part, row = self.locate(index)
        return f"{part.root.name}/{part.rows[row].path}"


class TrainFeatures(TrainImages):
    """The train images as a frozen token source's feature maps, computed once instead of once per epoch.

    The backbone costs several times the transformer's step on a CPU and its input never changes, so its maps
    (N, C, rows, cols) are kept in memory (and, with a `MapCache` folder, on disk for the next stages) and each
    epoch's flips and 90-degree rotations (the same seeded draws as `TrainImages`) are applied to the maps: the
    model takes them in place of images (`FeatureSource`).
    """

    def __init__(self, images: TrainImages, source: FeatureSource, device: torch.device,
                 cache: MapCache | None = None):
        super().__init__(images.parts, images.seed)
        cache = cache or MapCache()
        raw = [cache.raw_maps(source, part, device) for part in self.parts]
        self.maps = source.standardized(torch.cat(raw)) if raw else torch.empty(0)

    def item(self, part: AnomalyDataset, row: int, index: int) -> torch.Tensor:
        fmap = self.maps[index]
        return part.augment(fmap) if part.augment is not None else fmap


def train_images(dataset_dir: Path, categories: Sequence[str], data: DataParams, image_size: int,
                 seed: int) -> TrainImages:
    """The "train" split (never "val") of each category, augmented as data.augment says for that category."""
    return TrainImages([
        AnomalyDataset(dataset_dir / category, ["train"], image_size, data.normalize,
                       Augment(hflip=data.augment.hflip, vflip=data.augment.vflip,
                               rot90=category in data.augment.rot90_categories))
        for category in categories], seed)


class _EpochKeys(Sampler[Key]):
    """The sampler's indices of one epoch as (epoch, index) keys, from local position `skip` on."""

    def __init__(self, order: DistributedSampler, epoch: int, skip: int):
        self.order, self.epoch, self.skip = order, epoch, skip

    def __iter__(self) -> Iterator[Key]:
        self.order.set_epoch(self.epoch)
        return ((self.epoch, i) for i in itertools.islice(iter(self.order), self.skip, None))

    def __len__(self) -> int:
        return len(self.order) - self.skip


class Batches:
    """Global batches of `dataset`, cut into this rank's share; `epoch(e, start)` iterates one epoch."""

    def __init__(self, dataset: TrainImages, batch_size: int, *, phase: str, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, pin_memory: bool = False):
        if batch_size > len(dataset):
            raise ConfigError(f"train.{phase}.batch_size: {batch_size} is larger than the dataset "
                              f"({len(dataset)} train images); lower it to at most {len(dataset)}")
        if batch_size % world_size:
            raise ConfigError(f"train.{phase}.batch_size: {batch_size} does not split over train.nproc "
                              f"{world_size} processes; use a multiple of {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.steps_per_epoch = len(dataset) // batch_size
        self.order = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)  # type: ignore[arg-type]
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (images (n, 3, S, S), dataset indices (n,)) of epoch `epoch`, from batch `start` on."""
        loader = DataLoader(self.dataset, self.local_batch, sampler=_EpochKeys(self.order, epoch,
                                                                                start * self.local_batch),
                            drop_last=True, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            generator=torch.Generator())  # keeps the global RNG untouched by worker seeding
        return itertools.islice(iter(loader), self.steps_per_epoch - start)
