"""From `ModelParams` to a model, its AdamW parameter groups, and its FLOPs per image."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from diyt.model.dyt import norm_factory
from diyt.model.embed import PatchEmbed, TokenSource
from diyt.model.mae import MaskedAutoencoder
from diyt.model.masking import make_masker

if TYPE_CHECKING:
    from diyt.config import ModelParams


def pixel_source(params: ModelParams) -> TokenSource:
    arch = params.arch
    return PatchEmbed(arch.image_size, arch.patch_size, arch.embed_dim)


def feature_source(params: ModelParams) -> TokenSource:
    from diyt.model.backbone import FeatureSource  # imports timm only when features are asked for

    return FeatureSource(params.arch.image_size, params.arch.patch_size, params.backbone, params.feature_layers,
                         standardize=params.feature_norm == "channel")


# `model.target` -> the token source: pixel patches, or the feature map of a frozen pretrained backbone
TOKEN_SOURCES: dict[str, Callable[[ModelParams], TokenSource]] = {"pixels": pixel_source,
                                                                  "features": feature_source}


def build_model(params: ModelParams) -> MaskedAutoencoder:
    """The MAE-DyT model of `params`: sizes from `params.arch`, every switch from its own field."""
    arch = params.arch
    source = TOKEN_SOURCES[params.target](params)
    return MaskedAutoencoder(
        source, arch, norm_factory(params.norm, params.dyt_alpha),
        make_masker(params.masking, source.grid_size, params.mask_ratio),
        pos_embed=params.pos_embed, aggregate_layers=params.aggregate_layers,
        aggregate_mode=params.aggregate_mode, loss_on=params.loss_on, norm_pix_loss=params.norm_pix_loss)


def param_groups(model: MaskedAutoencoder, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on weight matrices; none on 1-D/scalar params (norm, DyT, bias), tokens, positions."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# the CPU flash kernel is missing from torch's FLOP registry; the CUDA kernels are in it
_SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def forward_flops(model: nn.Module, imgs: torch.Tensor, **forward_kwargs) -> float:
    """Matmul/conv/attention FLOPs of one forward per image (a multiply-add = 2 FLOPs); training ≈ 3x this."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_SDPA_CPU) as counter:
        model(imgs, **forward_kwargs)
    return counter.get_total_flops() / imgs.shape[0]
