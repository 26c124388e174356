"""Token sources: the one seam between the input and the transformer.

A token source turns images into tokens for the encoder and the target the decoder must predict, both on the
same (rows, cols) grid, and maps a target-shaped tensor back to a spatial map. Everything after it works on
(N, L, D_in) tokens and (N, L, T) targets, so a frozen backbone's feature map can replace pixel patches.
"""

from __future__ import annotations

from typing import NamedTuple

from einops import rearrange
from torch import Tensor, nn


class Tokens(NamedTuple):
    tokens: Tensor  # (N, L, D_in), the encoder's input
    target: Tensor  # (N, L, T), what the decoder predicts, in its original (un-normalised) space


class TokenSource(nn.Module):
    """The interface: `forward(imgs) -> Tokens`, `unpatchify((N, L, T)) -> (N, C, H, W)`, and the sizes."""

    grid_size: tuple[int, int]  # (rows, cols) of tokens
    token_dim: int  # D_in
    target_dim: int  # T
    is_pixels: bool = False  # whether `unpatchify` gives back images (else feature maps)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward(self, imgs: Tensor) -> Tokens:
        raise NotImplementedError

    def unpatchify(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """The source's own initialisation (nothing for a frozen one)."""


class PatchEmbed(TokenSource):
    """Pixel patches: tokens from a conv with stride = patch, target = the patch's pixels in (p, q, c) order."""

    is_pixels = True

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.token_dim = embed_dim
        self.target_dim = patch_size**2 * in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, imgs: Tensor) -> Tokens:  # (N, C, H, W) -> (N, L, D), (N, L, p*p*C)
        tokens = rearrange(self.proj(imgs), "n d h w -> n (h w) d")
        return Tokens(tokens, self.patchify(imgs))

    def patchify(self, imgs: Tensor) -> Tensor:  # (N, C, H, W) -> (N, L, p*p*C)
        return rearrange(imgs, "n c (h p) (w q) -> n (h w) (p q c)", p=self.patch_size, q=self.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:  # (N, L, p*p*C) -> (N, C, H, W)
        return rearrange(x, "n (h w) (p q c) -> n c (h p) (w q)", h=self.grid_size[0], p=self.patch_size,
                         q=self.patch_size)

    def reset_parameters(self) -> None:
        """MAE: initialise the conv as a linear layer (xavier-uniform over its flattened weight)."""
        nn.init.xavier_uniform_(self.proj.weight.view(self.proj.weight.shape[0], -1))
        nn.init.zeros_(self.proj.bias)
