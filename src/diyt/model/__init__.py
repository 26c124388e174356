"""The MAE-DyT model: DyT, positions, masks, encoder, FeatureAggregationModule, decoder, presets."""

from diyt.model.aggregate import FeatureAggregationModule, NoAggregation
from diyt.model.build import build_model, forward_flops, param_groups
from diyt.model.dyt import DyT, norm_factory
from diyt.model.embed import PatchEmbed, Tokens, TokenSource
from diyt.model.mae import Decoder, Encoder, MAEOutput, MaskedAutoencoder
from diyt.model.masking import (
    block_mask, block_rects, complementary_masks, gather_tokens, make_masker, num_masked, random_mask,
    visible_indices,
)
from diyt.model.pos_embed import PositionalEmbedding, sincos_2d
from diyt.model.presets import PRESETS, ArchConfig, resolve

__all__ = [
    "PRESETS", "ArchConfig", "Decoder", "DyT", "Encoder", "FeatureAggregationModule", "MAEOutput",
    "MaskedAutoencoder", "NoAggregation", "PatchEmbed", "PositionalEmbedding", "TokenSource", "Tokens",
    "block_mask", "block_rects", "build_model", "complementary_masks", "forward_flops", "gather_tokens",
    "make_masker", "norm_factory", "num_masked", "param_groups", "random_mask", "resolve", "sincos_2d",
    "visible_indices",
]
