"""The MAE-DyT model on a micro architecture (32 px, 4x4 patches of 8 px, width 32): shapes, gradients, masks,
DyT, positions, training, switches and optimiser groups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from diyt.config import ModelParams
from diyt.model import (
    DyT, FeatureAggregationModule, NoAggregation, block_mask, block_rects, build_model,
    complementary_masks, forward_flops, gather_tokens, num_masked, param_groups, random_mask, sincos_2d,
    visible_indices,
)
from diyt.model.aggregate import Concat, SoftmaxWeightedSum
from diyt.model.dyt import DyTFunction
from diyt.model.loss import PatchNormTarget, RawTarget

MICRO = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
             decoder_depth=1, decoder_num_heads=2)
L, T = 16, 8 * 8 * 3  # patches, target values per patch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Micro models gain nothing from threads, and spinning threads crawl on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro(**switches) -> ModelParams:
    return ModelParams(**{**MICRO, "aggregate_layers": (1, 2), **switches})


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=seeded(seed))


# -------------------------------------------------------------------------------------------------- model
AGGREGATIONS = {"off": dict(aggregate_layers=()), "weighted": dict(aggregate_mode="weighted"),
                "concat": dict(aggregate_mode="concat")}


@pytest.mark.parametrize(("norm", "pos_embed", "masking", "aggregation", "loss_on", "norm_pix_loss"),
                         itertools.product(["dyt", "layernorm"], ["hybrid", "sincos", "learned"],
                                           ["block", "random"], AGGREGATIONS, ["masked", "all"], [False, True]))
def test_every_switch_combination_has_shapes_and_gradients(norm, pos_embed, masking, aggregation, loss_on,
                                                           norm_pix_loss):
    torch.manual_seed(0)
    model = build_model(micro(norm=norm, pos_embed=pos_embed, masking=masking, loss_on=loss_on,
                              norm_pix_loss=norm_pix_loss, **AGGREGATIONS[aggregation]))
    out = model(images(), generator=seeded())
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.pred.shape == out.target.shape == (2, L, T)
    assert out.mask.shape == (2, L) and out.mask.dtype == torch.bool
    assert out.mask.sum(dim=1).tolist() == [8, 8]
    assert model.reconstruct(out).shape == (2, 3, 32, 32)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_build_model_honours_each_switch():
    dyt = build_model(micro(norm="dyt", dyt_alpha=0.8))
    assert not any(isinstance(m, nn.LayerNorm) for m in dyt.modules())
    assert all(m.alpha.item() == pytest.approx(0.8) for m in dyt.modules() if isinstance(m, DyT))
    assert isinstance(dyt.encoder.norm, DyT) and isinstance(dyt.decoder.blocks[0].norm1, DyT)
    layernorm = build_model(micro(norm="layernorm"))
    assert not any(isinstance(m, DyT) for m in layernorm.modules())
    assert isinstance(layernorm.encoder.norm, nn.LayerNorm)

    for kind, has_table in [("hybrid", True), ("sincos", False), ("learned", True)]:
        model = build_model(micro(pos_embed=kind))
        for pos in (model.encoder.pos_embed, model.decoder.pos_embed):
            assert pos.kind == kind and isinstance(pos.table, nn.Parameter) == has_table

    assert isinstance(build_model(micro(aggregate_layers=())).aggregator, NoAggregation)
    weighted = build_model(micro(aggregate_layers=(1,), aggregate_mode="weighted")).aggregator
    assert isinstance(weighted, FeatureAggregationModule) and isinstance(weighted.fuse, SoftmaxWeightedSum)
    assert weighted.layers == (1,)
    assert isinstance(build_model(micro(aggregate_mode="concat")).aggregator.fuse, Concat)

    assert isinstance(build_model(micro(norm_pix_loss=True)).target_norm, PatchNormTarget)
    assert isinstance(build_model(micro(norm_pix_loss=False)).target_norm, RawTarget)
    assert build_model(micro(mask_ratio=0.75)).mask(3, seeded()).sum(dim=1).tolist() == [12, 12, 12]
    block = build_model(micro(masking="block")).mask(4, seeded(3))
    assert torch.equal(block, block_mask(4, (4, 4), 0.5, seeded(3)))
    rand = build_model(micro(masking="random")).mask(4, seeded(3))
    assert torch.equal(rand, random_mask(4, L, 0.5, seeded(3)))

    sized = build_model(micro(embed_dim=48, depth=3, decoder_depth=2))
    assert len(sized.encoder.blocks) == 3 and len(sized.decoder.blocks) == 2
    assert sized.encoder.cls_token.shape == (1, 1, 48)


def test_loss_on_masked_or_all_patches_with_optional_patch_norm():
    imgs, mask = images(), random_mask(2, L, 0.5, seeded())
    for loss_on, norm_pix_loss in itertools.product(["masked", "all"], [False, True]):
        model = build_model(micro(loss_on=loss_on, norm_pix_loss=norm_pix_loss))
        out = model(imgs, mask=mask)
        target = out.target
        if norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((out.pred - target) ** 2).mean(-1)
        expected = per_patch[mask].mean() if loss_on == "masked" else per_patch.mean()
        torch.testing.assert_close(out.loss, expected)
        back = model.denormalize(model.target_norm.normalize(out.target), out.target)
        torch.testing.assert_close(back, out.target, atol=1e-5, rtol=1e-5)


def test_explicit_mask_is_honoured_and_hidden_pixels_are_not_seen():
    model = build_model(micro(norm_pix_loss=False)).eval()
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, [0, 5, 6, 15]] = mask[1, [1, 2, 3, 4]] = True
    imgs = images()
    out = model(imgs, mask=mask)
    assert torch.equal(out.mask, mask)
    changed = model.unpatchify(out.target.masked_fill(mask[..., None], 7.0))  # new pixels in hidden patches
    out2 = model(changed, mask=mask)
    torch.testing.assert_close(out2.pred, out.pred)
    assert not torch.allclose(out2.loss, out.loss)
    shared = complementary_masks(L, 2, seeded())[1]  # one (L,) mask for the whole batch
    assert torch.equal(model(imgs, mask=shared).mask, shared.expand(2, L))
    assert model.reconstruct(out).shape == imgs.shape


def test_patchify_unpatchify_roundtrip():
    model = build_model(micro())
    imgs = images()
    tokens, target = model.patchify(imgs)
    assert tokens.shape == (2, L, 32) and target.shape == (2, L, T)
    assert torch.equal(model.unpatchify(target), imgs)
    torch.testing.assert_close(target[0, 5], imgs[0, :, 8:16, 8:16].permute(1, 2, 0).reshape(-1))  # patch (1, 1)


def test_plain_mae_configuration_trains():
    torch.manual_seed(0)
    model = build_model(micro(norm="layernorm", masking="random", pos_embed="sincos", aggregate_layers=()))
    assert not any(isinstance(m, (DyT, FeatureAggregationModule)) for m in model.modules())
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3)
    imgs, mask = images(4), random_mask(4, L, 0.5, seeded())
    losses = []
    for _ in range(8):
        loss = model(imgs, mask=mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_initialisation_follows_mae():
    model = build_model(micro())
    for module in model.modules():
        if isinstance(module, nn.Linear):
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound and not module.bias.any()
    for token in (model.encoder.cls_token, model.decoder.mask_token):
        assert 0.005 < token.std() < 0.05
    assert not model.encoder.pos_embed.table.any()  # hybrid starts at pure sin-cos


def test_param_groups_exclude_norms_biases_tokens_and_positions():
    model = build_model(micro(norm="dyt", pos_embed="hybrid"))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(skipped) and decayed | skipped == set(names.values())
    assert all(n.endswith("weight") and model.get_parameter(n).ndim >= 2 for n in decayed)
    for name in ["encoder.cls_token", "decoder.mask_token", "encoder.pos_embed.table", "decoder.pos_embed.table",
                 "encoder.norm.alpha", "encoder.norm.gamma", "encoder.norm.beta", "encoder.blocks.0.attn.qkv.bias",
                 "aggregator.fuse.logits"]:
        assert name in skipped, name


def test_forward_flops_counts_matmuls_and_attention():
    model = build_model(micro(aggregate_layers=()))
    d, dd, n_enc, n_dec = 32, 16, 1 + 8, 1 + L
    block = lambda n, w: 2 * n * w * (3 * w + w + 2 * 4 * w) + 4 * n * n * w  # qkv, proj, mlp; QK^T and AV
    expected = (2 * L * T * d  # patch conv
                + 2 * block(n_enc, d) + 2 * n_enc * d * dd + block(n_dec, dd)  # encoder, decoder embed, decoder
                + 2 * L * dd * T)  # head
    assert forward_flops(model, images(2), generator=seeded()) == expected


# -------------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize(("grid", "ratio"), [((4, 4), 0.5), ((8, 8), 0.3), ((14, 14), 0.75), ((16, 16), 0.5),
                                             ((6, 10), 0.6)])
def test_block_masks_hide_exactly_the_requested_count(grid, ratio):
    masks = block_mask(16, grid, ratio, seeded())
    assert masks.shape == (16, grid[0] * grid[1])
    assert (masks.sum(dim=1) == round(ratio * grid[0] * grid[1])).all()


@pytest.mark.parametrize("grid", [(8, 8), (16, 16)])
def test_block_masks_are_unions_of_contiguous_rectangles(grid):
    rng, count = np.random.default_rng(0), grid[0] * grid[1] // 2
    areas = []
    for _ in range(20):
        mask, rects = block_rects(grid, count, rng)
        union = np.zeros(grid, dtype=bool)
        for top, left, h, w in rects:
            assert 0 <= top and top + h <= grid[0] and 0 <= left and left + w <= grid[1] and h * w > 0
            union[top : top + h, left : left + w] = True
            areas.append(h * w)
        assert np.array_equal(union, mask) and mask.sum() == count
        assert len(rects) <= count // 3  # a handful of blocks, not scattered patches
    assert np.mean(areas) >= 6


def test_random_masks_hide_exactly_the_requested_count():
    assert (random_mask(5, 49, 0.75, seeded()).sum(dim=1) == 37).all()
    assert num_masked(16, 0.99) == 15 and num_masked(16, 0.01) == 1


@pytest.mark.parametrize(("num_patches", "k"), [(16, 2), (16, 3), (49, 4), (5, 5)])
def test_complementary_masks_partition_the_patches(num_patches, k):
    masks = complementary_masks(num_patches, k, seeded())
    assert masks.shape == (k, num_patches) and masks.dtype == torch.bool
    assert (masks.sum(dim=0) == 1).all()
    sizes = masks.sum(dim=1)
    assert sizes.max() - sizes.min() <= 1
    with pytest.raises(ValueError):
        complementary_masks(num_patches, 1, seeded())


def test_masks_are_deterministic_under_a_seeded_generator():
    for make in (lambda g: block_mask(4, (8, 8), 0.5, g), lambda g: random_mask(4, 64, 0.5, g),
                 lambda g: complementary_masks(64, 3, g)):
        assert torch.equal(make(seeded(1)), make(seeded(1)))
        assert not torch.equal(make(seeded(1)), make(seeded(2)))
    model = build_model(micro(masking="block"))
    assert torch.equal(model(images(), generator=seeded(4)).mask, model(images(), generator=seeded(4)).mask)


def test_visible_indices_keep_order_and_restore():
    mask = torch.tensor([[True, False, False, True], [False, True, False, True]])
    ids_keep, ids_restore = visible_indices(mask)
    assert ids_keep.tolist() == [[1, 2], [0, 2]]
    x = torch.arange(8.0).view(2, 4, 1)
    visible = gather_tokens(x, ids_keep)
    filler = torch.full((2, 2, 1), -1.0)
    restored = gather_tokens(torch.cat([visible, filler], dim=1), ids_restore)
    assert torch.equal(restored.squeeze(-1), torch.where(mask, -1.0, x.squeeze(-1)))
    with pytest.raises(ValueError):
        visible_indices(torch.tensor([[True, False], [False, False]]))


# ---------------------------------------------------------------------------------------- DyT, positions
def test_dyt_equals_its_formula_and_gradients():
    dyt = DyT(6, alpha=0.7)
    with torch.no_grad():
        dyt.gamma.normal_()
        dyt.beta.normal_()
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(dyt(x), dyt.gamma * torch.tanh(0.7 * x) + dyt.beta)
    args = [torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True),
            torch.tensor(0.6, dtype=torch.float64, requires_grad=True),
            torch.randn(5, dtype=torch.float64, requires_grad=True),
            torch.randn(5, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(DyTFunction.apply, args)


def test_dyt_alpha_is_learned():
    dyt = DyT(8, alpha=0.5)
    optimizer = torch.optim.SGD(dyt.parameters(), lr=0.1)
    (dyt(torch.randn(4, 8)) - 1).square().mean().backward()
    optimizer.step()
    assert dyt.alpha.item() != 0.5


def test_sincos_table_equals_the_closed_form():
    table = sincos_2d(8, (4, 4))  # omega = [1, 1/100]; columns encode the patch column, then the row
    row, col = 1, 2
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(table[row * 4 + col], torch.tensor(expected))
    assert table.shape == (16, 8)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 0.0, 1.0, 1.0] * 2))
    wide = sincos_2d(32, (3, 5))  # omega_k = 10000 ** (-k / 8)
    torch.testing.assert_close(wide[2 * 5 + 4, 3], torch.tensor(math.sin(4 * 10000 ** (-3 / 8))))
    torch.testing.assert_close(wide[2 * 5 + 4, 16 + 8 + 5], torch.tensor(math.cos(2 * 10000 ** (-5 / 8))))
