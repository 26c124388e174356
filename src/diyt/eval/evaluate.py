"""Evaluate one category: score validation normals (thresholds) and the test set (metrics, curves, maps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from diyt.config import EvalParams
from diyt.data.dataset import AnomalyDataset, Normalize, denormalize
from diyt.data.images import read_image
from diyt.data.layout import Row
from diyt.errors import DataError
from diyt.eval import metrics
from diyt.eval.defect_head import DefectHead, fit_defect_head
from diyt.eval.knn import cell_features, fit_bank, knn_scores
from diyt.eval.level import ErrorLevel, fit_error_level
from diyt.eval.normalize import PositionStats, normalize_leave_one_out, normalize_maps, position_stats
from diyt.eval.scoring import (Scores, ScoringConfig, cell_error, image_scores, partitions, reconstruct,
                               score_images)
from diyt.eval.whiten import ResidualWhitening, fit_whitening
from diyt.eval.thresholds import image_threshold, pixel_threshold
from diyt.model import MaskedAutoencoder
from diyt.model.backbone import FeatureSource
from diyt.model.map_cache import MapCache


@dataclass(frozen=True)
class Evaluation:
    """Everything the evaluate stage writes, as arrays: test rows in manifest order."""

    rows: list[Row]
    labels: np.ndarray  # (N,) 0/1
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, H, W) float32
    masks: np.ndarray  # (N, H, W) uint8
    images: np.ndarray  # (N, h, w, 3) uint8 model input
    reconstructions: np.ndarray  # (N, h, w, 3) uint8
    val_scores: np.ndarray
    image_threshold: float
    pixel_threshold: float
    metrics: dict
    position_stats: PositionStats | None = None  # (H, W) maps the test maps were z-scored with, if any
    memory_bank: torch.Tensor | None = None  # (m, C) when the maps are the kNN scorer's
    error_level: ErrorLevel | None = None  # when the image scores are the errors against their expected level
    score_stats: PositionStats | None = None  # (H, W) what those score maps were z-scored with, if any
    level_seconds: float | None = None  # wall time fitting the error level (part of the training's time)
    whitening: ResidualWhitening | None = None  # when the errors are the residuals whitened per position
    whitening_seconds: float | None = None  # wall time fitting it (part of the training's time)
    defect_head: DefectHead | None = None  # when a defect head's map is added to the maps
    head_stats: PositionStats | None = None  # (H, W) what its maps were z-scored with
    head_seconds: float | None = None  # wall time training it (part of the training's time)


BatchScorer = Callable[[torch.Tensor], Scores]  # normalised images (N, 3, h, w) -> Scores on the CPU


def image_batches(dataset: AnomalyDataset, batch_size: int) -> list[torch.Tensor]:
    """The normalised images of `dataset` in order, in batches (N, 3, h, w)."""
    return [batch["image"] for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)]


def score_dataset(score: BatchScorer, dataset: AnomalyDataset, batch_size: int, desc: str) -> Scores:
    """Score every image of `dataset` in batches; results on the CPU in dataset order."""
    return score_batches(score, image_batches(dataset, batch_size), desc)


def score_batches(score: BatchScorer, batches: list[torch.Tensor], desc: str) -> Scores:
    """Score a list of input batches; results on the CPU, concatenated in order."""
    out = [score(batch) for batch in tqdm(batches, desc=desc, unit="batch", leave=False)]
    return Scores(*(None if ts[0] is None else torch.cat(ts) for ts in zip(*out)))


def scorer_inputs(model: MaskedAutoencoder, dataset: AnomalyDataset, batch_size: int,
                  device: torch.device) -> list[torch.Tensor]:
    """The batches every scorer takes for `dataset`: its normalised images, or for a feature source their
    feature maps, computed once so that the reconstruction and the kNN reference share the backbone's pass
    (`FeatureSource` takes its own maps in place of images)."""
    images = image_batches(dataset, batch_size)
    if model.source.is_pixels:
        return images
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return [model.source.feature_map(batch.to(device)).float().cpu()
                for batch in tqdm(images, desc=f"features {dataset.root.name}", unit="batch", leave=False)]


def reconstruction_scorer(model: MaskedAutoencoder, config: ScoringConfig, out_size: int, device: torch.device,
                          normalize: Normalize | None = None, level: ErrorLevel | None = None,
                          whitening: ResidualWhitening | None = None, head: DefectHead | None = None) -> BatchScorer:
    """DiyT's own scorer: multi-mask reconstruction error (`score_batch` with the config's partitions)."""
    parts = partitions(model.num_patches, config)
    return partial(score_batch, model, config=config, out_size=out_size, parts=parts, device=device,
                   normalize=normalize, level=level, whitening=whitening, head=head)


def train_cells(model: MaskedAutoencoder, train: AnomalyDataset, batch_size: int, device: torch.device,
                map_cache: MapCache | None = None) -> torch.Tensor:
    """The train normals' cells (N, C, rows, cols) on the CPU: for a backbone its standardised maps (from
    `map_cache` when the training stages left them there), for pixels each patch's values (`cell_features`)."""
    if isinstance(model.source, FeatureSource):
        return model.source.standardized((map_cache or MapCache()).raw_maps(model.source, train, device))
    with torch.no_grad():
        return torch.cat([cell_features(model, batch.to(device)).float().cpu() for batch in
                          tqdm(image_batches(train, batch_size), desc="train cells", unit="batch", leave=False)])


def train_reconstructions(model: MaskedAutoencoder, maps: torch.Tensor, config: ScoringConfig,
                          params: EvalParams, device: torch.device) -> torch.Tensor:
    """The R partitions' reconstructions (R, N, C, h, w), on the CPU, of the train normals' feature maps
    (`train_cells`): computed once for both the residual whitening and the error level."""
    parts = partitions(model.num_patches, config)
    batches = []
    for batch in tqdm(maps.split(params.batch_size), desc="train reconstructions", unit="batch", leave=False):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            batches.append(torch.stack([reconstruct(model, batch.to(device), masks)[0].float()
                                        for masks in parts]).cpu())
    return torch.cat(batches, dim=1)


def fit_whitening_of(maps: torch.Tensor, recons: torch.Tensor, params: EvalParams) -> ResidualWhitening:
    """The residual whitening (`diyt.eval.whiten`) fitted to the train normals' own scoring residuals: each
    cell's reconstruction from the R partitions (`train_reconstructions`), averaged, minus its target."""
    return fit_whitening((recons - maps).mean(dim=0), params.whitening_shrinkage)


def fit_level(maps: torch.Tensor, recons: torch.Tensor, config: ScoringConfig, params: EvalParams,
              device: torch.device, whitening: ResidualWhitening | None = None) -> ErrorLevel:
    """The error level (`diyt.eval.level`) fitted to the train normals' feature maps and their own scoring
    errors (from `train_reconstructions`: each cell's error, averaged over the R partitions, before upsampling
    and smoothing)."""
    whitening = whitening.to(device) if whitening is not None else None
    errors = []
    with torch.no_grad():
        for target, batch in zip(maps.split(params.batch_size), recons.split(params.batch_size, dim=1)):
            target = target.to(device)
            errors.append(torch.stack([cell_error(target, recon.to(device), config, whitening) for recon in batch])
                          .mean(dim=0).cpu())
    return fit_error_level(maps, torch.cat(errors), params.level_ring, params.level_hole, params.level_steps,
                           params.seed, device)


def knn_scorer(model: MaskedAutoencoder, train: AnomalyDataset, config: ScoringConfig, out_size: int,
               coreset: float, batch_size: int, device: torch.device, map_cache: MapCache | None = None,
               cells: torch.Tensor | None = None) -> tuple[BatchScorer, torch.Tensor]:
    """The kNN reference: a memory bank of the train normals' cells (`train_cells`, unless the caller holds
    them), and the scorer that uses it."""
    cells = train_cells(model, train, batch_size, device, map_cache) if cells is None else cells
    bank = fit_bank(cells, coreset, config.seed).to(device)
    return partial(knn_scores, model, bank=bank, config=config, out_size=out_size, device=device), bank


def score_batch(model: MaskedAutoencoder, images: torch.Tensor, config: ScoringConfig, out_size: int,
                parts: torch.Tensor, device: torch.device, normalize: Normalize | None = None,
                level: ErrorLevel | None = None, whitening: ResidualWhitening | None = None,
                head: DefectHead | None = None) -> Scores:
    """Score one batch of images (N, 3, h, w) normalised as `normalize` says, on `device` (bf16 autocast on
    CUDA), the image scores against an error `level` if given, the errors whitened by `whitening` if given, with
    a defect `head`'s map if given; results on the CPU.

    The one scoring call of both the evaluation and `diyt predict`, so the two agree bit for bit.
    """
    level = level.to(device) if level is not None else None
    whitening = whitening.to(device) if whitening is not None else None
    head = head.to(device) if head is not None else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        scores = score_images(model, images.to(device), config, out_size, parts, normalize, level, whitening,
                              head)
    return Scores(*(None if t is None else t.float().cpu() for t in scores))


def _to_uint8(images: torch.Tensor, normalize: str) -> np.ndarray:
    """(N, 3, h, w) normalised -> (N, h, w, 3) uint8."""
    pixels = denormalize(images, normalize).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def _feature_rgb(maps: torch.Tensor) -> np.ndarray:
    """Feature maps (N, C, h, w) -> (N, h, w, 3) uint8: their 3 principal components over all cells, each
    stretched from its 1st to 99th percentile, so a reconstructed feature map can be looked at."""
    cells = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).double()  # (N*h*w, C)
    centred = cells - cells.mean(dim=0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    proj = centred @ vectors[:, -3:].flip(-1)  # (N*h*w, 3)
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).mul(255).round().to(torch.uint8)
    return rgb.view(maps.shape[0], maps.shape[2], maps.shape[3], 3).numpy()


def evaluate_category(model: MaskedAutoencoder, category_dir: Path, normalize: str, params: EvalParams,
                      device: torch.device, out_size: int | None = None,
                      map_cache: MapCache | None = None) -> Evaluation:
    """Thresholds from the validation normals only; metrics on the test split at the prepared resolution.

    `params.scorer` picks the scorer whose maps are written; with `both`, the kNN reference's metrics are added
    under `reference.knn` of the reconstruction's.
    """
    size = model.arch.image_size
    config = ScoringConfig.from_params(params)
    val = AnomalyDataset(category_dir, ["val"], size, normalize)
    test = AnomalyDataset(category_dir, ["test"], size, normalize)
    if len(val) == 0:
        raise DataError(f"{category_dir}: no validation images to choose thresholds on; raise data.val_fraction")
    out_size = out_size or _prepared_size(test)
    masks = np.stack([test.mask(i, out_size) for i in range(len(test))])  # (N, H, W), read once for any scorer
    bank = knn = level = cells = whitening = head = None
    fit = params.scorer != "knn" and params.error_level == "context"
    whiten = params.scorer != "knn" and params.error_whitening == "position"
    heads = params.scorer != "knn" and params.defect_head == "synthetic"
    if params.scorer != "reconstruction" or fit or whiten or heads:
        train = AnomalyDataset(category_dir, ["train"], size, normalize)
    if params.scorer != "reconstruction" or fit or whiten:  # all read the train cells: computed (or read) once
        cells = train_cells(model, train, params.batch_size, device, map_cache)
    if params.scorer != "reconstruction":
        knn, bank = knn_scorer(model, train, config, out_size, params.knn_coreset, params.batch_size, device,
                               cells=cells)
    level_seconds = whitening_seconds = head_seconds = None
    if (whiten or fit or heads) and not isinstance(model.source, FeatureSource):  # config validation refuses it
        raise DataError("eval.error_whitening: it whitens the feature residual and model.target is pixels; set it "
                        "to none" if whiten else "eval.error_level: the error level reads the backbone's feature "
                        "cells and model.target is pixels; set it to none" if fit else "eval.defect_head: it "
                        "segments the backbone's feature cells and model.target is pixels; set it to none")
    if whiten or fit:
        began = time.perf_counter()
        recons = train_reconstructions(model, cells, config, params, device)  # counted in the first fit's seconds
        if whiten:
            whitening = fit_whitening_of(cells, recons, params)
            whitening_seconds = time.perf_counter() - began
            began = time.perf_counter()
        if fit:
            level = fit_level(cells, recons, config, params, device, whitening)
            level_seconds = time.perf_counter() - began
    if heads:
        began = time.perf_counter()
        head = fit_defect_head(model.source, image_batches(train, params.batch_size), params.defect_head_copies,
                               params.defect_head_steps, params.batch_size, params.seed, device)
        head_seconds = time.perf_counter() - began
    inputs = {split: scorer_inputs(model, data, params.batch_size, device) for split, data in
              (("val", val), ("test", test))}
    if params.scorer == "knn":
        return _evaluate(knn, inputs, model, val, test, masks, normalize, params, category_dir, bank)
    ev = _evaluate(reconstruction_scorer(model, config, out_size, device, normalize, level, whitening, head),
                   inputs, model, val, test, masks, normalize, params, category_dir, level=level)
    # wall time: the stage's timing records it, not metrics.json
    ev = replace(ev, level_seconds=level_seconds, whitening=whitening, whitening_seconds=whitening_seconds,
                 defect_head=head, head_seconds=head_seconds)
    if knn is not None:
        reference = _evaluate(knn, inputs, model, val, test, masks, normalize, params, category_dir, bank).metrics
        ev.metrics["reference"] = {"knn": {k: v for k, v in reference.items() if k in REFERENCE_KEYS}}
    return ev


REFERENCE_KEYS = ("image_auroc", "image_ap", "f1", "f1_max", "pixel_auroc", "aupro", "per_defect_type_auroc")


def _evaluate(score: BatchScorer, inputs: dict[str, list[torch.Tensor]], model: MaskedAutoencoder,
              val: AnomalyDataset, test: AnomalyDataset, masks: np.ndarray, normalize: str, params: EvalParams,
              category_dir: Path, bank: torch.Tensor | None = None, level: ErrorLevel | None = None) -> Evaluation:
    """One scorer on the validation normals (thresholds, map statistics) and the test split (metrics);
    `inputs` holds both splits' batches (`scorer_inputs`)."""
    val_scores = score_batches(score, inputs["val"], "score val")
    test_scores = score_batches(score, inputs["test"], "score test")
    stats = score_stats = head_stats = None
    if params.normalize_maps == "position":
        (stats, score_stats, head_stats), val_scores, test_scores = _normalize_by_position(
            val_scores, test_scores, params, category_dir)
    t_image = image_threshold(val_scores.score.numpy(), params.threshold, params.threshold_quantile,
                              params.threshold_k)
    t_pixel = pixel_threshold(val_scores.anomaly_map.numpy(), params.threshold, params.threshold_quantile,
                              params.threshold_k)
    labels = test.labels.numpy()
    maps = test_scores.anomaly_map.numpy().astype(np.float32)
    scores = test_scores.score.numpy()
    try:
        summary = metrics.summarize(labels, scores, masks, maps, t_image)
        per_type = metrics.per_defect_type_auroc(labels, scores, [r.defect_type for r in test.rows])
    except DataError as err:
        raise DataError(f"{category_dir}: {err}") from None
    recon = test_scores.reconstruction
    recon_images = _to_uint8(recon, normalize) if model.source.is_pixels else _feature_rgb(recon)
    summary.update(pixel_threshold=t_pixel, per_defect_type_auroc=per_type,
                   num_test_normal=int((labels == 0).sum()), num_test_defective=int(labels.sum()),
                   num_val=len(val))
    return Evaluation(test.rows, labels, scores, maps, masks, test.images.permute(0, 2, 3, 1).numpy(),
                      recon_images, val_scores.score.numpy(), t_image, t_pixel, summary, stats, bank, level,
                      score_stats, head_stats=head_stats)


def _normalize_by_position(val: Scores, test: Scores, params: EvalParams, category_dir: Path
                           ) -> tuple[tuple[PositionStats, PositionStats | None, PositionStats | None], Scores,
                                      Scores]:
    """Maps z-scored per pixel: test against all validation maps, each validation map leave-one-out; a defect
    head's maps likewise against their own, then added with `params.defect_head_weight`; rescored from the
    z-scored score maps, which have their own statistics when they are not the anomaly maps."""
    if len(val.score) < 3:
        raise DataError(f"{category_dir}: eval.normalize_maps 'position' needs at least 3 validation images, "
                        f"got {len(val.score)}; raise data.val_fraction or set it to 'none'")

    def z_scored(val_maps: torch.Tensor, test_maps: torch.Tensor) -> tuple[PositionStats, torch.Tensor, torch.Tensor]:
        stats = position_stats(val_maps, params.normalize_std_floor)
        return (stats, normalize_leave_one_out(val_maps, params.normalize_std_floor),  # (N_val, H, W)
                normalize_maps(test_maps, stats))  # (N_test, H, W)

    stats, val_maps, test_maps = z_scored(val.anomaly_map, test.anomaly_map)
    head_stats = None
    if val.head_map is not None:
        head_stats, val_head, test_head = z_scored(val.head_map, test.head_map)
        val_maps = val_maps + params.defect_head_weight * val_head
        test_maps = test_maps + params.defect_head_weight * test_head
    score_stats, val_score_maps, test_score_maps = None, val_maps, test_maps
    if val.score_map is not None:
        score_stats, val_score_maps, test_score_maps = z_scored(val.score_map, test.score_map)

    def rescored(scores: Scores, maps: torch.Tensor, score_maps: torch.Tensor) -> Scores:
        score = image_scores(score_maps, params.image_score, params.topk_fraction)
        return Scores(score, maps, scores.reconstruction, None if score_maps is maps else score_maps)

    return ((stats, score_stats, head_stats), rescored(val, val_maps, val_score_maps),
            rescored(test, test_maps, test_score_maps))


def _prepared_size(dataset: AnomalyDataset) -> int:
    """The resolution masks were prepared at (that of the first test mask or image)."""
    row = dataset.rows[0]
    return read_image(dataset.root / (row.mask_path or row.path), "L").size[0]
