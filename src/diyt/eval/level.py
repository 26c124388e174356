"""The error a normal part is expected to have, read from its surroundings: the image score's yardstick.

Some normal surfaces are harder to redraw than others (a rough, grainy tile against a smooth one), and their
whole error map runs high; z-scoring per position cannot tell, for it only knows where in the frame a pixel is.
`ErrorLevel` predicts each cell's log expected error from the feature cells in a ring around it: a k x k
convolution whose central h x h taps are held at zero, so a defect no wider than the hole cannot raise its own
expectation. It is fitted after training on the train normals' own scoring errors by the exponential
likelihood e * exp(-s) + s, minimised at s = log E[e | ring]. The image score is then taken from
error / exp(level), z-scored per position with its own validation statistics. The anomaly map stays the plain
error: a defect wider than the hole would raise the level around itself and explain itself away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

WIDTH = 64  # hidden channels
BATCH, LR, WEIGHT_DECAY = 64, 1e-3, 1e-2
ERROR_FLOOR = 1e-6  # errors below it are taken as it: the likelihood wants a positive error


class ErrorLevel(nn.Module):
    """Feature maps (N, C, rows, cols) -> log expected error per cell (N, rows, cols), from a `ring` x `ring`
    window without its central `hole` x `hole` cells."""

    def __init__(self, channels: int, ring: int, hole: int, width: int = WIDTH) -> None:
        super().__init__()
        if not (ring % 2 and hole % 2 and 0 < hole < ring):
            raise ValueError(f"error level: ring {ring} and hole {hole} must be odd with hole < ring")
        self.context = nn.Conv2d(channels, width, ring, padding=ring // 2)
        self.head = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, 1, 1))
        start = (ring - hole) // 2
        keep = torch.ones(1, 1, ring, ring)
        keep[..., start:start + hole, start:start + hole] = 0
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        weight = self.context.weight * self.keep  # the hole's taps stay zero whatever the optimiser does
        hidden = F.conv2d(maps, weight, self.context.bias, padding=self.context.padding)
        return self.head(hidden)[:, 0]


def level_loss(log_level: Tensor, errors: Tensor) -> Tensor:
    """Negative log-likelihood of `errors` (N, rows, cols) under exponential laws of mean exp(log_level)."""
    return (errors.clamp_min(ERROR_FLOOR) * torch.exp(-log_level) + log_level).mean()


def fit_error_level(maps: Tensor, errors: Tensor, ring: int, hole: int, steps: int, seed: int,
                    device: torch.device | str = "cpu") -> ErrorLevel:
    """An `ErrorLevel` fitted to train normals' feature maps (N, C, rows, cols) and their scoring errors
    (N, rows, cols): AdamW on random batches of `BATCH` images, all drawn from `seed`, in float32 (bf16 autocast
    fits it ~4x faster on a CPU with AMX, and badly: twice the loss after 100 steps). Returned in eval mode on
    the CPU."""
    if len(maps) != len(errors) or maps.shape[-2:] != errors.shape[-2:]:
        raise ValueError(f"error level: {tuple(maps.shape)} maps against {tuple(errors.shape)} errors")
    with torch.random.fork_rng(devices=[]):  # the initial weights, leaving the global generator as it was
        torch.manual_seed(seed)
        level = ErrorLevel(maps.shape[1], ring, hole).to(device)
    optimizer = torch.optim.AdamW(level.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(seed)
    maps, errors = maps.float().to(device), errors.float().to(device)
    with torch.autocast(torch.device(device).type, enabled=False):
        for _ in tqdm(range(steps), desc="fit error level", unit="step", leave=False):
            idx = torch.randint(len(maps), (BATCH,), generator=generator).to(device)
            loss = level_loss(level(maps[idx]), errors[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return level.cpu().eval().requires_grad_(False)
