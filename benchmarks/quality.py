"""Detection quality on a real dataset: DiyT's own pipeline end to end, its reconstruction and the kNN reference.

Prepares the dataset (the seeded 80/20 split of defect-free Magnetic Tile images, every defective one in test),
pre-trains and fine-tunes with the defaults of params.yaml, evaluates with `eval.scorer: both`, and prints one
table per scorer (overall and per defect type), then as its last line one JSON object:
    {"image_auroc", "pixel_auroc", "aupro", "f1", "train_minutes", "knn": {...}, ...}  (DiyT's reconstruction)
`--set eval.scorer=reconstruction` leaves out the kNN reference (and "knn"), whose greedy coreset is slow on a
fine grid; with `--work` a second run with another scorer reuses the trained models.

Usage (from the project root):
    python benchmarks/quality.py --dataset magnetic_tile --data-path PATH/TO/magnetic_tile   # a local copy
    python benchmarks/quality.py --dataset magnetic_tile                                     # downloads it
    python benchmarks/quality.py --dataset magnetic_tile --data-path PATH --minutes 30 --set train.finetune.epochs=4
`--minutes` is the training budget: the run says whether pre-training, fine-tuning and fitting the error level,
the residual whitening and the defect head (`eval.error_level`, `eval.error_whitening`, `eval.defect_head`,
fitted to the train normals in the evaluation) stayed within it.
`--set key=value` overrides any param (as `dvc exp run -S`). `--work DIR` keeps the prepared data and models.
`--set data.split_by=part` splits by tile: the split by image puts most test tiles' twins (the same tile under
another of the dataset's six setups) in train (README, "The split by image puts the same tiles in train and test").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from diyt.config import KNOWN_CATEGORIES, Params, parse_params
from diyt.data.prepare import prepare
from diyt.errors import user_errors
from diyt.train.distributed import pick_device
from pipeline import dataset_params, evaluate_all, mean_of, train_all, with_overrides

KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1")


def quality_params(base: Path, dataset: str, data_path: str | None, overrides: list[str]) -> Params:
    """params.yaml on `dataset` (all its categories, no 90-degree rotations), both scorers, then the overrides."""
    raw = with_overrides(dataset_params(base, dataset, data_path, scorer="both"), overrides)
    return parse_params(raw, "quality params")


def table(title: str, rows: dict[str, dict]) -> str:
    """A fixed-width table: one row per (category, scorer), the four headline metrics and per-type AUROC."""
    types = sorted({t for m in rows.values() for t in m["per_defect_type_auroc"]})
    head = f"{'':26s}" + "".join(f"{k:>13s}" for k in KEYS) + "".join(f"{t[:10]:>11s}" for t in types)
    lines = [title, head]
    for name, m in rows.items():
        per_type = m["per_defect_type_auroc"]
        lines.append(f"{name:26s}" + "".join(f"{m[k]:13.3f}" for k in KEYS)
                     + "".join(f"{per_type[t]:11.3f}" if t in per_type else f"{'':11s}" for t in types))
    return "\n".join(lines)


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="magnetic_tile", choices=sorted(KNOWN_CATEGORIES))
    parser.add_argument("--data-path", default=None, help="a local copy (else it is downloaded)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget, minutes")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=None, help="keep prepared data and models here")
    args = parser.parse_args(argv)
    params = quality_params(args.params, args.dataset, args.data_path, args.set)
    with tempfile.TemporaryDirectory(prefix="diyt-quality-") as tmp:
        work = args.work or Path(tmp)
        dataset_dir = prepare(params.data, work / "prepared", work / "cache")
        model_minutes = train_all(params, dataset_dir, work).train_seconds / 60
        results = evaluate_all(params, dataset_dir, work)
        device = pick_device(params.train.device)
    level_minutes = sum(m["error_level_fit_seconds"] + m["whitening_fit_seconds"] + m["defect_head_fit_seconds"]
                        for m in results.values()) / 60
    train_minutes = model_minutes + level_minutes
    scorer = "kNN" if params.eval.scorer == "knn" else "reconstruction"
    references = {c: m["reference"]["knn"] for c, m in results.items() if "reference" in m}  # scorer: both
    rows = {}
    for category, m in results.items():
        rows[f"{category} {scorer}"] = m
        if category in references:
            rows[f"{category} kNN reference"] = references[category]
    print(table(f"{args.dataset}: {params.model.target} target, {params.model.arch.image_size} px, "
                f"trained {train_minutes:.1f} min ({model_minutes:.1f} the models, {level_minutes:.1f} fitting the error "
                f"level, whitening and defect head; "
                f"budget {args.minutes:g})", rows))
    summary = {**mean_of(results, KEYS), "train_minutes": round(train_minutes, 2),
               "within_budget": train_minutes <= args.minutes}
    if references:
        summary["knn"] = mean_of(references, KEYS)
    print(json.dumps({**summary, "device": str(device), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    sys.exit(main())
