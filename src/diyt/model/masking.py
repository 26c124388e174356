"""Masks over the patch grid, as pure functions of a `torch.Generator`, and the index helpers that keep batches
rectangular.

A mask is a bool tensor (N, L), True = hidden, in row-major patch order. Random masking follows He et al.,
"Masked Autoencoders Are Scalable Vision Learners" (2022); block-wise masking follows BEiT (Bao et al., 2022):
rectangles at random positions and aspect ratios, here made exact so every sample hides round(ratio * L).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import Tensor

MaskingKind = Literal["block", "random"]
Grid = tuple[int, int]  # (rows, cols) of patches
Rect = tuple[int, int, int, int]  # (top, left, height, width) in patches
Masker = Callable[..., Tensor]  # masker(batch, generator=None) -> (N, L) bool

ASPECT = (0.3, 1 / 0.3)


def num_masked(num_patches: int, ratio: float) -> int:
    """round(ratio * L), kept within 1..L-1 so the loss and the encoder both have patches."""
    return min(max(round(ratio * num_patches), 1), num_patches - 1)


def random_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """MAE's per-sample random masking: (N, L) bool with exactly `num_masked` True per row."""
    noise = torch.rand(batch, num_patches, generator=generator)  # (N, L)
    hidden = noise.argsort(dim=1)[:, : num_masked(num_patches, ratio)]
    return torch.zeros(batch, num_patches, dtype=torch.bool).scatter_(1, hidden, True)


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from the torch one, so block masks are cheap and still follow `generator`."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))


def _sample_rect(grid: Grid, area: float, rng: np.random.Generator, aspect: tuple[float, float]) -> Rect:
    """A rectangle of about `area` patches at a random position and log-uniform aspect ratio (height/width)."""
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    h = min(max(round(math.sqrt(area * ratio)), 1), grid[0])
    w = min(max(round(math.sqrt(area / ratio)), 1), grid[1])
    return int(rng.integers(grid[0] - h + 1)), int(rng.integers(grid[1] - w + 1)), h, w


def _adjacent_patch(mask: np.ndarray, rng: np.random.Generator) -> Rect:
    """One hidden-to-be patch next to the hidden set (4-neighbourhood), or anywhere if none is hidden yet."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    frontier = np.flatnonzero(grown & ~mask)
    frontier = frontier if frontier.size else np.flatnonzero(~mask)
    row, col = divmod(int(rng.choice(frontier)), mask.shape[1])
    return row, col, 1, 1


def _place(mask: np.ndarray, rect: Rect, need: int) -> tuple[int, list[Rect]]:
    """Hide `rect`, trimmed to its first `need` new patches in row-major order; returns (added, rectangles)."""
    top, left, h, w = rect
    new = np.flatnonzero(~mask[top : top + h, left : left + w])
    parts = [rect]
    if new.size > need:  # the kept patches: full rows above row r, then row r up to column c
        r, c = divmod(int(new[need - 1]), w)
        parts = [p for p in [(top, left, r, w), (top + r, left, 1, c + 1)] if p[2]]
    for t, l, ph, pw in parts:
        mask[t : t + ph, l : l + pw] = True
    return min(int(new.size), need), parts


def block_rects(grid: Grid, count: int, rng: np.random.Generator, *, min_area: int = 4,
                aspect: tuple[float, float] = ASPECT, attempts: int = 20) -> tuple[np.ndarray, list[Rect]]:
    """One sample's block mask, (rows, cols) bool with exactly `count` True, and the rectangles whose union it is.

    Blocks of area uniform in [min_area, still needed] are added until the count is reached; the last one is
    trimmed to fit. If `attempts` blocks in a row add nothing, a single patch adjacent to the hidden set is added.
    """
    mask = np.zeros(grid, dtype=bool)
    rects: list[Rect] = []
    filled = 0
    while filled < count:
        need = count - filled
        for _ in range(attempts):
            rect = _sample_rect(grid, rng.uniform(min_area, max(min_area, need)), rng, aspect)
            top, left, h, w = rect
            if not mask[top : top + h, left : left + w].all():
                break
        else:
            rect = _adjacent_patch(mask, rng)
        added, parts = _place(mask, rect, need)
        filled += added
        rects += parts
    return mask, rects


def block_mask(batch: int, grid: Grid, ratio: float, generator: torch.Generator | None = None, *,
               min_area: int = 4, aspect: tuple[float, float] = ASPECT) -> Tensor:
    """Block-wise masking: (N, L) bool, each row hiding exactly `num_masked` patches in contiguous rectangles."""
    rng = _numpy_rng(generator)
    count = num_masked(grid[0] * grid[1], ratio)
    masks = [block_rects(grid, count, rng, min_area=min_area, aspect=aspect)[0].ravel() for _ in range(batch)]
    return torch.from_numpy(np.stack(masks))


def make_masker(kind: MaskingKind, grid: Grid, ratio: float) -> Masker:
    """The training masker for `model.masking`: `masker(batch, generator=None) -> (N, L) bool`."""
    factories: dict[str, Callable[[], Masker]] = {
        "block": lambda: partial(block_mask, grid=grid, ratio=ratio),
        "random": lambda: partial(random_mask, num_patches=grid[0] * grid[1], ratio=ratio),
    }
    return factories[kind]()


def complementary_masks(num_patches: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """K bool masks (K, L) partitioning the patches at random: each patch is hidden in exactly one of them."""
    if not 2 <= k <= num_patches:
        raise ValueError(f"complementary masks: k must be in 2..{num_patches}, got {k}")
    group = torch.empty(num_patches, dtype=torch.long)
    group[torch.randperm(num_patches, generator=generator)] = torch.arange(num_patches) % k
    return group[None, :] == torch.arange(k)[:, None]


def visible_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(ids_keep (N, Lv), ids_restore (N, L)) for a mask hiding the same count in every row, as MAE uses them.

    ids_keep lists the visible patches in ascending order; gathering `cat([visible, hidden])` with ids_restore
    puts tokens back in patch order.
    """
    lo, hi = mask.sum(dim=1).aminmax()
    lo, hi = int(lo), int(hi)
    if lo != hi:
        raise ValueError(f"mask: every row must hide the same number of patches, got {lo}..{hi}")
    ids_shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)  # visible first, each part in patch order
    ids_restore = ids_shuffle.argsort(dim=1)
    return ids_shuffle[:, : mask.shape[1] - lo], ids_restore


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x (N, L, D) at ids (N, M) -> (N, M, D)."""
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))
