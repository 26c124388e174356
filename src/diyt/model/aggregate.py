"""The FeatureAggregationModule: intermediate encoder layers, fused and added to the decoder's visible tokens.

Shallow layers keep local detail that the final layer abstracts away; the seed hands them to the light decoder
so that it can redraw that detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from diyt.model.dyt import NormLayer

AggregateMode = Literal["weighted", "concat"]


class SoftmaxWeightedSum(nn.Module):
    """K tensors (N, M, D) -> their softmax(w)-weighted sum (N, M, D); w zeros-initialised (an equal mix)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def fused_dim(self, dim: int) -> int:
        return dim

    def forward(self, hidden: list[Tensor]) -> Tensor:
        return torch.einsum("k,knmd->nmd", self.logits.softmax(dim=0), torch.stack(hidden))


class Concat(nn.Module):
    """K tensors (N, M, D) -> (N, M, K * D)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers

    def fused_dim(self, dim: int) -> int:
        return self.num_layers * dim

    def forward(self, hidden: list[Tensor]) -> Tensor:
        return torch.cat(hidden, dim=-1)


FUSIONS: dict[str, type[SoftmaxWeightedSum | Concat]] = {"weighted": SoftmaxWeightedSum, "concat": Concat}


class FeatureAggregationModule(nn.Module):
    """Normalises each chosen layer (its own norm: the residual stream grows with depth), fuses, projects, adds.

    `weighted` (the default): a softmax-weighted sum of the layers, then one projection to the decoder width.
    Projecting each layer with a shared projection and then summing is the same map (the projection is
    linear), at 1/K of the cost, and the K weights show which layers the decoder relies on.
    `concat`: concatenation then one projection (K * D -> D_dec), i.e. a projection per layer, summed.
    Conditioning is by addition to the decoder-embedded visible tokens (cls included), no extra attention:
    the mask tokens receive it through the decoder's self-attention.
    """

    def __init__(self, layers: Sequence[int], dim: int, out_dim: int, mode: AggregateMode,
                 norm_layer: NormLayer) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.norms = nn.ModuleList(norm_layer(dim) for _ in self.layers)
        self.fuse = FUSIONS[mode](len(self.layers))
        self.proj = nn.Linear(self.fuse.fused_dim(dim), out_dim)

    def forward(self, x: Tensor, hidden: list[Tensor]) -> Tensor:  # (N, M, D_dec), K x (N, M, D) -> (N, M, D_dec)
        return x + self.proj(self.fuse([norm(h) for norm, h in zip(self.norms, hidden, strict=True)]))


class NoAggregation(nn.Module):
    """Aggregation off (`aggregate_layers: []`): the decoder's visible tokens pass through unchanged."""

    layers: tuple[int, ...] = ()

    def forward(self, x: Tensor, hidden: list[Tensor]) -> Tensor:
        return x


def make_aggregator(layers: Sequence[int], dim: int, out_dim: int, mode: AggregateMode,
                    norm_layer: NormLayer) -> nn.Module:
    """FeatureAggregationModule over the 1-based `layers`, or NoAggregation for an empty list."""
    return FeatureAggregationModule(layers, dim, out_dim, mode, norm_layer) if layers else NoAggregation()
