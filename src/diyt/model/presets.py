"""Model sizes as named factories: `tiny` trains in minutes on two CPU cores, `seed` is the paper's size."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArchConfig:
    """The sizes of a MAE-DyT model; the switches (norm, masking, ...) live in `diyt.config.ModelParams`."""

    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def tiny() -> ArchConfig:
    """CPU preset: 128 px, 16x16 patches of 8 px, width 192, 6 + 2 blocks."""
    return ArchConfig(image_size=128, patch_size=8, embed_dim=192, depth=6, num_heads=3,
                      decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)


def small() -> ArchConfig:
    """ViT-Small width at 224 px."""
    return ArchConfig(image_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                      decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8)


def seed() -> ArchConfig:
    """The seed's size: ViT-Base width, encoder depth 16, light decoder of depth 2, 224 px (a GPU preset)."""
    return ArchConfig(image_size=224, patch_size=16, embed_dim=768, depth=16, num_heads=12,
                      decoder_embed_dim=512, decoder_depth=2, decoder_num_heads=16)


PRESETS: dict[str, Callable[[], ArchConfig]] = {"tiny": tiny, "small": small, "seed": seed}


def resolve(preset: str, **overrides: int | float | None) -> ArchConfig:
    """The preset's sizes with every non-None override applied."""
    return dataclasses.replace(PRESETS[preset](), **{k: v for k, v in overrides.items() if v is not None})
