"""Trained models and model bundles.

A trained model directory (written by pre-training and fine-tuning) holds `model.safetensors` (the weights) and
`config.json` (how to rebuild and feed them). A model bundle (written by the evaluate stage) is a trained model
directory plus `bundle.json`: everything `diyt predict`, `diyt export` and the dashboard need to score an image
exactly as the evaluation did — the preprocessing chain, the scoring settings that define the anomaly map, the
image and pixel thresholds chosen on validation normals — with a format version and the weights' sha256.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from diyt.config import EvalParams, ModelParams
from diyt.data.dataset import NORMALIZATION
from diyt.data.images import read_image
from diyt.data.layout import read_manifest
from diyt.errors import DiytError
from diyt.eval.defect_head import DefectHead
from diyt.eval.level import ErrorLevel
from diyt.eval.normalize import PositionStats
from diyt.eval.scoring import ScoringConfig
from diyt.eval.whiten import ResidualWhitening
from diyt.io import atomic_dir, atomic_path, write_json
from diyt.model import MaskedAutoencoder, build_model
from diyt.report.panels import colour_range
from diyt.train.checkpoint import CONFIG, WEIGHTS, file_digest, load_into, load_weights

if TYPE_CHECKING:
    from diyt.eval.evaluate import Evaluation

BUNDLE = "bundle.json"
POSITION_STATS = "position_stats.safetensors"  # with eval.normalize_maps: position, the (H, W) mean and scale
MEMORY_BANK = "memory_bank.safetensors"  # with eval.scorer: knn, the (m, C) normal features it measures against
ERROR_LEVEL = "error_level.safetensors"  # with eval.error_level: context, the fitted `ErrorLevel`'s weights
SCORE_STATS = "score_position_stats.safetensors"  # with it and position normalisation, the score maps' own
WHITENING = "whitening.safetensors"  # with eval.error_whitening: position, the residuals' per-position statistics
DEFECT_HEAD = "defect_head.safetensors"  # with eval.defect_head: synthetic, the trained `DefectHead`'s weights
HEAD_STATS = "head_position_stats.safetensors"  # and the per-position statistics its maps are z-scored with
FORMAT_VERSION = 1
MAP_SETTINGS = ("normalize_maps", "normalize_std_floor")  # eval params applied after `score_images`
LEVEL_SETTINGS = ("error_level", "level_ring", "level_hole", "level_steps")  # the image score's error level
WHITENING_SETTINGS = ("error_whitening", "whitening_shrinkage")  # the errors' residual whitening
HEAD_SETTINGS = ("defect_head", "defect_head_weight", "defect_head_steps", "defect_head_copies")  # its map's
RESAMPLE = Image.Resampling.BICUBIC  # as prepare (to data.image_size) and AnomalyDataset (to the model's size)


class Trained(NamedTuple):
    model: MaskedAutoencoder
    params: ModelParams
    normalize: str
    config: dict


def load_trained(model_dir: str | Path, device: torch.device | str = "cpu") -> Trained:
    """Rebuild a trained model from its directory, in eval mode on `device`."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / CONFIG).read_text())
        params = ModelParams.model_validate(config["model"])
        normalize = config["normalize"]
    except FileNotFoundError:
        raise DiytError(f"{model_dir / CONFIG}: missing; train the model first (dvc repro)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValidationError) as err:
        raise DiytError(f"{model_dir / CONFIG}: not a DiyT model config ({str(err).splitlines()[0]}); "
                        "train the model again") from None
    model = build_model(params)
    load_into(model, load_weights(model_dir / WEIGHTS), model_dir / WEIGHTS)
    return Trained(model.to(device).eval(), params, normalize, config)


# ----------------------------------------------------------------------------------------------- bundle parts
@dataclass(frozen=True)
class Preprocess:
    """The evaluation's input chain: any image -> RGB -> `prepared_size` -> `image_size` (BICUBIC, each a no-op
    when the image is already that size) -> [0, 1] -> `normalize`. Prepare stores images at `prepared_size`
    (data.image_size) and AnomalyDataset resizes them to the model's size, so both steps are needed."""

    prepared_size: int
    image_size: int
    normalize: str

    def load(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """The model input (S, S, 3) uint8 and the image at the prepared size (P, P, 3) uint8, for heat maps.

        Raises DataError (naming the file) for a missing, corrupt or oversized image.
        """
        prepared = _resized(read_image(path, "RGB"), self.prepared_size)
        return np.asarray(_resized(prepared, self.image_size)), np.asarray(prepared)


def _resized(img: Image.Image, size: int) -> Image.Image:
    return img if img.size == (size, size) else img.resize((size, size), RESAMPLE)


@dataclass(frozen=True)
class Thresholds:
    """From the validation normals only: a score (pixel value) at or above it is anomalous."""

    image: float
    pixel: float


@dataclass
class Bundle:
    """A loaded model bundle: the model in eval mode and how to feed, score and judge it."""

    path: Path
    model: MaskedAutoencoder
    params: ModelParams
    preprocess: Preprocess
    scoring: ScoringConfig
    out_size: int  # side of the anomaly map, the prepared resolution the metrics are computed at
    thresholds: Thresholds
    display: tuple[float, float]  # the heat-map colour range of the evaluation's figures
    weights_sha256: str
    manifest: dict  # bundle.json as read
    position: PositionStats | None = None  # per-pixel z-scoring of the maps against validation normals, if any
    memory_bank: torch.Tensor | None = None  # (m, C): the maps are kNN distances to it instead of reconstruction
    error_level: ErrorLevel | None = None  # image scores from the errors against the level it expects
    score_position: PositionStats | None = None  # the per-pixel z-scoring of those score maps
    whitening: ResidualWhitening | None = None  # errors of the residuals whitened per position
    defect_head: DefectHead | None = None  # its map, z-scored per position (`head_position`), is added
    head_position: PositionStats | None = None
    head_weight: float = 0.0  # of that map in the sum

    @property
    def category(self) -> str:
        return str(self.manifest.get("category", self.path.name))


# ------------------------------------------------------------------------------------------------------ write
def write_bundle(out_dir: str | Path, model_dir: str | Path, ev: Evaluation, params: EvalParams,
                 category_dir: str | Path) -> None:
    """The complete bundle of an evaluated model, written whole (atomically) to `out_dir`."""
    model_dir, category_dir = Path(model_dir), Path(category_dir)
    trained = load_trained(model_dir)  # refuses weights that do not rebuild before they are bundled
    lo, hi = colour_range(ev.maps)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": trained.config.get("dataset"),
        "category": category_dir.name,
        "weights_sha256": None,  # of the copy, below
        "preprocess": dataclasses.asdict(Preprocess(prepared_size(category_dir), trained.model.arch.image_size,
                                                    trained.normalize)),
        "scoring": dataclasses.asdict(ScoringConfig.from_params(params))
                   | params.model_dump(include=set(MAP_SETTINGS))
                   | params.model_dump(include=set(LEVEL_SETTINGS))
                   | params.model_dump(include=set(WHITENING_SETTINGS))
                   | params.model_dump(include=set(HEAD_SETTINGS))
                   | {"scorer": "reconstruction" if ev.memory_bank is None else "knn",
                      "error_level": "none" if ev.error_level is None else "context",
                      "defect_head": "none" if ev.defect_head is None else "synthetic"},
        "out_size": int(ev.maps.shape[-1]),
        "thresholds": {"image": float(ev.image_threshold), "pixel": float(ev.pixel_threshold),
                       "method": params.threshold, "quantile": params.threshold_quantile, "k": params.threshold_k,
                       "num_val": int(ev.metrics["num_val"])},
        "display": {"lo": lo, "hi": hi},
    }
    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(model_dir / WEIGHTS, tmp / WEIGHTS)  # a copy: the bundle must outlive a retraining
        manifest["weights_sha256"] = file_digest(tmp / WEIGHTS)
        shutil.copyfile(model_dir / CONFIG, tmp / CONFIG)
        parts = {POSITION_STATS: None if ev.position_stats is None else ev.position_stats._asdict(),
                 MEMORY_BANK: None if ev.memory_bank is None else {"features": ev.memory_bank},
                 ERROR_LEVEL: None if ev.error_level is None else ev.error_level.state_dict(),
                 SCORE_STATS: None if ev.score_stats is None else ev.score_stats._asdict(),
                 WHITENING: None if ev.whitening is None else ev.whitening.state_dict(),
                 DEFECT_HEAD: None if ev.defect_head is None else ev.defect_head.state_dict(),
                 HEAD_STATS: None if ev.head_stats is None else ev.head_stats._asdict()}
        for name, tensors in parts.items():
            if tensors is not None:
                with atomic_path(tmp / name) as part:  # (atomic_path also gives the usual permissions)
                    save_file({k: v.float().cpu().contiguous() for k, v in tensors.items()}, part)
                manifest[_digest_key(name)] = file_digest(tmp / name)
        write_json(tmp / BUNDLE, manifest)


def prepared_size(category_dir: Path) -> int:
    """The side of a prepared category's images (data.image_size when it was prepared)."""
    rows = read_manifest(category_dir)
    with Image.open(category_dir / rows[0].path) as img:
        return img.size[0]


# ------------------------------------------------------------------------------------------------------- load
def load_bundle(bundle_dir: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Load a model bundle, checking its version, its parts and that the weights are the ones it was made with."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE
    remake = "make it again with `dvc repro evaluate@<category>`"
    if not bundle_dir.is_dir():
        raise DiytError(f"{bundle_dir}: no such bundle folder; pass the folder the evaluate stage wrote "
                        "(bundles/<dataset>/<category>)")
    try:
        manifest = json.loads(path.read_text())
        version = manifest["format_version"] if isinstance(manifest, dict) else None
    except FileNotFoundError:
        raise DiytError(f"{path}: missing, so {bundle_dir} is not a DiyT model bundle; the evaluate stage writes "
                        "bundles to bundles/<dataset>/<category> (`dvc repro evaluate@<category>`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as err:
        raise DiytError(f"{path}: not a DiyT bundle manifest ({err.__class__.__name__}: {err}); {remake}") from None
    if version != FORMAT_VERSION:
        raise DiytError(f"{path}: bundle format version {version!r}, but this DiyT reads version {FORMAT_VERSION}; "
                        f"{remake}, or use the DiyT version that wrote it")
    for part in (WEIGHTS, CONFIG):
        if not (bundle_dir / part).is_file():
            raise DiytError(f"{bundle_dir / part}: missing from the bundle; {remake}")
    try:
        pre, eval_params, thresholds, out_size, display, digest = _parse(manifest)
    except (KeyError, TypeError, ValueError, ValidationError) as err:
        raise DiytError(f"{path}: incomplete or invalid ({err.__class__.__name__}: "
                        f"{str(err).splitlines()[0]}); {remake}") from None
    scoring = ScoringConfig.from_params(eval_params)
    if file_digest(bundle_dir / WEIGHTS) != digest:
        raise DiytError(f"{bundle_dir / WEIGHTS}: not the weights this bundle was made with (changed or "
                        f"truncated: sha256 differs from {BUNDLE}); {remake}")
    def part(name: str, names: tuple[str, ...], why: str) -> list[torch.Tensor]:
        return _tensors(bundle_dir / name, manifest.get(_digest_key(name)), names, remake, why)

    def stats(name: str, why: str) -> PositionStats:
        found = PositionStats(*part(name, PositionStats._fields, why))
        if any(t.shape != (out_size, out_size) for t in found):
            raise DiytError(f"{bundle_dir / name}: statistics are not {out_size}x{out_size} like the maps; {remake}")
        return found

    position = bank = level = score_position = head_position = None
    leveled = eval_params.error_level == "context"
    headed = eval_params.defect_head == "synthetic"
    if eval_params.normalize_maps == "position":
        position = stats(POSITION_STATS, "its maps are normalised per position")
        if leveled:
            score_position = stats(SCORE_STATS, "its score maps are normalised per position")
        if headed:
            head_position = stats(HEAD_STATS, "its defect head's maps are normalised per position")
    trained = load_trained(bundle_dir, device)
    if (trained.model.arch.image_size, trained.normalize) != (pre.image_size, pre.normalize):
        raise DiytError(f"{path}: preprocess does not match {bundle_dir / CONFIG}; {remake}")
    if eval_params.scorer == "knn":
        (bank,) = _tensors(bundle_dir / MEMORY_BANK, manifest.get("memory_bank_sha256"), ("features",), remake,
                           "its maps are kNN distances to it")
        if bank.ndim != 2 or bank.shape[1] != trained.model.source.target_dim:
            raise DiytError(f"{bundle_dir / MEMORY_BANK}: features of another size than the model's; {remake}")
    def loaded(name: str, module: torch.nn.Module, what: str, why: str) -> torch.nn.Module:
        """`module` with the weights of part `name`, or one clear error when they are not its."""
        names = tuple(module.state_dict())
        try:
            module.load_state_dict(dict(zip(names, part(name, names, why))))
        except (KeyError, RuntimeError) as err:
            raise DiytError(f"{bundle_dir / name}: not the {what} of this model ({str(err).splitlines()[0]}); "
                            f"{remake}") from None
        return module.to(device).eval().requires_grad_(False)

    source = trained.model.source
    if leveled:
        level = loaded(ERROR_LEVEL, ErrorLevel(source.target_dim, eval_params.level_ring, eval_params.level_hole),
                       "error level", "its image scores use it")
    whitening = None
    if eval_params.error_whitening == "position":
        whitening = loaded(WHITENING, ResidualWhitening(source.target_dim, *source.grid_size), "whitening",
                           "its errors are whitened with it")
    head = None
    if headed:
        head = loaded(DEFECT_HEAD, DefectHead(source.target_dim), "defect head", "its maps add the head's")
    return Bundle(bundle_dir, trained.model, trained.params, pre, scoring, out_size, thresholds, display, digest,
                  manifest, position, bank, level, score_position, whitening, head, head_position,
                  eval_params.defect_head_weight if headed else 0.0)


def _digest_key(part: str) -> str:
    """The bundle.json key of a part's sha256: position_stats.safetensors -> position_stats_sha256."""
    return part.removesuffix(".safetensors") + "_sha256"


def _parse(manifest: dict) -> tuple[Preprocess, EvalParams, Thresholds, int, tuple[float, float], str]:
    """The typed parts of bundle.json; KeyError, TypeError, ValueError or ValidationError when one is off."""
    pre = manifest["preprocess"]
    pre = Preprocess(_side(pre["prepared_size"]), _side(pre["image_size"]), str(pre["normalize"]))
    if pre.normalize not in NORMALIZATION:
        raise ValueError(f"preprocess.normalize {pre.normalize!r} is none of {', '.join(NORMALIZATION)}")
    t, d = manifest["thresholds"], manifest["display"]
    return (pre, EvalParams.model_validate(manifest["scoring"]), Thresholds(float(t["image"]), float(t["pixel"])),
            _side(manifest["out_size"]), (float(d["lo"]), float(d["hi"])), str(manifest["weights_sha256"]))


def _side(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8192:
        raise ValueError(f"an image side must be an integer from 1 to 8192, got {value!r}")
    return value


def _tensors(path: Path, digest: str | None, names: tuple[str, ...], remake: str, why: str) -> list[torch.Tensor]:
    """The named float tensors of a safetensors part of the bundle, checked against its recorded sha256."""
    if not path.is_file():
        raise DiytError(f"{path}: missing from the bundle ({why}); {remake}")
    if file_digest(path) != digest:
        raise DiytError(f"{path}: not the file this bundle was made with (sha256 differs from {BUNDLE}); {remake}")
    tensors = load_file(path)
    return [tensors[name].float() for name in names]
