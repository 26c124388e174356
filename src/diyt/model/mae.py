"""The MAE-DyT masked autoencoder, read top to bottom like facebookresearch/mae `models_mae.py`.

He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022), with Dynamic Tanh in place of
LayerNorm (Zhu et al., CVPR 2025), block-wise masking, hybrid positions and a FeatureAggregationModule that
conditions the light decoder on intermediate encoder layers. forward = patchify -> mask -> forward_encoder ->
aggregate -> forward_decoder -> loss; every step is a method that can be run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from diyt.model.aggregate import AggregateMode, make_aggregator
from diyt.model.blocks import Block
from diyt.model.dyt import NormLayer
from diyt.model.embed import Tokens, TokenSource
from diyt.model.loss import LOSS_WEIGHTS, LossOn, patch_mse, target_norm
from diyt.model.masking import Masker, gather_tokens, visible_indices
from diyt.model.pos_embed import PosEmbedKind, PositionalEmbedding
from diyt.model.presets import ArchConfig


class MAEOutput(NamedTuple):
    loss: Tensor  # () scalar
    pred: Tensor  # (N, L, T) in the loss's space (per-patch normalised when norm_pix_loss)
    mask: Tensor  # (N, L) bool, True = hidden
    target: Tensor  # (N, L, T) in its original space


class Encoder(nn.Module):
    """Tokens -> positions -> visible tokens only -> [cls] + ViT blocks -> norm; keeps every block's output."""

    def __init__(self, grid: tuple[int, int], token_dim: int, arch: ArchConfig, norm_layer: NormLayer,
                 pos_embed: PosEmbedKind) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.proj = nn.Linear(token_dim, dim) if token_dim != dim else nn.Identity()
        self.pos_embed = PositionalEmbedding(grid, dim, pos_embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, arch.num_heads, arch.mlp_ratio, norm_layer) for _ in range(arch.depth))
        self.norm = norm_layer(dim)

    def forward(self, tokens: Tensor, ids_keep: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(N, L, D_in), (N, Lv) -> latent (N, 1 + Lv, D) and the `depth` block outputs (N, 1 + Lv, D)."""
        x = gather_tokens(self.pos_embed(self.proj(tokens)), ids_keep)  # (N, Lv, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return self.norm(x), outputs


class Decoder(nn.Module):
    """Visible tokens + mask tokens in patch order -> positions -> ViT blocks -> norm -> linear head."""

    def __init__(self, grid: tuple[int, int], target_dim: int, arch: ArchConfig, norm_layer: NormLayer,
                 pos_embed: PosEmbedKind) -> None:
        super().__init__()
        dim = arch.decoder_embed_dim
        self.embed = nn.Linear(arch.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = PositionalEmbedding(grid, dim, pos_embed)
        self.blocks = nn.ModuleList(Block(dim, arch.decoder_num_heads, arch.mlp_ratio, norm_layer)
                                    for _ in range(arch.decoder_depth))
        self.norm = norm_layer(dim)
        self.head = nn.Linear(dim, target_dim)

    def forward(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        """(N, 1 + Lv, D_dec) embedded visible tokens, (N, L) -> prediction (N, L, T) for every patch."""
        n, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, num_patches + 1 - x.shape[1], -1)
        patches = gather_tokens(torch.cat([x[:, 1:], mask_tokens], dim=1), ids_restore)  # (N, L, D_dec)
        x = torch.cat([x[:, :1], self.pos_embed(patches)], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 1:]))


class MaskedAutoencoder(nn.Module):
    """MAE-DyT: a token source, a masker, the encoder, the aggregation, the decoder and the loss, all swappable."""

    def __init__(self, source: TokenSource, arch: ArchConfig, norm_layer: NormLayer, masker: Masker, *,
                 pos_embed: PosEmbedKind = "hybrid", aggregate_layers: Sequence[int] = (),
                 aggregate_mode: AggregateMode = "weighted", loss_on: LossOn = "masked",
                 norm_pix_loss: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.source = source
        self.masker = masker
        self.encoder = Encoder(source.grid_size, source.token_dim, arch, norm_layer, pos_embed)
        self.aggregator = make_aggregator(aggregate_layers, arch.embed_dim, arch.decoder_embed_dim,
                                          aggregate_mode, norm_layer)
        self.decoder = Decoder(source.grid_size, source.target_dim, arch, norm_layer, pos_embed)
        self.target_norm = target_norm(norm_pix_loss)
        self.loss_weight = LOSS_WEIGHTS[loss_on]
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As MAE: xavier-uniform linears with zero bias, normal(0.02) tokens; the source initialises itself
        (the pixel one as a linear; a pretrained one keeps its weights)."""
        for part in (self.encoder, self.aggregator, self.decoder):
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
        self.source.reset_parameters()
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names of the multi-dimensional parameters that must not decay: tokens and learnable positions."""
        return {name for name, _ in self.named_parameters() if name.endswith(("_token", "pos_embed.table"))}

    @property
    def num_patches(self) -> int:
        return self.source.num_patches

    def patchify(self, imgs: Tensor) -> Tokens:
        """(N, C, H, W) -> tokens (N, L, D_in) and target (N, L, T) from the token source."""
        return self.source(imgs)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, L, T) in the target's original space -> the source's spatial layout, (N, C, H, W) for pixels."""
        return self.source.unpatchify(x)

    def mask(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A training mask (N, L) bool, True = hidden, from the configured masker."""
        return self.masker(batch, generator=generator)

    def forward_encoder(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """(N, L, D_in), (N, L) -> latent (N, 1 + Lv, D), chosen layers K x (N, 1 + Lv, D), ids_restore (N, L)."""
        ids_keep, ids_restore = visible_indices(mask)
        return *self.encode_visible(tokens, ids_keep), ids_restore

    def encode_visible(self, tokens: Tensor, ids_keep: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The encoder on the tokens at `ids_keep` (N, Lv): latent (N, 1 + Lv, D) and the aggregated layers."""
        latent, outputs = self.encoder(tokens, ids_keep)
        return latent, [outputs[i - 1] for i in self.aggregator.layers]

    def predict_hidden(self, tokens: Tensor, target: Tensor, ids_keep: Tensor, ids_restore: Tensor) -> Tensor:
        """The prediction (N, L, T) for every patch from the visible ones, in the target's original space."""
        pred = self.forward_decoder(self.aggregate(*self.encode_visible(tokens, ids_keep)), ids_restore)
        return self.denormalize(pred, target)

    def aggregate(self, latent: Tensor, hidden: list[Tensor]) -> Tensor:
        """Decoder-embedded visible tokens conditioned on the fused layers: (N, 1 + Lv, D_dec)."""
        return self.aggregator(self.decoder.embed(latent), hidden)

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        """(N, 1 + Lv, D_dec), (N, L) -> prediction (N, L, T)."""
        return self.decoder(x, ids_restore)

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-patch MSE against the (optionally per-patch normalised) target, over hidden or all patches."""
        return patch_mse(pred, self.target_norm.normalize(target), self.loss_weight(mask))

    def denormalize(self, pred: Tensor, target: Tensor) -> Tensor:
        """The prediction (N, L, T) in the target's original space (undoes norm_pix_loss with the target's stats)."""
        return self.target_norm.denormalize(pred, target)

    def reconstruct(self, out: MAEOutput) -> Tensor:
        """Every patch's prediction in the target's original space and spatial layout, (N, C, H, W) for pixels."""
        return self.unpatchify(self.denormalize(out.pred, out.target))

    def forward(self, imgs: Tensor, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> MAEOutput:
        """imgs (N, C, H, W); an explicit bool mask, (N, L) or one (L,) for all, overrides the training masker."""
        n = imgs.shape[0]
        tokens, target = self.patchify(imgs)
        mask = (self.mask(n, generator) if mask is None else mask).to(imgs.device).expand(n, self.num_patches)
        latent, hidden, ids_restore = self.forward_encoder(tokens, mask)
        pred = self.forward_decoder(self.aggregate(latent, hidden), ids_restore)
        return MAEOutput(self.loss(pred, target, mask), pred, mask, target)
