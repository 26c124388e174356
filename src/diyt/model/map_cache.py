"""The frozen backbone's maps of a category's train images, computed once for the whole chain.

Pre-training, each fine-tuning and each evaluation's kNN memory bank pass the same train images through the
same frozen backbone, which on a CPU costs about as much as a fine-tuning's steps. `MapCache` keeps the raw maps
(before the channel standardisation, which pre-training fits) in one safetensors file per image set, named by a
digest of everything the maps depend on: the backbone, its layers and weights, the grid, the images' bytes and
normalisation values, the code that computes them (this module and `diyt.model.backbone`), the device kind, its
float32 matmul modes and the library versions. A change to any of them is another name, so a stale file is never
read; the folder can be deleted at any time. Without a folder every call computes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from diyt.data.dataset import NORMALIZATION, AnomalyDataset, normalize
from diyt.io import atomic_path
from diyt.model import backbone
from diyt.model.backbone import FeatureSource

BATCH = 32  # images per backbone pass: fixed, so the maps never depend on a stage's batch size


class MapCache:
    """Raw backbone maps of image sets, in `directory` (None: no cache, every call computes)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None

    def raw_maps(self, source: FeatureSource, dataset: AnomalyDataset, device: torch.device) -> Tensor:
        """The backbone's maps (N, C, rows, cols) of `dataset`'s images in order, on the CPU, unstandardised."""
        if self.directory is None:
            return compute_raw_maps(source, dataset, device)
        path = self.directory / f"{map_digest(source, dataset, device)}.safetensors"
        if path.is_file():
            try:
                return load_file(path)["maps"]
            except (SafetensorError, OSError, KeyError):  # a damaged file is recomputed and replaced
                pass
        maps = compute_raw_maps(source, dataset, device)
        if not dist.is_initialized() or dist.get_rank() == 0:  # under torchrun every rank computes, one writes
            with atomic_path(path) as tmp:  # also clears what a killed write of this file left
                save_file({"maps": maps.contiguous()}, tmp)
        return maps


def compute_raw_maps(source: FeatureSource, dataset: AnomalyDataset, device: torch.device) -> Tensor:
    """The backbone's maps of `dataset`'s (unaugmented) images, `BATCH` at a time, in float32 whatever autocast
    the caller runs under."""
    maps = []
    with torch.autocast(device.type, enabled=False):
        for start in tqdm(range(0, len(dataset), BATCH), desc=f"features {dataset.root.name}", unit="batch",
                          leave=False):
            pixels = dataset.images[start:start + BATCH].float() / 255.0
            maps.append(source.raw_feature_map(normalize(pixels, dataset.how).to(device)).cpu())
    return torch.cat(maps) if maps else torch.empty(0)


def map_digest(source: FeatureSource, dataset: AnomalyDataset, device: torch.device) -> str:
    """SHA-256 of everything the raw maps of `dataset` depend on."""
    import timm

    digest = hashlib.sha256(json.dumps({
        "backbone": source.backbone_name, "layers": list(source.layers), "grid": list(source.grid_size),
        "normalize": NORMALIZATION[dataset.how], "images": list(dataset.images.shape), "batch": BATCH,
        "device": device.type, "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
        "matmul_precision": torch.get_float32_matmul_precision(), "torch": torch.__version__,
        "timm": timm.__version__}, sort_keys=True).encode())
    for module in (sys.modules[__name__], backbone):  # the code that computes the maps
        digest.update(inspect.getsource(module).encode())
    for name, tensor in source.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digest.update(dataset.images.contiguous().numpy())
    return digest.hexdigest()
