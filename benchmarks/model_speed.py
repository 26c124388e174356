"""Training speed of the MAE-DyT model: forward+backward images/s per preset, the DyT / LayerNorm step-time
ratio at equal size, and model FLOP utilisation against a plain matmul measured in the same run.

Prints a table, asserts nothing. Times are the best of a few steps, so other load on the machine shows as
less noise. Usage: python benchmarks/model_speed.py [--device cpu|cuda] [--presets tiny small seed]
"""

from __future__ import annotations

import argparse
import time

import torch

from diyt.config import ModelParams
from diyt.model import build_model, forward_flops
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
    last = matmul_gflops(device)
    measured = [first, *(r["matmul"] for r in rows), last]
    peak = max(measured)  # the least disturbed matmul is the reference
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; matmul 2048^3 float32: "
          f"{peak:.1f} GFLOP/s (best of {', '.join(f'{m:.0f}' for m in measured)} through the run)")
    print_table(rows, peak)


if __name__ == "__main__":
    main()
