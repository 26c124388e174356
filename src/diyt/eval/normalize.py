"""Per-position normalisation of anomaly maps with the statistics of validation normals.

Reconstruction error is not uniform over the image: edges of an aligned part, the border of the frame and
lighting gradients are always harder to redraw. Z-scoring each pixel of a map against the mean and spread of
the validation normals' maps at that pixel (as PaDiM does for features, Defard et al., ICPR 2021) turns "large
error" into "larger than usual here". The statistics come from the validation split only, never from test.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PositionStats(NamedTuple):
    mean: Tensor  # (H, W) mean of the validation maps at each pixel
    scale: Tensor  # (H, W) their std plus the floor


def position_stats(val_maps: Tensor, std_floor: float) -> PositionStats:
    """Per-pixel mean and floored std of validation maps (N, H, W); floor = std_floor x the mean std."""
    if val_maps.shape[0] < 2:
        raise ValueError(f"per-position statistics need at least 2 validation maps, got {val_maps.shape[0]}")
    std, mean = torch.std_mean(val_maps.double(), dim=0)  # (H, W) each, unbiased std
    return PositionStats(mean.float(), _floored(std, std_floor).float())


def normalize_maps(maps: Tensor, stats: PositionStats) -> Tensor:
    """(N, H, W) maps as z-scores against the validation statistics, (N, H, W)."""
    return (maps - stats.mean) / stats.scale


def normalize_leave_one_out(val_maps: Tensor, std_floor: float) -> Tensor:
    """Each validation map (N, H, W) z-scored with the statistics of the other N - 1 maps.

    A map scored against statistics it is part of looks more normal than a test map would; leaving it out
    keeps the thresholds chosen on these maps honest.
    """
    n = val_maps.shape[0]
    if n < 3:
        raise ValueError(f"leave-one-out statistics need at least 3 validation maps, got {n}")
    x = val_maps.double()
    total, total_sq = x.sum(dim=0), x.square().sum(dim=0)  # (H, W)
    mean = (total - x) / (n - 1)  # (N, H, W): each map's statistics without it
    var = ((total_sq - x.square()) - (n - 1) * mean.square()) / (n - 2)
    scale = _floored(var.clamp_min(0).sqrt(), std_floor)
    return ((x - mean) / scale).float()


def _floored(std: Tensor, std_floor: float) -> Tensor:
    """std (..., H, W) plus std_floor x its mean over the pixels: flat regions cannot blow up."""
    return std + std_floor * std.mean(dim=(-2, -1), keepdim=True) + 1e-12
