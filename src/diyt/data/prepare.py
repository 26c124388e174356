"""The prepare stage: every configured category of the source, written in the MVTec AD layout."""

from __future__ import annotations

from pathlib import Path

from diyt.config import DataParams
from diyt.data.layout import write_category
from diyt.data.sources import load_samples
from diyt.io import atomic_dir


def prepare(data: DataParams, out: Path, cache_dir: Path) -> Path:
    """Write `out/<dataset>/<category>/` for each category; `out` is replaced whole, or not at all."""
    with atomic_dir(out) as tmp:
        for category in data.categories:
            samples = load_samples(data, category, cache_dir)
            write_category(samples, tmp / data.dataset / category, data.image_size, data.val_fraction,
                           data.split_seed, desc=f"{data.dataset}/{category}")
    return out / data.dataset
