"""What the benchmarks measure against: the device's own matmul speed, taken in the same run."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in `dtype`: the roof that utilisation is measured against."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        began = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best
