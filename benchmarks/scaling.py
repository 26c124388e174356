"""How training and evaluation time grow with the work: image size, dataset size and number of categories.

Each point is DiyT's own pipeline (pre-training, fine-tuning per category, evaluation with the params' scorer)
on a small embedded synthetic dataset, one epoch per phase, timed in one run. Prints one table per axis with
the measured seconds and their growth against the first point; asserts nothing.

Usage (from the project root): python benchmarks/scaling.py [--params params.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from diyt.config import parse_params
from diyt.data.prepare import prepare
from diyt.errors import user_errors
from pipeline import dataset_params, evaluate_all, train_all, with_overrides

SMALL = {"train.pretrain.epochs": 1, "train.finetune.epochs": 1, "train.pretrain.steps": None,
         "train.finetune.steps": None, "train.checkpoint_every": 10**6}


def timed(raw: dict, overrides: dict, work: Path, prepared: dict[str, Path]) -> dict:
    """Prepare (once per data section), train and evaluate with `overrides`; seconds of train and evaluate."""
    params = parse_params(with_overrides(raw, {**SMALL, **overrides}), "scaling point")
    data_key = json.dumps(params.data.model_dump(mode="json"), sort_keys=True)
    if data_key not in prepared:
        prepared[data_key] = prepare(params.data, work / f"prepared{len(prepared)}", work / "cache")
    dataset_dir = prepared[data_key]
    run = work / f"run{len(list(work.glob('run*')))}"
    train_s = train_all(params, dataset_dir, run).train_seconds
    began = time.perf_counter()
    evaluate_all(params, dataset_dir, run)
    return {"train_s": train_s, "eval_s": time.perf_counter() - began}


def print_axis(title: str, unit: str, points: list[tuple[float, dict]]) -> None:
    print(f"\n{title}")
    print(f"{unit:>16} {'train s':>9} {'x':>6} {'evaluate s':>11} {'x':>6}")
    first = points[0][1]
    for value, t in points:
        print(f"{value:>16g} {t['train_s']:>9.1f} {t['train_s'] / first['train_s']:>6.2f} "
              f"{t['eval_s']:>11.1f} {t['eval_s'] / first['eval_s']:>6.2f}")


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    raw = with_overrides(dataset_params(args.params, "synthetic", None, "reconstruction"), args.set)
    one = {"data.categories": ["weave"]}
    counts = {"data.synthetic.n_train": 40, "data.synthetic.n_test_good": 10, "data.synthetic.n_test_defect": 10}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diyt-scaling-") as tmp:
        work, prepared = Path(tmp), {}
        sizes = [(s, timed(raw, {**one, **counts, "model.image_size": s}, work, prepared)) for s in (128, 192, 256)]
        images = [(n, timed(raw, {**one, **{k: v * n // 40 for k, v in counts.items()}}, work, prepared))
                  for n in (40, 80, 160)]
        categories = ["weave", "stone", "nut"]
        per_category = [(c, timed(raw, {**counts, "data.categories": categories[:c]}, work, prepared))
                        for c in (1, 2, 3)]
    print(f"one epoch per phase, {raw['model']['target']} target, patch {raw['model']['patch_size']}; "
          f"{(time.perf_counter() - began) / 60:.1f} min in all")
    print_axis("image size (1 category, 40 train + 20 test images)", "model px", sizes)
    print_axis("dataset size (1 category; test images = half the train images)", "train images", images)
    print_axis("categories (40 train + 20 test images each)", "categories", per_category)


if __name__ == "__main__":
    sys.exit(main())
