"""DiyT against the field's most used detector, anomalib's PatchCore, with the same backbone weights, on the same
split and in the same run: image AUROC, AUPRO, pixel AUROC, F1, fit time and inference images/s side by side.

PatchCore (anomalib, a benchmark-only dependency: `pip install -r requirements-bench.txt`) runs as anomalib
builds it (3x3 average-pooled features of the same two EfficientNet-Lite0 layers DiyT uses, k-center-greedy
coreset, nearest-neighbour patch scores, its neighbourhood-reweighted image score, Gaussian-blurred map,
sigma 4) on the images DiyT sees (`model.image_size`, the same normalisation). Its backbone gets DiyT's offline
ImageNet weights, so no download happens. Every detector is measured with DiyT's metric code, F1 at a
threshold from the validation normals.

Usage (from the project root):
    python benchmarks/patchcore.py                                     # the synthetic default
    python benchmarks/patchcore.py --dataset magnetic_tile --data-path PATH --sampler diyt
Prints one table per category and the mean, and as its last line a JSON object of the means.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diyt.bundle import load_trained
from diyt.config import KNOWN_CATEGORIES, Params, parse_params
from diyt.data.dataset import AnomalyDataset
from diyt.data.prepare import prepare
from diyt.errors import DiytError, user_errors
from diyt.eval import metrics
from diyt.eval.evaluate import BatchScorer, reconstruction_scorer, score_dataset
from diyt.eval.knn import greedy_coreset
from diyt.eval.scoring import ScoringConfig, Scores
from diyt.eval.thresholds import image_threshold
from diyt.model.backbone import load_backbone
from pipeline import dataset_params, evaluate_all, mean_of, train_all, with_overrides

KEYS = ("image_auroc", "aupro", "pixel_auroc", "f1")


def patchcore(params: Params) -> torch.nn.Module:
    """anomalib's PatchCore on DiyT's backbone and feature layers, with DiyT's (offline) backbone weights."""
    try:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    except ImportError:
        raise DiytError("anomalib is not installed; pip install -r requirements-bench.txt") from None
    layers = list(params.model.feature_layers)
    model = PatchcoreModel(layers=layers, backbone=params.model.backbone, pre_trained=False)
    model.feature_extractor.feature_extractor.load_state_dict(
        load_backbone(params.model.backbone, layers).state_dict())
    return model


def fit(model: torch.nn.Module, train: AnomalyDataset, batch_size: int, coreset: float, sampler: str) -> float:
    """The memory bank from the train normals, k-center-greedy subsampled by anomalib's `KCenterGreedy` or by
    DiyT's `greedy_coreset` (the same selection on a 128-d projection, several times faster on a CPU); returns
    the seconds it took."""
    began = time.perf_counter()
    model.train()
    for start in range(0, len(train), batch_size):
        model(torch.stack([train[i]["image"] for i in range(start, min(start + batch_size, len(train)))]))
    if sampler == "anomalib":
        model.subsample_embedding(coreset)
    else:
        cells = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        model.memory_bank = cells[greedy_coreset(cells, max(1, math.ceil(coreset * len(cells))))].contiguous()
    model.eval()
    return time.perf_counter() - began


def patchcore_scorer(model: torch.nn.Module, out_size: int) -> BatchScorer:
    def score(images: torch.Tensor) -> Scores:
        with torch.no_grad():
            out = model(images)
        maps = F.interpolate(out.anomaly_map, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return Scores(out.pred_score.flatten(), maps[:, 0], torch.empty(len(images), 0))
    return score


def throughput(score: BatchScorer, dataset: AnomalyDataset, batch_size: int) -> tuple[Scores, float]:
    """The scores of every image of `dataset` and images/s."""
    began = time.perf_counter()
    scores = score_dataset(score, dataset, batch_size, "score")
    return scores, len(dataset) / (time.perf_counter() - began)


def measure(score: BatchScorer, val: AnomalyDataset, test: AnomalyDataset, params: Params,
            out_size: int) -> tuple[dict, float]:
    """(metrics, test images/s) of one scorer: the image threshold from the validation normals (for F1)."""
    val_scores, _ = throughput(score, val, params.eval.batch_size)
    test_scores, images_per_s = throughput(score, test, params.eval.batch_size)
    masks = np.stack([test.mask(i, out_size) for i in range(len(test))])
    threshold = image_threshold(val_scores.score.numpy(), params.eval.threshold, params.eval.threshold_quantile,
                                params.eval.threshold_k)
    result = metrics.summarize(test.labels.numpy(), test_scores.score.numpy(), masks,
                               test_scores.anomaly_map.numpy(), threshold)
    return result, images_per_s


def print_table(title: str, rows: dict[str, dict]) -> None:
    print(title)
    print(f"{'':24s}" + "".join(f"{k:>13s}" for k in KEYS) + f"{'fit s':>9s}{'test img/s':>12s}")
    for name, row in rows.items():
        cells = [f"{row[k]:13.3f}" for k in KEYS]
        cells += [f"{row[k]:{w}.1f}" if row.get(k) is not None else f"{'–':>{w}s}"
                  for k, w in (("fit_seconds", 9), ("images_per_s", 12))]
        print(f"{name:24s}" + "".join(cells))


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", choices=sorted(KNOWN_CATEGORIES))
    parser.add_argument("--data-path", default=None, help="a local copy (else it is downloaded or generated)")
    parser.add_argument("--coreset", type=float, default=0.01, help="PatchCore's coreset sampling ratio (its "
                        "paper's 1 %% by default; anomalib's 10 %% takes about half an hour per synthetic category "
                        "on 2 CPU cores)")
    parser.add_argument("--sampler", choices=["anomalib", "diyt"], default="anomalib",
                        help="the coreset selection: anomalib's KCenterGreedy, or DiyT's faster greedy_coreset")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=None, help="keep prepared data and models here")
    args = parser.parse_args(argv)
    params = parse_params(with_overrides(dataset_params(args.params, args.dataset, args.data_path, "both"),
                                         args.set), "patchcore benchmark params")
    if params.model.target != "features":
        raise DiytError("model.target: PatchCore needs the backbone DiyT reconstructs; use the feature target")
    device, out_size = torch.device("cpu"), params.data.image_size  # metrics at the prepared (mask) resolution
    size, normalize = params.model.arch.image_size, params.data.normalize
    config = ScoringConfig.from_params(params.eval)
    names = ("DiyT reconstruction", "DiyT kNN reference", "PatchCore (anomalib)")
    per_category: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="diyt-patchcore-") as tmp:
        work = args.work or Path(tmp)
        dataset_dir = prepare(params.data, work / "prepared", work / "cache")
        diyt_fit = train_all(params, dataset_dir, work).train_seconds
        diyt = evaluate_all(params, dataset_dir, work)
        for category in params.data.categories:
            val, test, train = (AnomalyDataset(dataset_dir / category, [split], size, normalize)
                                for split in ("val", "test", "train"))
            model = load_trained(work / f"models/{category}", device).model
            _, diyt_speed = throughput(reconstruction_scorer(model, config, out_size, device, normalize), test,
                                       params.eval.batch_size)
            pc = patchcore(params)
            fit_seconds = fit(pc, train, params.eval.batch_size, args.coreset, args.sampler)
            pc_metrics, pc_speed = measure(patchcore_scorer(pc, out_size), val, test, params, out_size)
            per_category[category] = {
                names[0]: {**diyt[category], "images_per_s": diyt_speed},
                names[1]: diyt[category]["reference"]["knn"],
                names[2]: {**pc_metrics, "images_per_s": pc_speed, "fit_seconds": fit_seconds}}
            print_table(f"\n{args.dataset} / {category}", per_category[category])
    mean = {}
    for name in names:
        rows = {c: per_category[c][name] for c in per_category}
        mean[name] = mean_of(rows, KEYS)
        speeds = [r["images_per_s"] for r in rows.values() if r.get("images_per_s") is not None]
        mean[name]["images_per_s"] = sum(speeds) / len(speeds) if speeds else None
        fits = [r["fit_seconds"] for r in rows.values() if r.get("fit_seconds") is not None]
        mean[name]["fit_seconds"] = sum(fits) if fits else None
    mean[names[0]]["fit_seconds"] = diyt_fit  # pre-training and every fine-tuning
    print_table(f"\n{args.dataset}: mean over {len(per_category)} categories; fit s = the whole fit (DiyT: "
                f"pre-training + fine-tunings; PatchCore: every memory bank, coreset {args.coreset:g} by "
                f"{args.sampler}'s sampler)", mean)
    print(json.dumps({"dataset": args.dataset, "coreset": args.coreset, "sampler": args.sampler,
                      "threads": torch.get_num_threads(), **{name: mean[name] for name in names}}))


if __name__ == "__main__":
    sys.exit(main())
