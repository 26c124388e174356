"""Score images outside the pipeline with a model bundle: scores, verdicts and heat maps, in PyTorch or onnxruntime.

Every image goes through the evaluation's own chain (`Preprocess`, then `diyt.eval.evaluate.score_batch`), so a
prepared test image scores exactly as the evaluate stage scored it. An unreadable image is reported and skipped;
the others are still scored.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diyt.bundle import Bundle
from diyt.data.dataset import normalize
from diyt.errors import DataError, DiytError
from diyt.eval.evaluate import score_batch
from diyt.eval.knn import knn_scores
from diyt.eval.normalize import normalize_maps
from diyt.eval.scoring import image_scores, partitions
from diyt.io import atomic_path, write_text
from diyt.report.panels import overlay

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
Format = Literal["jsonl", "csv"]
ANOMALOUS, NORMAL, UNREADABLE = "anomalous", "normal", "unreadable"
HEATMAPS = "heatmaps"


class Scorer(Protocol):
    """Model inputs (N, S, S, 3) uint8 -> image scores (N,) and anomaly maps (N, H, W), float32 numpy."""

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class TorchScorer:
    """The bundle's model in PyTorch on `device`, through the evaluation's own scoring call."""

    def __init__(self, bundle: Bundle, device: torch.device) -> None:
        self.bundle, self.device = bundle, device
        self.model = bundle.model.to(device).eval()
        self.parts = partitions(self.model.num_patches, bundle.scoring)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # as AnomalyDataset: uint8 -> float / 255 -> normalise (elementwise, so batching changes no bit)
        # contiguous like the evaluation's batches: a channels-last input picks other conv kernels (other bits)
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float() / 255.0  # (N, 3, S, S)
        images = normalize(images, self.bundle.preprocess.normalize)
        config = self.bundle.scoring
        if self.bundle.memory_bank is None:
            scores = score_batch(self.model, images, config, self.bundle.out_size, self.parts, self.device,
                                 self.bundle.preprocess.normalize, self.bundle.error_level, self.bundle.whitening,
                                 self.bundle.defect_head)
        else:
            scores = knn_scores(self.model, images, self.bundle.memory_bank.to(self.device), config,
                                self.bundle.out_size, self.device)
        score, maps = scores.score, scores.anomaly_map
        if self.bundle.position is not None:  # as the evaluation: z-score the maps, then score them again
            maps = normalize_maps(maps, self.bundle.position)
            if scores.head_map is not None:  # the defect head's map, z-scored against its own statistics
                maps = maps + self.bundle.head_weight * normalize_maps(scores.head_map, self.bundle.head_position)
            score_maps = maps  # the score's own maps, against their own statistics, under an error level
            if scores.score_map is not None:
                score_maps = normalize_maps(scores.score_map, self.bundle.score_position)
            score = image_scores(score_maps, config.image_score, config.topk_fraction)
        return score.numpy(), maps.numpy()


class OnnxScorer:
    """An exported scoring graph (`diyt export`) in onnxruntime, on the CPU unless CUDA is asked for."""

    def __init__(self, path: str | Path, device: torch.device | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # idle threads sleep instead of spinning: decoding and heat maps run between batches on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        wanted = ["CUDAExecutionProvider"] if device is not None and device.type == "cuda" else []
        providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise DiytError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]}); "
                            "export it again") from None

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0))  # (N, 3, S, S) in [0, 1]
        score, anomaly_map = self.session.run(None, {"image": images})
        return score, anomaly_map


@dataclass(frozen=True)
class Prediction:
    path: str
    score: float | None
    verdict: str  # anomalous | normal | unreadable
    heatmap: str | None = None  # relative to the output folder
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    predictions: list[Prediction]
    results: Path

    @property
    def unreadable(self) -> list[Prediction]:
        return [p for p in self.predictions if p.verdict == UNREADABLE]


# ----------------------------------------------------------------------------------------------------- inputs
def find_inputs(specs: Sequence[str], exclude: Path | None = None) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> image paths, each once, sorted per
    spec; none from inside `exclude` (the output folder: a rerun must not score its own heat maps)."""
    found: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(spec):
            matches = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file())
        else:
            raise DiytError(f"{spec}: no such file or folder")
        if skip is not None:
            matches = [p for p in matches if not p.resolve().is_relative_to(skip)]
        if not matches:
            raise DiytError(f"{spec}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        found += matches
    return list(dict.fromkeys(found))


def heatmap_names(paths: Sequence[Path]) -> list[Path]:
    """Unique relative PNG names mirroring the inputs' folders below their common parent (no `..`, no absolutes).

    `x.jpg` becomes `x.png`; inputs that would share a name (`x.jpg` beside `x.png`, or names that differ only in
    case, which a case-insensitive disk would merge) keep their suffix (`x.jpg.png`), and a number if still needed.
    """
    absolute = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    relative = [p.relative_to(root) for p in absolute]

    def key(name: Path) -> str:
        return name.as_posix().casefold()

    plain = [r.with_suffix(".png") for r in relative]
    shared = Counter(map(key, plain))
    names, taken = [], set()
    for rel, name in zip(relative, plain):
        if shared[key(name)] > 1:
            name = rel.with_name(rel.name + ".png")
        unique, n = name, 1
        while key(unique) in taken:
            unique, n = name.with_name(f"{name.stem}-{n}.png"), n + 1
        taken.add(key(unique))
        names.append(unique)
    return names


# ---------------------------------------------------------------------------------------------------- scoring
def heatmap(image: np.ndarray, anomaly_map: np.ndarray, bundle: Bundle) -> Image.Image:
    """The map blended over the image, on the colour scale of the evaluation's figures (comparable across images)."""
    size = anomaly_map.shape[-1]
    if image.shape[0] != size:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return Image.fromarray(overlay(image, anomaly_map, *bundle.display))


def _batches(paths: Sequence[Path], size: int) -> Iterator[list[Path]]:
    it = iter(paths)
    while chunk := list(islice(it, size)):
        yield chunk


def _read(chunk: Sequence[Path], bundle: Bundle) -> tuple[list[tuple[Path, np.ndarray, np.ndarray]], list[Prediction]]:
    """(path, model input, display image) per readable image; a Prediction per unreadable one, named on stderr."""
    readable, failed = [], []
    for path in chunk:
        try:
            readable.append((path, *bundle.preprocess.load(path)))
        except DataError as err:
            tqdm.write(f"error: {err}", file=sys.stderr)
            failed.append(Prediction(str(path), None, UNREADABLE, error=str(err)))
    return readable, failed


def predict(paths: Sequence[Path], bundle: Bundle, scorer: Scorer, out_dir: str | Path, *,
            fmt: Format = "jsonl", batch_size: int = 32, heatmaps: bool = True, progress: bool = True) -> Summary:
    """Score `paths` in batches; write one heat-map PNG per image and the results file, each atomically."""
    out_dir = Path(out_dir)
    names = dict(zip(paths, heatmap_names(paths)))
    predictions: list[Prediction] = []
    with tqdm(total=len(paths), desc=f"predict {bundle.category}", unit="img", disable=not progress) as bar:
        for chunk in _batches(paths, batch_size):
            readable, failed = _read(chunk, bundle)
            predictions += failed
            if readable:
                scores, maps = scorer(np.stack([model_input for _, model_input, _ in readable]))
                for (path, _, display), score, anomaly_map in zip(readable, scores, maps):
                    name = Path(HEATMAPS) / names[path] if heatmaps else None
                    if name is not None:
                        with atomic_path(out_dir / name, clean=False) as tmp:  # one folder, many maps
                            heatmap(display, anomaly_map, bundle).save(tmp, format="PNG", compress_level=1)
                    verdict = ANOMALOUS if score >= bundle.thresholds.image else NORMAL
                    predictions.append(Prediction(str(path), float(score), verdict, name and str(name)))
            bar.update(len(chunk))
    order = {str(p): i for i, p in enumerate(paths)}
    predictions.sort(key=lambda p: order[p.path])
    results = out_dir / f"predictions.{fmt}"
    write_text(results, render(predictions, fmt))
    return Summary(predictions, results)


def render(predictions: Sequence[Prediction], fmt: Format) -> str:
    """JSON Lines (one object per image) or CSV with a header."""
    rows = [asdict(p) for p in predictions]
    if fmt == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f for f in Prediction.__dataclass_fields__], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue()
