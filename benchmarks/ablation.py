"""The ablation: a plain MAE, each seed feature added alone, and the full DiyT, over several training seeds.

Every row is DiyT's own pipeline (pre-training, fine-tuning per category, evaluation with the reconstruction
scorer) on the params of `params.yaml` with the row's overrides; rows that differ only in scoring share one
training. Prints mean ± std over the seeds (dataset means over categories) and pre-training images/s per row,
and writes the JSON file the report's ablation section reads (format: `diyt.report.ablation`).

Usage (from the project root):
    python benchmarks/ablation.py                                   # synthetic default, 3 seeds
    python benchmarks/ablation.py --dataset magnetic_tile --data-path PATH --seeds 1
    python benchmarks/ablation.py --rows plain-mae diyt-full --seeds 1 --set train.pretrain.epochs=1
With `--work DIR`, a run that was stopped resumes: every training already in DIR is reused. Each row's
overrides also reproduce it as a DVC experiment: `dvc exp run -S key=value ...`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from diyt.config import KNOWN_CATEGORIES, parse_params
from diyt.data.prepare import prepare
from diyt.errors import user_errors
from diyt.io import write_json
from pipeline import dataset_params, evaluate_all, mean_of, train_all, training_key, with_overrides

PLAIN = {"model.norm": "layernorm", "model.masking": "random", "model.pos_embed": "sincos",
         "model.aggregate_layers": [], "eval.num_masks": 1}
ROWS: dict[str, tuple[str, dict[str, object]]] = {  # name: (what it is, overrides of params.yaml)
    "plain-mae": ("plain MAE (LayerNorm, random masking, sin-cos, no aggregation, one scoring pass)", PLAIN),
    "plain+dyt": ("+ DyT", {**PLAIN, "model.norm": "dyt"}),
    "plain+block-masking": ("+ block masking", {**PLAIN, "model.masking": "block"}),
    "plain+hybrid-pos": ("+ hybrid positions", {**PLAIN, "model.pos_embed": "hybrid"}),
    "plain+aggregation": ("+ feature aggregation", {**PLAIN, "model.aggregate_layers": [2, 4]}),
    "plain+complementary": ("+ complementary masks (2 passes)", {**PLAIN, "eval.num_masks": 2}),
    "diyt-full": ("full DiyT (params.yaml)", {}),
}
KEYS = ("image_auroc", "aupro", "pixel_auroc", "f1")


def summarise(name: str, overrides: dict, runs: list[dict], images_per_s: list[float]) -> dict:
    """One row of the file: the mean of each metric over seeds, and its std when there are several."""
    row: dict[str, object] = {"name": name, "overrides": overrides, "seeds": len(runs)}
    for key in KEYS:
        values = [run[key] for run in runs]
        row[key] = statistics.fmean(values)
        if len(values) > 1:
            row[f"{key}_std"] = statistics.stdev(values)
    row["train_images_per_s"] = statistics.fmean(images_per_s)
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'row':22s}" + "".join(f"{k:>17s}" for k in KEYS) + f"{'train img/s':>13s}")
    for row in rows:
        cells = "".join(f"{row[k]:10.3f} ± {row.get(k + '_std', 0.0):.3f}" for k in KEYS)
        print(f"{row['key']:22s}{cells}{row['train_images_per_s']:13.1f}")


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", choices=sorted(KNOWN_CATEGORIES))
    parser.add_argument("--data-path", default=None, help="a local copy (else it is downloaded or generated)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per row (train.seed = 0, 1, ...)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every row")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: reports/ablation.json (synthetic), else reports/ablation-<dataset>.json")
    parser.add_argument("--work", type=Path, default=None, help="keep prepared data and models here")
    args = parser.parse_args(argv)
    out = args.out or Path("reports/ablation.json" if args.dataset == "synthetic"
                           else f"reports/ablation-{args.dataset}.json")
    base = with_overrides(dataset_params(args.params, args.dataset, args.data_path, "reconstruction"), args.set)
    row_params = {name: parse_params(with_overrides(base, overrides), f"ablation row {name}")
                  for name, (_, overrides) in ((n, ROWS[n]) for n in args.rows)}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diyt-ablation-") as tmp:
        work = args.work or Path(tmp)
        first = next(iter(row_params.values()))
        dataset_dir = prepare(first.data, work / "prepared", work / "cache")
        metrics: dict[str, list[dict]] = {name: [] for name in row_params}
        speeds: dict[str, list[float]] = {name: [] for name in row_params}
        for seed in range(args.seeds):
            trainings: dict[str, tuple[Path, float]] = {}  # what decides the weights -> (models, images/s)
            for name, params in row_params.items():
                params = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
                key = training_key(params)
                if key not in trainings:
                    run_dir = work / f"seed{seed}" / key  # by what is trained: a rerun finds it whatever the row
                    print(f"seed {seed}, {name}: training", flush=True)
                    trainings[key] = (run_dir, train_all(params, dataset_dir, run_dir).pretrain_images_per_s)
                run_dir, images_per_s = trainings[key]
                results = evaluate_all(params, dataset_dir, run_dir)
                metrics[name].append(mean_of(results, KEYS))
                speeds[name].append(images_per_s)
                print(f"seed {seed}, {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[name][-1].items()),
                      flush=True)
    rows = [summarise(ROWS[name][0], ROWS[name][1], metrics[name], speeds[name]) | {"key": name}
            for name in row_params]
    print(f"\n{args.dataset}: {args.seeds} seed(s), {(time.perf_counter() - began) / 60:.1f} min in all")
    print_table(rows)
    document = {"dataset": args.dataset, "rows": [{k: v for k, v in r.items() if k != "key"} for r in rows]}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, document)
    print(f"-> {out}")


if __name__ == "__main__":
    sys.exit(main())
