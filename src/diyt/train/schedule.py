"""The learning-rate recipe of MAE (He et al., 2022): lr scaled by the batch, linear warmup, half-cycle cosine."""

from __future__ import annotations

import math

REFERENCE_BATCH = 256


def peak_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = base_lr * global batch / 256."""
    return base_lr * batch_size / REFERENCE_BATCH


def lr_at(step: int, *, peak: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The lr of iteration `step` (0-based): 0 → peak over `warmup_steps`, then cosine down to `min_lr` at the end.

    Warmup reaches `peak` at step == warmup_steps; the cosine reaches `min_lr` at step == total_steps.
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
