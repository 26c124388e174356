"""A defect head: a small segmentation network over the backbone's cells, trained on synthetic defects.

The reconstruction error measures how far each cell lies from what normal cells look like there. A defect that
is a wide band of changed texture on a part (Magnetic Tile's uneven tiles: a step in the grinding across the
tile) looks normal cell by cell; what gives it away is that it does not match the rest of its own part. The
defect head learns that from the train normals alone, as DRAEM (Zavrtanik et al., ICCV 2021) and CutPaste (Li
et al., CVPR 2021) do: each train image gets a synthetic defect (a band across it or a patch in it, filled with
another image's content there, its own content at another brightness and contrast, or its own content blurred or
sharpened), and the head learns to segment it from the image's feature map. It sees each cell beside the mean of
its row and of its whole image, through dilated convolutions that span the grid, so it can compare a cell with
the rest of its part. Its map, z-scored per position against the validation normals like the reconstruction's,
is added to that map with weight `eval.defect_head_weight`; the image score is left as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from diyt.eval.scoring import smooth
from diyt.model.backbone import FeatureSource

DILATIONS = (1, 2, 4, 8, 1)  # a 3x3 stack whose field spans a 16 x 16 grid
WIDTH = 64
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
DEFECT_FRACTION = 0.85  # of the synthetic images that get a defect (the rest teach it that normal stays dark)
BAND_FRACTION = 0.5  # of the defects that are bands across the image (the rest are patches)


class DefectHead(nn.Module):
    """Cells (N, C, rows, cols) -> the probability that each cell is part of a defect (N, rows, cols)."""

    def __init__(self, channels: int, width: int = WIDTH) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3 * channels, width, 1)
        self.body = nn.Sequential(*(nn.Sequential(nn.Conv2d(width, width, 3, padding=d, dilation=d),
                                                  nn.GroupNorm(8, width), nn.GELU()) for d in DILATIONS))
        self.out = nn.Conv2d(width, 1, 1)

    def logits(self, cells: Tensor) -> Tensor:
        x = cells.float()
        x = torch.cat([x, x - x.mean(dim=3, keepdim=True), x - x.mean(dim=(2, 3), keepdim=True)], dim=1)
        return self.out(self.body(self.inp(x)))[:, 0]

    def forward(self, cells: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(cells))


def synthesize(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Normalised images (N, 3, H, W) -> the same with one synthetic defect each (most of them) and its masks
    (N, H, W) of 0 and 1. Sizes scale with H (bands 20-100 px tall at 256 px, patches 8-56 px a side); `generator`
    makes every draw, so a seed gives the same defects."""
    n, _, h, w = images.shape
    out, masks = images.clone(), torch.zeros(n, h, w)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    def integer(lo: int, hi: int) -> int:  # lo <= value < hi
        return int(torch.randint(lo, max(hi, lo + 1), (), generator=generator))

    scale = h / 256
    for i in range(n):
        if uniform(0, 1) >= DEFECT_FRACTION:
            continue
        if uniform(0, 1) < BAND_FRACTION:
            rows = max(1, round(integer(20, 100) * scale))
            cols = w if uniform(0, 1) < 0.6 else integer(w // 2, w + 1)
        else:
            rows, cols = (max(1, round(integer(8, 56) * scale)) for _ in range(2))
        rows, cols = min(rows, h), min(cols, w)
        top, left = integer(0, h - rows + 1), integer(0, w - cols + 1)
        region = (slice(None), slice(top, top + rows), slice(left, left + cols))
        how = uniform(0, 1)
        if how < 0.4:  # another image's content there
            other = (i + integer(1, n)) % n if n > 1 else i
            fill = images[other] if other != i else images[i].flip(-1)
        elif how < 0.7:  # its own content, other gain and offset
            fill = images[i] * uniform(0.75, 1.3) + uniform(-0.25, 0.25)
        else:  # its own content, blurred or sharpened
            blurred = smooth(images[i], uniform(0.8, 2.5))
            fill = blurred if uniform(0, 1) < 0.5 else images[i] + uniform(0.5, 1.5) * (images[i] - blurred)
        out[i][region] = fill[region]
        masks[i][region[1:]] = 1.0
    return out, masks


def fit_defect_head(source: FeatureSource, batches: list[Tensor], copies: int, steps: int, batch_size: int,
                    seed: int, device: torch.device) -> DefectHead:
    """Train a `DefectHead` on `copies` synthetic versions of the train normals (`batches` of normalised images):
    their standardised feature maps against the share of each cell the defect covers, binary cross-entropy, AdamW
    with a cosine schedule. Deterministic for a seed on a given device."""
    generator = torch.Generator().manual_seed(seed)
    grid = source.grid_size
    cells, targets = [], []
    with torch.no_grad():
        for _ in range(copies):
            for batch in tqdm(batches, desc="defect head: synthetic defects", unit="batch", leave=False):
                images, masks = synthesize(batch, generator)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    cells.append(source.feature_map(images.to(device)).float().cpu())
                targets.append(F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0])
    cells, targets = torch.cat(cells), torch.cat(targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = DefectHead(cells.shape[1]).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    head.train()
    for _ in tqdm(range(steps), desc="defect head: training", unit="step", leave=False):
        pick = torch.randint(len(cells), (min(batch_size, len(cells)),), generator=generator)
        x, y = cells[pick].to(device), targets[pick].to(device)
        if torch.rand((), generator=generator) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.binary_cross_entropy_with_logits(head.logits(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.eval().requires_grad_(False)
