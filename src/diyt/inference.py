"""Live inference for the dashboard: one uploaded image scored by a category's model bundle, as `diyt predict` does.

The bundle (`diyt.bundle.load_bundle`) carries the evaluation's preprocessing, scoring settings and thresholds.
A model evaluated before the evaluate stage wrote bundles is assembled into the same `Bundle` from its model
folder, the threshold in its metrics.json and the eval section of params.yaml (valid while those params are the
ones it was evaluated with, and refused when its scoring uses what the evaluation fitted: per-position statistics,
an error level or a defect head; `dvc repro` writes the real bundle).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from diyt.bundle import BUNDLE, Bundle, Preprocess, Thresholds, load_bundle, load_trained
from diyt.config import load_params
from diyt.errors import DataError, DiytError
from diyt.eval.scoring import ScoringConfig
from diyt.predict import ANOMALOUS, IMAGE_SUFFIXES, NORMAL, TorchScorer, heatmap
from diyt.train.checkpoint import WEIGHTS, file_digest

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # as server.maxUploadSize in dashboard/.streamlit/config.toml
UPLOAD_TYPES = IMAGE_SUFFIXES  # the uploader's `type=`: what `diyt predict` reads


class LiveResult(NamedTuple):
    score: float
    verdict: str  # "anomalous" | "normal"
    threshold: float
    image: np.ndarray  # (P, P, 3) uint8, the upload at the prepared size
    heatmap: Image.Image  # the anomaly map over the image, pixels over the pixel threshold outlined


def has_bundle(bundle_dir: str | Path) -> bool:
    return (Path(bundle_dir) / BUNDLE).is_file()


def load_model(bundle_dir: str | Path, model_dir: str | Path, metrics_path: str | Path, params_path: str | Path,
               device: torch.device | str = "cpu") -> Bundle:
    """The category's bundle, or one assembled from its model folder, metrics.json and params.yaml."""
    if has_bundle(bundle_dir):
        return load_bundle(bundle_dir, device)
    trained = load_trained(model_dir, device)
    try:
        metrics = json.loads(Path(metrics_path).read_text())
        thresholds = Thresholds(float(metrics["threshold"]), float(metrics["pixel_threshold"]))
    except FileNotFoundError:
        raise DiytError(f"{metrics_path}: missing; evaluate the model first (dvc repro)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DiytError(f"{metrics_path}: no thresholds ({err.__class__.__name__}: {err}); "
                        "evaluate the model again (dvc repro)") from None
    params = load_params(params_path)
    needs = [f"eval.{key}: {value}" for key, value in (("normalize_maps", params.eval.normalize_maps),
                                                         ("error_level", params.eval.error_level),
                                                         ("error_whitening", params.eval.error_whitening),
                                                         ("defect_head", params.eval.defect_head))
             if value != "none"]
    if needs:  # what the evaluation fitted lives only in the bundle: without it scores and thresholds disagree
        raise DiytError(f"{bundle_dir}: no model bundle, and its scoring ({', '.join(needs)}) uses what the "
                        "evaluation fitted, which only the bundle carries; write it with "
                        f"`dvc repro evaluate@{Path(bundle_dir).name}`")
    size = params.data.image_size  # the prepared resolution the evaluation scored and thresholded at
    preprocess = Preprocess(size, trained.model.arch.image_size, trained.normalize)
    display = (0.0, 2 * thresholds.image)  # the image threshold mid-scale
    digest = file_digest(Path(model_dir) / WEIGHTS)
    return Bundle(Path(model_dir), trained.model, trained.params, preprocess,
                  ScoringConfig.from_params(params.eval), size, thresholds, display, digest, {})


def scorer(bundle: Bundle, device: torch.device | str = "cpu") -> TorchScorer:
    """The evaluation's scoring call on `device`, ready for repeated single images."""
    return TorchScorer(bundle, torch.device(device))


def check_size(name: str, size: int, limit: int = MAX_UPLOAD_BYTES) -> None:
    """Refuse an upload over `limit` bytes with a message naming it."""
    if size > limit:
        raise DataError(f"{name}: {size / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB upload limit; "
                        "resize or crop the image")


def score_upload(bundle: Bundle, score: TorchScorer, data: bytes, name: str) -> LiveResult:
    """Score the bytes of one uploaded image; a non-image, oversized image or decompression bomb is a DataError
    naming the upload."""
    check_size(name, len(data))
    with tempfile.TemporaryDirectory(prefix="diyt-upload-") as tmp:
        path = Path(tmp) / (Path(name).name or "upload")
        path.write_bytes(data)
        try:
            model_input, display = bundle.preprocess.load(path)
        except DataError as err:
            raise DataError(str(err).replace(str(path), name)) from None
    scores, maps = score(np.array(model_input[None]))  # a writable copy for torch.from_numpy
    value = float(scores[0])
    verdict = ANOMALOUS if value >= bundle.thresholds.image else NORMAL
    return LiveResult(value, verdict, bundle.thresholds.image, display, heatmap(display, maps[0], bundle))
