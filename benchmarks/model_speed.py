"""Training speed of the MAE-DyT model: forward+backward images/s per preset, the DyT / LayerNorm step-time
ratio at equal size, DiyT against a vanilla MAE assembled from timm's ViT blocks (same width, depth and tokens),
and model FLOP utilisation against a plain matmul measured in the same run.

Prints tables, asserts nothing. Times are the best of a few steps, so other load on the machine shows as
less noise; compared models alternate, so load drifts hit both. timm is a benchmark-only dependency here.
Usage: python benchmarks/model_speed.py [--device cpu|cuda] [--presets tiny small seed]
"""

from __future__ import annotations

import argparse
import time
import types

import torch

from diyt.config import ModelParams
from diyt.model import ArchConfig, build_model, forward_flops
from diyt.model.pos_embed import sincos_2d
from roofline import matmul_flops, sync

BATCH = {"tiny": 32, "small": 8, "seed": 4}  # CPU batches; seed is a GPU preset
ITERS = {"tiny": 6, "small": 4, "seed": 3}


def matmul_gflops(device: torch.device) -> float:
    """Best GFLOP/s of a 2048^3 float32 matmul."""
    return matmul_flops(device) / 1e9


def step_seconds(model: torch.nn.Module, imgs: torch.Tensor, iters: int, warmup: int = 1) -> float:
    """Best time of one forward + backward over `imgs`."""
    generator = torch.Generator().manual_seed(0)
    best = float("inf")
    for i in range(warmup + iters):
        sync(imgs.device)
        start = time.perf_counter()
        model(imgs, generator=generator).loss.backward()
        sync(imgs.device)
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            best = min(best, time.perf_counter() - start)
    return best


def preset_rows(presets: list[str], device: torch.device) -> list[dict]:
    """One forward+backward timing per preset, with a matmul measured next to it."""
    rows = []
    for preset in presets:
        params = ModelParams(preset=preset)
        model = build_model(params).to(device)
        size, batch = params.arch.image_size, BATCH[preset]
        flops = forward_flops(model, torch.zeros(1, 3, size, size, device=device))
        seconds = step_seconds(model, torch.randn(batch, 3, size, size, device=device), ITERS[preset])
        rows.append(dict(preset=preset, batch=batch, flops=flops, seconds=seconds, matmul=matmul_gflops(device),
                         millions=sum(p.numel() for p in model.parameters()) / 1e6))
    return rows


def print_table(rows: list[dict], peak: float) -> None:
    print(f"{'preset':<7} {'batch':>5} {'params M':>8} {'fwd GFLOP/img':>13} {'step s':>7} {'img/s':>7} "
          f"{'GFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        achieved = 3 * r["flops"] * r["batch"] / r["seconds"] / 1e9  # backward ≈ 2x forward
        print(f"{r['preset']:<7} {r['batch']:>5} {r['millions']:>8.1f} {r['flops'] / 1e9:>13.2f} {r['seconds']:>7.3f} "
              f"{r['batch'] / r['seconds']:>7.1f} {achieved:>8.1f} {achieved / peak:>6.1%}")


def norm_ratio(device: torch.device, preset: str = "tiny", rounds: int = 4) -> None:
    """DyT / LayerNorm step time at the same size, alternating the two so that load drifts hit both."""
    size, batch = ModelParams(preset=preset).arch.image_size, BATCH[preset]
    imgs = torch.randn(batch, 3, size, size, device=device)
    models = {norm: build_model(ModelParams(preset=preset, norm=norm)).to(device) for norm in ("dyt", "layernorm")}
    best = {norm: float("inf") for norm in models}
    for _ in range(rounds):
        for norm, model in models.items():
            best[norm] = min(best[norm], step_seconds(model, imgs, iters=1))
    print(f"DyT / LayerNorm step time ({preset}, batch {batch}): {best['dyt']:.3f} s / {best['layernorm']:.3f} s "
          f"= {best['dyt'] / best['layernorm']:.2f}")


class TimmMAE(torch.nn.Module):
    """The vanilla MAE (He et al., 2022) from timm's ViT `Block`s and `PatchEmbed`: LayerNorm, random masking,
    fixed sin-cos positions, a class token, a decoder on the encoded visible tokens plus mask tokens, an L2 loss
    on the hidden patches. The speed peer of DiyT at the same sizes."""

    def __init__(self, arch: ArchConfig, mask_ratio: float = 0.5) -> None:
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        super().__init__()
        p, dim, dec = arch.patch_size, arch.embed_dim, arch.decoder_embed_dim
        grid = arch.image_size // p
        self.patch_size, self.mask_ratio = p, mask_ratio
        self.patch_embed = PatchEmbed(arch.image_size, p, 3, dim)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(dim, (grid, grid))[None].float(), persistent=False)
        self.blocks = torch.nn.ModuleList(Block(dim, arch.num_heads, arch.mlp_ratio, qkv_bias=True)
                                          for _ in range(arch.depth))
        self.norm = torch.nn.LayerNorm(dim)
        self.decoder_embed = torch.nn.Linear(dim, dec)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, dec))
        self.register_buffer("decoder_pos", sincos_2d(dec, (grid, grid))[None].float(), persistent=False)
        self.decoder_blocks = torch.nn.ModuleList(Block(dec, arch.decoder_num_heads, arch.mlp_ratio, qkv_bias=True)
                                                  for _ in range(arch.decoder_depth))
        self.decoder_norm = torch.nn.LayerNorm(dec)
        self.decoder_pred = torch.nn.Linear(dec, p * p * 3)

    def forward(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> types.SimpleNamespace:
        n, p = imgs.shape[0], self.patch_size
        target = imgs.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(n, -1, p * p * 3)
        x = self.patch_embed(imgs) + self.pos
        length = x.shape[1]
        keep = int(length * (1 - self.mask_ratio))
        noise = torch.rand(n, length, generator=generator).to(imgs.device)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        x = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_embed(self.norm(x))
        hidden = self.mask_token.expand(n, length - keep, -1)
        y = torch.cat([x[:, 1:], hidden], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        y = torch.cat([x[:, :1], y + self.decoder_pos], dim=1)
        for block in self.decoder_blocks:
            y = block(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        mask = torch.ones(n, length, device=imgs.device)
        mask[:, :keep] = 0
        mask = mask.gather(1, ids_restore)
        loss = ((pred - target).square().mean(dim=-1) * mask).sum() / mask.sum()
        return types.SimpleNamespace(loss=loss)


def peer_ratio(device: torch.device, preset: str = "tiny", rounds: int = 4) -> None:
    """DiyT (its defaults, and with the plain MAE's switches) against the timm MAE, same sizes and tokens."""
    size, batch = ModelParams(preset=preset).arch.image_size, BATCH[preset]
    imgs = torch.randn(batch, 3, size, size, device=device)
    plain = dict(norm="layernorm", masking="random", pos_embed="sincos", aggregate_layers=[])
    models = {"DiyT (DyT, block masks, hybrid, aggregation)": build_model(ModelParams(preset=preset)),
              "DiyT with the plain MAE's switches": build_model(ModelParams(preset=preset, **plain)),
              "timm MAE (timm ViT blocks)": TimmMAE(ModelParams(preset=preset).arch)}
    best = {name: float("inf") for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], step_seconds(model.to(device), imgs, iters=1))
    peer = best["timm MAE (timm ViT blocks)"]
    print(f"against a vanilla MAE from timm's ViT blocks ({preset}: {size} px, "
          f"{(size // ModelParams(preset=preset).arch.patch_size) ** 2} tokens, batch {batch}), best step time:")
    for name, model in models.items():
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"  {name:<46} {millions:5.2f} M params  {best[name]:.3f} s  = {best[name] / peer:.2f}x timm MAE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="+", default=list(BATCH), choices=list(BATCH))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    first = matmul_gflops(device)
    rows = preset_rows(args.presets, device)
    norm_ratio(device)
    peer_ratio(device)
    last = matmul_gflops(device)
    measured = [first, *(r["matmul"] for r in rows), last]
    peak = max(measured)  # the least disturbed matmul is the reference
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; matmul 2048^3 float32: "
          f"{peak:.1f} GFLOP/s (best of {', '.join(f'{m:.0f}' for m in measured)} through the run)")
    print_table(rows, peak)


if __name__ == "__main__":
    main()
