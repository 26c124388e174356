"""Anomaly maps by multi-mask reconstruction.

A masked autoencoder copies what it sees, so every patch is scored from a pass in which it was hidden: the
patches are partitioned into K complementary masks, the image is reconstructed K times (one batched forward),
and each patch keeps the prediction of the pass that hid it. R such partitions are averaged. K = 1 is the plain
MAE's single pass, kept for the ablation: one random half of the patches hidden, the other half scoring 0. The
per-pixel error (L2 over channels, optionally mixed with 1 - SSIM and 1 - MSGMS for images, plus a perceptual
error: how far apart a frozen ImageNet network sees the image and its reconstruction) is upsampled to the mask
resolution and smoothed; the image score is the map's maximum or the mean of its top-k pixels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diyt.data.dataset import Normalize, denormalize, normalize
from diyt.eval.whiten import scaled_by_image
from diyt.model import MaskedAutoencoder, complementary_masks, visible_indices


class Scores(NamedTuple):
    score: Tensor  # (N,) image anomaly scores
    anomaly_map: Tensor  # (N, H, W) at the output (mask) resolution
    reconstruction: Tensor  # (N, C, h, w) in the model's input space
    score_map: Tensor | None = None  # (N, H, W) the maps `score` was taken from when not anomaly_map (error level)
    head_map: Tensor | None = None  # (N, H, W) a defect head's map (`diyt.eval.defect_head`), added once z-scored


@dataclass(frozen=True)
class ScoringConfig:
    num_masks: int = 2  # K
    repeats: int = 1  # R
    ssim_weight: float = 0.0
    sigma: float = 4.0  # pixels at the output resolution
    image_score: Literal["max", "topk"] = "max"
    topk_fraction: float = 0.01
    seed: int = 0
    gms_weight: float = 0.0
    perceptual_weight: float = 0.0
    error_scale: Literal["none", "image"] = "none"
    error_scale_quantile: float = 0.25

    @classmethod
    def from_params(cls, params) -> ScoringConfig:
        """From an `EvalParams` section."""
        return cls(**{field.name: getattr(params, field.name) for field in fields(cls)})


def partitions(num_patches: int, config: ScoringConfig) -> Tensor:
    """The R partitions (R, K, L) bool, fixed by the seed so a score never depends on batching. K = 1 (a single
    pass) is the first of two complementary masks: it hides half the patches and leaves the rest unscored."""
    generator = torch.Generator().manual_seed(config.seed)
    return torch.stack([complementary_masks(num_patches, max(config.num_masks, 2), generator)[: config.num_masks]
                        for _ in range(config.repeats)])


def pass_indices(masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """K complementary masks (K, L) -> each pass's ids_keep (K, Lv), ids_restore (K, L), keep (K, 1, L, 1)."""
    ids_keep, ids_restore = visible_indices(masks)
    return ids_keep, ids_restore, masks[:, None, :, None].float()


def merge_passes(model: MaskedAutoencoder, tokens: Tensor, target: Tensor, ids_keep: Tensor, ids_restore: Tensor,
                 keep: Tensor) -> Tensor:
    """Tokens (N, L, D), target (N, L, T) and K passes' indices -> each patch predicted by the pass that hid it,
    (N, L, T); a patch no pass hid (a single pass) is taken as its target, error 0. The K passes run as one
    batch; the ONNX graph (`diyt.export`) calls this with stored indices."""
    k, n = keep.shape[0], tokens.shape[0]

    def per_pass(ids: Tensor) -> Tensor:  # (K, M) -> (K*N, M), pass-major
        return ids[:, None].expand(-1, n, -1).flatten(0, 1)

    pred = model.predict_hidden(tokens.repeat(k, 1, 1), target.repeat(k, 1, 1), per_pass(ids_keep),
                                per_pass(ids_restore)).float()  # (K*N, L, T)
    keep = keep.to(pred.dtype)
    merged = (pred.view(k, n, *pred.shape[1:]) * keep).sum(dim=0)
    if k > 1:  # complementary masks: every patch was hidden once
        return merged
    return merged + target.float() * (1 - keep[0])


def reconstruct(model: MaskedAutoencoder, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, h, w), K masks (K, L) -> the reconstruction and the target in the source's spatial layout (images
    (N, C, h, w) for pixels, feature maps (N, C, rows, cols) for features), each patch from the pass that hid it."""
    tokens, target = model.patchify(images)  # once, not once per pass
    pred = merge_passes(model, tokens, target, *pass_indices(masks.to(images.device)))
    return model.unpatchify(pred), model.unpatchify(target.float())


class SeparableBlur(nn.Module):
    """A Gaussian blur with reflect padding and a normalised kernel (torchvision's `gaussian_blur`), as two 1-D
    convolutions: 2k instead of k^2 taps per pixel. Conv1d over (rows, 1, W) also runs far faster in onnxruntime
    than a one- or three-channel Conv2d, so the evaluation and the ONNX graph (`diyt.export`) share it."""

    def __init__(self, size: int, sigma: float) -> None:
        super().__init__()
        x = torch.linspace(-(size // 2), size // 2, size)
        pdf = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else torch.ones(size)
        self.register_buffer("kernel", (pdf / pdf.sum()).view(1, 1, size), persistent=False)

    @classmethod
    def smoothing(cls, sigma: float) -> nn.Module:
        """The anomaly maps' smoothing: truncated at 4 sigma; sigma 0 is no smoothing."""
        return cls(2 * math.ceil(4 * sigma) + 1, sigma) if sigma > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (..., H, W) -> (..., H, W)
        pad = self.kernel.shape[-1] // 2
        *lead, h, w = x.shape
        x = F.pad(x.reshape(-1, 1, h, w), [pad] * 4, mode="reflect")[:, 0]  # (B, H + 2p, W + 2p)
        x = F.conv1d(x.reshape(-1, 1, w + 2 * pad), self.kernel).view(-1, h + 2 * pad, w)  # along rows
        x = F.conv1d(x.transpose(1, 2).reshape(-1, 1, h + 2 * pad), self.kernel)  # along columns
        return x.view(-1, w, h).transpose(1, 2).reshape(*lead, h, w)


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # SSIM's Gaussian window


def ssim_map(x: Tensor, y: Tensor, blur: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Local SSIM (N, C, h, w) with a Gaussian window, on inputs scaled to unit dynamic range.

    `blur` is the window's blur when the caller holds one (the ONNX graph keeps it as a submodule, `diyt.export`).
    """
    c1, c2 = 0.01**2, 0.03**2
    blur = blur or SeparableBlur(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


GMS_C = 0.0026  # the gradient magnitude similarity's stabilising constant, for inputs in [0, 1] (RIAD's)
GMS_SCALES = (1, 2, 4, 8)  # average-pooling factors


def gradient_magnitude(x: Tensor) -> Tensor:
    """Per-channel gradient magnitude (N, C, h, w) by 3 x 3 Prewitt filters, the border replicated."""
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=x.dtype, device=x.device) / 3
    weight = torch.stack([prewitt, prewitt.T])[:, None].repeat(x.shape[1], 1, 1, 1)  # (2C, 1, 3, 3)
    grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=x.shape[1])  # (N, 2C, h, w)
    return grad.unflatten(1, (x.shape[1], 2)).square().sum(dim=2).sqrt()


def msgms_map(x: Tensor, y: Tensor) -> Tensor:
    """Multi-scale gradient magnitude similarity (N, C, h, w) of two images in [0, 1], 1 where their local
    gradients agree (Zavrtanik et al., "Reconstruction by inpainting for visual anomaly detection", Pattern
    Recognition 2021): the similarity at full, 1/2, 1/4 and 1/8 resolution, each upsampled back, averaged."""
    total = torch.zeros_like(x)
    for factor in GMS_SCALES:
        a, b = (F.avg_pool2d(x, factor), F.avg_pool2d(y, factor)) if factor > 1 else (x, y)
        ga, gb = gradient_magnitude(a), gradient_magnitude(b)
        gms = (2 * ga * gb + GMS_C) / (ga.square() + gb.square() + GMS_C)
        total = total + F.interpolate(gms, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return total / len(GMS_SCALES)


PERCEPTUAL_BACKBONE, PERCEPTUAL_LAYER = "tf_efficientnet_lite0", 3  # the offline backbone's stride-16 features
PERCEPTUAL_SCALE = 2  # images are upsampled 2x first: a feature cell then covers 8 px of the model's input


@functools.lru_cache(maxsize=1)
def perceptual_network() -> nn.Module:
    """The frozen ImageNet network whose features the perceptual error compares (loaded once per process)."""
    from diyt.model.backbone import load_backbone

    return load_backbone(PERCEPTUAL_BACKBONE, [PERCEPTUAL_LAYER])


def perceptual_error(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared difference over channels of the perceptual network's features of two images (N, 3, h, w) of
    pixels in [0, 1], upsampled PERCEPTUAL_SCALE x before and the error bilinearly back to (N, h, w) after."""
    from diyt.model.backbone import backbone_normalization

    net = perceptual_network().to(x.device)
    pair = F.interpolate(torch.cat([x, y]), scale_factor=PERCEPTUAL_SCALE, mode="bilinear", align_corners=False)
    pair = normalize(pair, backbone_normalization(PERCEPTUAL_BACKBONE))  # as the network was trained
    with torch.no_grad():
        fx, fy = net(pair.contiguous(memory_format=torch.channels_last))[0].float().chunk(2)
    error = (fx - fy).square().mean(dim=1, keepdim=True)
    return F.interpolate(error, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def error_map(images: Tensor, recon: Tensor, ssim_weight: float, gms_weight: float = 0.0,
              ssim_blur: Callable[[Tensor], Tensor] | None = None, perceptual_weight: float = 0.0,
              normalize: Normalize | None = None) -> Tensor:
    """Per-cell error (N, h, w) of a reconstruction of `images` (pixels or feature maps, (N, C, h, w)): mean
    squared error over channels, mixed by weight with (1 - SSIM) / 2 and 1 - MSGMS (pixels only), both on the
    images scaled to [0, 1] by the input's range and averaged over channels; plus, for images, `perceptual_weight`
    times the perceptual error (`perceptual_error`) of the pixels (the inputs undone of `normalize`, clipped to
    [0, 1]: the network sees the image as it was photographed)."""
    l2 = (recon - images).square().mean(dim=1)
    if ssim_weight == 0 and gms_weight == 0 and perceptual_weight == 0:
        return l2
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    span = (images.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
    x, y = (images - lo) / span, (recon - lo) / span
    error = (1 - ssim_weight - gms_weight) * l2
    if ssim_weight:
        error = error + ssim_weight * (1 - ssim_map(x, y, blur=ssim_blur).mean(dim=1)) / 2
    if gms_weight:
        error = error + gms_weight * (1 - msgms_map(x, y).mean(dim=1))
    if perceptual_weight:
        if normalize is None:
            raise ValueError("error_map: the perceptual error needs the inputs' normalisation (normalize=...)")
        pixels = (denormalize(t, normalize).clamp(0, 1) for t in (images, recon))
        error = error + perceptual_weight * perceptual_error(*pixels)
    return error


def smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (N, H, W) maps, truncated at 4 sigma."""
    return SeparableBlur.smoothing(sigma).to(maps.device)(maps)


def image_scores(maps: Tensor, how: str, topk_fraction: float) -> Tensor:
    """(N, H, W) -> (N,): the maximum, or the mean of the top `topk_fraction` of pixels."""
    flat = maps.flatten(1)
    if how == "max":
        return flat.amax(dim=1)
    k = max(1, round(topk_fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


@torch.no_grad()
def cell_errors(model: MaskedAutoencoder, images: Tensor, config: ScoringConfig, parts: Tensor,
                normalize: Normalize | None = None, whitening: nn.Module | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The R partitions' per-cell errors (R, N, h, w) of a batch, its mean reconstruction and the target (the
    images, or for features their maps). With a `whitening` (`diyt.eval.whiten`), the error is the whitened
    residual's; with `config.error_scale` "image", each map is divided by its own quantile."""
    errors, recons = [], []
    for masks in parts:
        recon, target = reconstruct(model, images, masks)
        recons.append(recon)
        errors.append(cell_error(target, recon, config, whitening, normalize))
    return torch.stack(errors), torch.stack(recons).mean(dim=0), target


def cell_error(target: Tensor, recon: Tensor, config: ScoringConfig, whitening: nn.Module | None = None,
               normalize: Normalize | None = None, ssim_blur: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """One reconstruction's per-cell error (N, h, w): the whitened residual's with a `whitening`, else
    `error_map`'s; with `config.error_scale` "image", divided by its own quantile. Shared with the ONNX graph."""
    if whitening is not None:
        error = whitening(recon - target.float())
    else:
        error = error_map(target, recon, config.ssim_weight, config.gms_weight, ssim_blur,
                          config.perceptual_weight, normalize)
    if config.error_scale == "image":
        error = scaled_by_image(error, config.error_scale_quantile)
    return error


@torch.no_grad()
def score_images(model: MaskedAutoencoder, images: Tensor, config: ScoringConfig, out_size: int,
                 parts: Tensor | None = None, normalize: Normalize | None = None,
                 level: nn.Module | None = None, whitening: nn.Module | None = None,
                 head: nn.Module | None = None) -> Scores:
    """Anomaly maps (N, out_size, out_size), image scores and reconstructions of a batch of images normalised as
    `normalize` says (which the perceptual error undoes). With an error `level` (`diyt.eval.level`), the image
    scores come from the errors divided by the level it expects from each cell's context (`score_map`); with a
    defect `head` (`diyt.eval.defect_head`), its map comes along, upsampled and smoothed alike (`head_map`)."""
    parts = partitions(model.num_patches, config) if parts is None else parts
    errors, recon, target = cell_errors(model, images, config, parts, normalize, whitening)
    score, maps = reduce_errors(errors, config, out_size)
    score_map = None
    if level is not None:
        score, score_map = reduce_errors(errors / torch.exp(level(target)), config, out_size)
    head_map = None if head is None else reduce_errors(head(target)[None], config, out_size)[1]
    return Scores(score, maps, recon, score_map, head_map)


def reduce_errors(errors: Tensor, config: ScoringConfig, out_size: int,
                  blur: Callable[[Tensor, float], Tensor] = smooth) -> tuple[Tensor, Tensor]:
    """Per-partition errors (R, N, h, w) -> image scores (N,) and smoothed maps (N, out_size, out_size).

    Shared with the ONNX graph (`diyt.export`, which passes a separable `blur`), so both score alike.
    """
    error = errors.mean(dim=0)  # (N, h, w)
    maps = F.interpolate(error[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False)[:, 0]
    maps = blur(maps, config.sigma)
    return image_scores(maps, config.image_score, config.topk_fraction), maps
