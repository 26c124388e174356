"""Pre-norm ViT blocks (Dosovitskiy et al., 2021) with fused qkv and `scaled_dot_product_attention`.

The norm layer is a factory passed in (`diyt.model.dyt.norm_factory`), so DyT and LayerNorm share the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diyt.model.dyt import NormLayer


class Attention(nn.Module):
    """Multi-head self-attention: one fused qkv projection, SDPA, output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, D) -> (N, L, D)
        q, k, v = rearrange(self.qkv(x), "n l (three h e) -> three n h l e", three=3, h=self.num_heads)
        x = attention(q, k, v)  # (N, H, L, E)
        return self.proj(rearrange(x, "n h l e -> n l (h e)"))


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA; under CPU autocast in float32, since there bf16 attention's backward is ~3x slower than float32's
    while the linears around it gain ~5x from bf16 matrix units."""
    if q.is_cpu and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return F.scaled_dot_product_attention(q, k, v)


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """`x + attn(norm(x))`, then `x + mlp(norm(x))`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_layer: NormLayer) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:  # (N, L, D) -> (N, L, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
