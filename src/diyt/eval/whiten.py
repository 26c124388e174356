"""Whitened reconstruction error: each cell's residual measured against the residuals normal parts leave there.

The plain error weighs every feature channel alike and every direction of the residual alike. But a
reconstruction misses normal cells in typical ways (channels that move together, directions it can never
predict from the context), and those dominate the plain error of rough normal texture. `ResidualWhitening`
holds, per grid position, the mean and covariance of the train normals' residuals (reconstruction minus
target), shrunk towards a multiple of the identity, and returns the squared Mahalanobis distance per channel:
||L^-1 (r - mean)||^2 / C with L the covariance's Cholesky factor (PaDiM's per-position Gaussian, Defard et al.,
ICPR 2021, applied to the residual instead of the feature).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ResidualWhitening(nn.Module):
    """Residuals (N, C, rows, cols) -> whitened squared error per cell (N, rows, cols)."""

    def __init__(self, channels: int, rows: int, cols: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(rows * cols, channels))
        self.register_buffer("inv_chol", torch.eye(channels).repeat(rows * cols, 1, 1))  # (P, C, C)

    def forward(self, residual: Tensor) -> Tensor:
        n, c, rows, cols = residual.shape
        centred = residual.float().flatten(2).permute(2, 0, 1) - self.mean[:, None]  # (P, N, C)
        white = torch.einsum("pdc,pnc->pnd", self.inv_chol, centred)
        return white.square().mean(dim=2).T.reshape(n, rows, cols)


def fit_whitening(residuals: Tensor, shrinkage: float) -> ResidualWhitening:
    """Per-position statistics of train residuals (N, C, rows, cols): covariance (1 - s) S + s tr(S)/C I."""
    n, c, rows, cols = residuals.shape
    if n < 2:
        raise ValueError(f"residual whitening needs at least 2 train images, got {n}")
    x = residuals.double().flatten(2).permute(2, 0, 1)  # (P, N, C)
    mean = x.mean(dim=1)
    centred = x - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / (n - 1)  # (P, C, C)
    scale = cov.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)[:, None, None]
    cov = (1 - shrinkage) * cov + shrinkage * scale * torch.eye(c, dtype=cov.dtype)
    inv_chol = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), torch.eye(c, dtype=cov.dtype),
                                             upper=False)
    whitening = ResidualWhitening(c, rows, cols)
    whitening.mean.copy_(mean.float())
    whitening.inv_chol.copy_(inv_chol.float())
    return whitening


def scaled_by_image(errors: Tensor, quantile: float) -> Tensor:
    """Errors (..., N, rows, cols) divided by each map's own `quantile` over its cells: a rougher tile, whose
    every cell the reconstruction misses more, does not light up whole; a defect covering less than the
    quantile's share of the image does not raise its own yardstick."""
    cells = errors.flatten(-2).sort(dim=-1).values  # sort + lerp as torch.quantile, and exportable to ONNX
    at = quantile * (cells.shape[-1] - 1)
    below, above = cells[..., math.floor(at)], cells[..., math.ceil(at)]
    level = below + (above - below) * (at - math.floor(at))
    return errors / level.clamp_min(1e-12)[..., None, None]
