"""Anomaly maps by multi-mask reconstruction.

A masked autoencoder copies what it sees, so every patch is scored from a pass in which it was hidden: the
patches are partitioned into K complementary masks, the image is reconstructed K times (one batched forward),
and each patch keeps the prediction of the pass that hid it. R such partitions are averaged. The per-pixel
error (L2 over channels, optionally mixed with 1 - SSIM) is upsampled to the mask resolution and smoothed;
the image score is the map's maximum or the mean of its top-k pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur

from diyt.model import MaskedAutoencoder, complementary_masks


class Scores(NamedTuple):
    score: Tensor  # (N,) image anomaly scores
    anomaly_map: Tensor  # (N, H, W) at the output (mask) resolution
    reconstruction: Tensor  # (N, C, h, w) in the model's input space


@dataclass(frozen=True)
class ScoringConfig:
    num_masks: int = 2  # K
    repeats: int = 1  # R
    ssim_weight: float = 0.0
    sigma: float = 4.0  # pixels at the output resolution
    image_score: Literal["max", "topk"] = "max"
    topk_fraction: float = 0.01
    seed: int = 0

    @classmethod
    def from_params(cls, params) -> ScoringConfig:
        """From an `EvalParams` section."""
        return cls(params.num_masks, params.repeats, params.ssim_weight, params.sigma, params.image_score,
                   params.topk_fraction, params.seed)


def partitions(num_patches: int, config: ScoringConfig) -> Tensor:
    """The R partitions (R, K, L) bool, fixed by the seed so a score never depends on batching."""
    generator = torch.Generator().manual_seed(config.seed)
    return torch.stack([complementary_masks(num_patches, config.num_masks, generator)
                        for _ in range(config.repeats)])


def reconstruct(model: MaskedAutoencoder, images: Tensor, masks: Tensor) -> Tensor:
    """(N, C, h, w), K masks (K, L) -> each patch predicted from the pass that hid it, unpatchified (N, C, h, w)."""
    n, k = images.shape[0], masks.shape[0]
    batch = images.repeat(k, 1, 1, 1)  # (K*N, C, h, w), pass-major
    hidden = masks.repeat_interleave(n, dim=0).to(images.device)  # (K*N, L)
    out = model(batch, mask=hidden)
    pred = model.denormalize(out.pred, out.target).float()  # (K*N, L, T)
    pred = pred.view(k, n, *pred.shape[1:])
    keep = masks.to(pred.device)[:, None, :, None].to(pred.dtype)  # (K, 1, L, 1)
    return model.unpatchify((pred * keep).sum(dim=0))


def ssim_map(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5,
             blur: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Local SSIM (N, C, h, w) with a Gaussian window, on inputs scaled to unit dynamic range.

    `blur` replaces the window's blur by an equal one (the ONNX graph's separable blur, `diyt.export`).
    """
    c1, c2 = 0.01**2, 0.03**2

    def gaussian(t: Tensor) -> Tensor:
        return gaussian_blur(t, [window, window], [sigma, sigma])

    blur = blur or gaussian
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def error_map(images: Tensor, recon: Tensor, ssim_weight: float,
              ssim_blur: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Per-pixel error (N, h, w): mean squared error over channels, mixed with (1 - SSIM) / 2 by weight."""
    l2 = (recon - images).square().mean(dim=1)
    if ssim_weight == 0:
        return l2
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    span = (images.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
    ssim = ssim_map((images - lo) / span, (recon - lo) / span, blur=ssim_blur).mean(dim=1)
    return (1 - ssim_weight) * l2 + ssim_weight * (1 - ssim) / 2


def smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (N, H, W) maps, truncated at 4 sigma."""
    if sigma <= 0:
        return maps
    size = 2 * math.ceil(4 * sigma) + 1
    return gaussian_blur(maps[:, None], [size, size], [sigma, sigma])[:, 0]


def image_scores(maps: Tensor, how: str, topk_fraction: float) -> Tensor:
    """(N, H, W) -> (N,): the maximum, or the mean of the top `topk_fraction` of pixels."""
    flat = maps.flatten(1)
    if how == "max":
        return flat.amax(dim=1)
    k = max(1, round(topk_fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


@torch.no_grad()
def score_images(model: MaskedAutoencoder, images: Tensor, config: ScoringConfig, out_size: int,
                 parts: Tensor | None = None) -> Scores:
    """Anomaly maps (N, out_size, out_size), image scores and reconstructions of a batch of normalised images."""
    parts = partitions(model.num_patches, config) if parts is None else parts
    errors, recons = [], []
    for masks in parts:
        recon = reconstruct(model, images, masks)
        recons.append(recon)
        errors.append(error_map(images.float(), recon, config.ssim_weight))
    score, maps = reduce_errors(torch.stack(errors), config, out_size)
    return Scores(score, maps, torch.stack(recons).mean(dim=0))


def reduce_errors(errors: Tensor, config: ScoringConfig, out_size: int,
                  blur: Callable[[Tensor, float], Tensor] = smooth) -> tuple[Tensor, Tensor]:
    """Per-partition errors (R, N, h, w) -> image scores (N,) and smoothed maps (N, out_size, out_size).

    Shared with the ONNX graph (`diyt.export`, which passes a separable `blur`), so both score alike.
    """
    error = errors.mean(dim=0)  # (N, h, w)
    maps = F.interpolate(error[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False)[:, 0]
    maps = blur(maps, config.sigma)
    return image_scores(maps, config.image_score, config.topk_fraction), maps
