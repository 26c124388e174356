"""The kNN reference scorer: distance of each cell's feature to a memory bank of normal features (PatchCore).

The same token source as DiyT's reconstruction (the frozen backbone's feature map, or pixel patches) feeds a
memory bank built from the train normals, subsampled by a greedy k-center coreset (Roth et al., "Towards Total
Recall in Industrial Anomaly Detection", CVPR 2022) on a random projection of the features. A cell's error is
its Euclidean distance to the nearest bank entry; the maps then go through the same upsampling, smoothing,
normalisation and thresholds as the reconstruction's, so the two scorers are compared on equal terms.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor
from tqdm import tqdm

from diyt.eval.scoring import Scores, ScoringConfig, reduce_errors
from diyt.model import MaskedAutoencoder

PROJECTION_DIM = 128  # the coreset's random projection (distances preserved up to a small factor)
CHUNK = 4096  # query cells per distance block


def greedy_coreset(features: Tensor, size: int, seed: int = 0) -> Tensor:
    """Indices (size,) of a greedy k-center subset of `features` (M, C): each pick is the point farthest from
    those already picked, so the subset covers the whole set. O(M x size) on the projected features."""
    m = features.shape[0]
    if size >= m:
        return torch.arange(m)
    generator = torch.Generator().manual_seed(seed)
    x = features.float()
    if x.shape[1] > PROJECTION_DIM:
        x = x @ (torch.randn(x.shape[1], PROJECTION_DIM, generator=generator) / math.sqrt(PROJECTION_DIM))
    sq = x.square().sum(dim=1)  # (M,)
    picked = torch.empty(size, dtype=torch.long)
    picked[0] = int(torch.randint(m, (1,), generator=generator))
    nearest = torch.full((m,), float("inf"))
    for i in tqdm(range(size), desc="coreset", unit="pt", leave=False, mininterval=1.0):
        if i:
            picked[i] = int(nearest.argmax())
        centre = x[picked[i]]
        nearest = torch.minimum(nearest, sq - 2 * (x @ centre) + centre.square().sum())
    return picked


@torch.no_grad()
def cell_features(model: MaskedAutoencoder, images: Tensor) -> Tensor:
    """(N, 3, h, w) normalised -> what DiyT reconstructs, one cell per token (N, T, rows, cols): the feature map,
    or for the pixel target each patch's pixels (a cell per patch, not per pixel)."""
    return token_grid(model, model.patchify(images).target.float())


def token_grid(model: MaskedAutoencoder, target: Tensor) -> Tensor:
    """Targets (N, L, T) -> (N, T, rows, cols) on the token grid."""
    return rearrange(target, "n (h w) t -> n t h w", h=model.source.grid_size[0])


def fit_bank(features: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Train-normal feature maps (N, C, rows, cols) -> the memory bank (m, C), m = fraction x N x rows x cols."""
    cells = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    size = max(1, math.ceil(fraction * cells.shape[0]))
    return cells[greedy_coreset(cells, size, seed)].contiguous()


def knn_errors(features: Tensor, bank: Tensor) -> Tensor:
    """Feature maps (N, C, rows, cols) -> each cell's distance to its nearest bank entry (N, rows, cols)."""
    n, c, rows, cols = features.shape
    cells = features.permute(0, 2, 3, 1).reshape(-1, c)
    bank = bank.to(cells.device, cells.dtype)
    nearest = torch.cat([torch.cdist(chunk, bank).amin(dim=1) for chunk in cells.split(CHUNK)])
    return nearest.view(n, rows, cols)


@torch.no_grad()
def knn_scores(model: MaskedAutoencoder, images: Tensor, bank: Tensor, config: ScoringConfig, out_size: int,
               device: torch.device) -> Scores:
    """Score one batch of normalised images (N, 3, h, w) by kNN distance, as `score_batch` does by
    reconstruction: image scores, smoothed maps (N, out_size, out_size) and the feature maps, on the CPU."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        target = model.patchify(images.to(device)).target.float()
    score, maps = reduce_errors(knn_errors(token_grid(model, target), bank)[None], config, out_size)
    return Scores(score.float().cpu(), maps.float().cpu(), model.unpatchify(target).cpu())
