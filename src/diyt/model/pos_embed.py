"""Positional embeddings: MAE's fixed 2-D sin-cos table, a learnable table, or both summed (hybrid).

The sin-cos closed form is the one of He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR
2022), `get_2d_sincos_pos_embed`: the first half of the channels encodes the column, the second half the row,
each as `[sin(pos * omega), cos(pos * omega)]` with `omega_k = 10000 ** (-k / (D / 4))`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PosEmbedKind = Literal["hybrid", "sincos", "learned"]


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(M,) positions -> (M, dim) as `[sin(pos * omega), cos(pos * omega)]`."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid_size: tuple[int, int]) -> Tensor:
    """The fixed table for a (rows, cols) grid in row-major patch order: (rows * cols, dim)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size[0]), torch.arange(grid_size[1]), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


class PositionalEmbedding(nn.Module):
    """Adds `fixed + table` to (N, L, D) tokens.

    `fixed` is the sin-cos buffer (zeros for `learned`); `table` is a learnable parameter (zeros-initialised
    for `hybrid`, so training starts at sin-cos; normal(0.02) for `learned`), or a zero buffer for `sincos`.
    """

    def __init__(self, grid_size: tuple[int, int], dim: int, kind: PosEmbedKind) -> None:
        super().__init__()
        self.kind = kind
        num = grid_size[0] * grid_size[1]
        sincos = sincos_2d(dim, grid_size) if kind != "learned" else torch.zeros(num, dim)
        self.register_buffer("fixed", sincos[None], persistent=False)  # (1, L, D)
        zeros = torch.zeros(1, num, dim)
        if kind == "sincos":
            self.register_buffer("table", zeros, persistent=False)
        else:
            self.table = nn.Parameter(zeros)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == "learned":
            nn.init.normal_(self.table, std=0.02)
        elif self.kind == "hybrid":
            nn.init.zeros_(self.table)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, D) -> (N, L, D)
        return x + (self.fixed + self.table)

    def extra_repr(self) -> str:
        return f"{self.kind}, {tuple(self.fixed.shape[1:])}"
