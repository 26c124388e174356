"""Typed, frozen, validated params: one model per params.yaml section.

Every stage reads its section through `load_params()`. An unknown key, a wrong type or an impossible value
stops with one line naming the key and what is allowed (a `ConfigError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from diyt.errors import ConfigError
from diyt.model.presets import PRESETS, ArchConfig, resolve

DEFAULT_PARAMS = Path("params.yaml")

Source = Literal["synthetic", "mvtec_ad", "btad", "magnetic_tile", "folder"]

MVTEC_AD_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
    "tile", "toothbrush", "transistor", "wood", "zipper",
)
PART_SOURCES = ("magnetic_tile",)  # sources that know which images are photographs of the same part
KNOWN_CATEGORIES: dict[str, tuple[str, ...] | None] = {
    "synthetic": ("weave", "stone", "nut"),
    "mvtec_ad": MVTEC_AD_CATEGORIES,
    "btad": ("01", "02", "03"),
    "magnetic_tile": ("tile",),
    "folder": None,  # any sub-folder of data.path in MVTec layout
}

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# --------------------------------------------------------------------------------------------------- data
class SyntheticParams(Section):
    """Sizes of the embedded synthetic dataset (per category)."""

    n_train: Annotated[int, Field(ge=2)] = 200
    n_test_good: PositiveInt = 40
    n_test_defect: PositiveInt = 60


class AugmentParams(Section):
    """Train-time augmentation; rotations only make sense for textures, so they are per category."""

    hflip: bool = True
    vflip: bool = False
    rot90_categories: tuple[str, ...] = ("weave", "stone")


class DataParams(Section):
    source: Source = "synthetic"
    path: str | None = None  # a local copy instead of downloading (required for `folder`)
    categories: tuple[str, ...] = ("weave", "stone", "nut")
    image_size: Annotated[int, Field(ge=16, le=2048)] = 256  # storage resolution of data/prepared
    val_fraction: Fraction = 0.1  # of train-normal images, held out for thresholds
    split_seed: NonNegInt = 0
    split_by: Literal["image", "part"] = "image"  # part: a part's photographs on one side of every split
    normalize: Literal["imagenet", "tf", "none"] = "imagenet"
    synthetic: SyntheticParams = SyntheticParams()
    augment: AugmentParams = AugmentParams()

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if not self.categories:
            raise ValueError("categories: give at least one category")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories: duplicates in {list(self.categories)}")
        known = KNOWN_CATEGORIES[self.source]
        if known is not None:
            for category in self.categories:
                if category not in known:
                    raise ValueError(f"categories: {category!r} is not a category of {self.source} "
                                     f"(allowed: {', '.join(known)})")
        if self.split_by == "part" and self.source not in PART_SOURCES:
            raise ValueError(f"split_by: 'part' needs a source that records which images show the same part "
                             f"({', '.join(PART_SOURCES)}); {self.source} does not, so set it to image")
        if self.source == "folder" and not self.path:
            raise ValueError("path: data.source=folder needs data.path, a folder in MVTec AD layout")
        return self

    @property
    def dataset(self) -> str:
        """The folder name under data/prepared, models/ and reports/: the source (dvc.yaml uses ${data.source})."""
        return self.source


# -------------------------------------------------------------------------------------------------- model
class ModelParams(Section):
    """The model's switches plus a size preset whose fields may be overridden one by one."""

    preset: Literal["tiny", "small", "seed"] = "tiny"
    target: Literal["pixels", "features"] = "pixels"  # what the tokens are and what is reconstructed
    backbone: str = "tf_efficientnet_lite0"  # timm name of the frozen feature extractor (target: features)
    feature_layers: tuple[NonNegInt, ...] = (2, 3)  # its timm feature indices, resized to the patch_size grid
    feature_norm: Literal["none", "channel"] = "none"  # channel: standardised by the train maps' statistics
    norm: Literal["dyt", "layernorm"] = "dyt"
    dyt_alpha: Annotated[float, Field(gt=0.0)] = 0.5
    pos_embed: Literal["hybrid", "sincos", "learned"] = "hybrid"
    masking: Literal["block", "random"] = "block"
    mask_ratio: Fraction = 0.5
    aggregate_layers: tuple[PositiveInt, ...] = (2, 4)  # 1-based encoder layers; empty = no aggregation
    aggregate_mode: Literal["weighted", "concat"] = "weighted"
    loss_on: Literal["masked", "all"] = "masked"
    norm_pix_loss: bool = False
    # overrides of the preset (null = the preset's value)
    image_size: PositiveInt | None = None
    patch_size: PositiveInt | None = None
    embed_dim: PositiveInt | None = None
    depth: PositiveInt | None = None
    num_heads: PositiveInt | None = None
    decoder_embed_dim: PositiveInt | None = None
    decoder_depth: PositiveInt | None = None
    decoder_num_heads: PositiveInt | None = None
    mlp_ratio: Annotated[float, Field(gt=0.0)] | None = None

    @property
    def arch(self) -> ArchConfig:
        """The resolved sizes: the preset with this section's overrides applied."""
        fields = {f.name for f in dataclasses.fields(ArchConfig)}
        return resolve(self.preset, **{k: v for k, v in self.model_dump().items() if k in fields})

    @model_validator(mode="after")
    def _check(self) -> ModelParams:
        a = self.arch
        if a.image_size % a.patch_size:
            raise ValueError(f"patch_size: {a.patch_size} does not divide image_size {a.image_size}")
        if a.embed_dim % a.num_heads:
            raise ValueError(f"num_heads: {a.num_heads} does not divide embed_dim {a.embed_dim}")
        if a.decoder_embed_dim % a.decoder_num_heads:
            raise ValueError(f"decoder_num_heads: {a.decoder_num_heads} does not divide "
                             f"decoder_embed_dim {a.decoder_embed_dim}")
        for layer in self.aggregate_layers:
            if layer > a.depth:
                raise ValueError(f"aggregate_layers: layer {layer} is deeper than the encoder "
                                 f"(depth {a.depth}; allowed 1..{a.depth})")
        if len(set(self.aggregate_layers)) != len(self.aggregate_layers):
            raise ValueError(f"aggregate_layers: duplicates in {list(self.aggregate_layers)}")
        if self.target == "features" and (not self.feature_layers
                                          or len(set(self.feature_layers)) != len(self.feature_layers)):
            raise ValueError(f"feature_layers: give distinct backbone feature indices, got {list(self.feature_layers)}")
        return self


# -------------------------------------------------------------------------------------------------- train
class PhaseParams(Section):
    """One training phase (pre-training or fine-tuning): the optimiser and schedule recipe."""

    epochs: PositiveInt = 10
    steps: PositiveInt | None = None  # when set, overrides epochs
    batch_size: PositiveInt = 32  # global batch, whatever the number of processes
    base_lr: Annotated[float, Field(gt=0.0)] = 1.5e-4  # lr = base_lr * batch_size / 256
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0
    warmup_steps: NonNegInt = 20
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 1.0


class TrainParams(Section):
    nproc: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with AMX (elsewhere a CPU trains in float32)
    compile: bool = False
    num_workers: NonNegInt = 0
    checkpoint_every: PositiveInt = 100  # steps
    seed: NonNegInt = 0
    pretrain: PhaseParams = PhaseParams(epochs=20, base_lr=1.5e-3)
    finetune: PhaseParams = PhaseParams(epochs=10, base_lr=5e-4)


# --------------------------------------------------------------------------------------------------- eval
class EvalParams(Section):
    scorer: Literal["reconstruction", "knn", "both"] = "reconstruction"  # both: kNN as a reference in metrics
    knn_coreset: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # of the train normals' feature cells kept in the kNN memory bank
    num_masks: PositiveInt = 2  # K complementary masks partitioning the patches; 1: a plain single pass
    repeats: PositiveInt = 1  # R partitions, averaged
    ssim_weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # of (1 - SSIM) / 2 in the per-pixel error
    gms_weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # of 1 - MSGMS; L2 keeps 1 - ssim - gms
    perceptual_weight: Annotated[float, Field(ge=0.0)] = 0.0  # of the ImageNet-feature error, added to the mix
    sigma: Annotated[float, Field(ge=0.0)] = 4.0  # Gaussian smoothing of the anomaly map, in pixels
    image_score: Literal["max", "topk"] = "max"
    topk_fraction: Fraction = 0.01
    normalize_maps: Literal["none", "position"] = "none"  # z-score each pixel against the validation maps
    normalize_std_floor: Annotated[float, Field(gt=0.0)] = 0.1  # added to the std, x its mean over pixels
    error_level: Literal["none", "context"] = "none"  # image score: error / the error expected from the context
    level_ring: Annotated[int, Field(ge=3)] = 13  # odd: the context window, in feature cells
    level_hole: PositiveInt = 9  # odd, under level_ring: the central cells the context leaves out
    level_steps: PositiveInt = 300  # the error level's fitting steps
    error_whitening: Literal["none", "position"] = "none"  # position: the residual whitened per grid position
    whitening_shrinkage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05  # of its covariance, towards the identity
    error_scale: Literal["none", "image"] = "none"  # image: each error map divided by its own quantile
    error_scale_quantile: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    defect_head: Literal["none", "synthetic"] = "none"  # synthetic: a head trained on synthetic defects adds its map
    defect_head_weight: Annotated[float, Field(gt=0.0)] = 0.35  # of its map, z-scored per position, in the sum
    defect_head_steps: PositiveInt = 1000  # its training steps, of batch_size images
    defect_head_copies: PositiveInt = 4  # synthetic versions of each train normal it trains on
    threshold: Literal["quantile", "mean_std"] = "quantile"
    threshold_quantile: Fraction = 0.99
    threshold_k: Annotated[float, Field(ge=0.0)] = 3.0
    batch_size: PositiveInt = 32
    seed: NonNegInt = 0

    @model_validator(mode="after")
    def _check(self) -> EvalParams:
        if self.ssim_weight + self.gms_weight > 1:
            raise ValueError(f"ssim_weight + gms_weight: {self.ssim_weight} + {self.gms_weight} is over 1 "
                             "(L2 weighs the rest)")
        if not (self.level_ring % 2 and self.level_hole % 2 and self.level_hole < self.level_ring):
            raise ValueError(f"level_ring {self.level_ring}, level_hole {self.level_hole}: both must be odd, the "
                             "hole smaller than the ring (a window centred on each cell)")
        if self.defect_head != "none" and self.normalize_maps != "position":
            raise ValueError("defect_head: its map is added to the reconstruction's as z-scores against the "
                             "validation normals; set normalize_maps: position, or defect_head: none")
        return self


# --------------------------------------------------------------------------------------------------- root
class Params(Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.model.target == "features":
            from diyt.model.backbone import backbone_normalization

            wanted = backbone_normalization(self.model.backbone)
            if self.data.normalize != wanted:
                raise ValueError(f"data.normalize: the {self.model.backbone} backbone was trained on {wanted!r} "
                                 f"inputs; set data.normalize: {wanted}")
            for key, what in (("ssim_weight", "SSIM"), ("gms_weight", "MSGMS"),
                              ("perceptual_weight", "the perceptual error")):
                if getattr(self.eval, key):
                    raise ValueError(f"eval.{key}: {what} compares images and model.target is features; set it to 0")
        elif self.eval.error_level != "none":
            raise ValueError("eval.error_level: the error level reads the backbone's feature cells and model.target "
                             "is pixels; set it to none")
        elif self.eval.error_whitening != "none":
            raise ValueError("eval.error_whitening: it whitens the feature residual and model.target is pixels; set "
                             "it to none")
        elif self.eval.defect_head != "none":
            raise ValueError("eval.defect_head: it segments the backbone's feature cells and model.target is "
                             "pixels; set it to none")
        if self.model.arch.image_size > self.data.image_size:
            raise ValueError(f"data.image_size: {self.data.image_size} is smaller than the model's "
                             f"image_size {self.model.arch.image_size}; prepare at least that size")
        patches, k = self.model.arch.num_patches, self.eval.num_masks
        if patches % k:  # every scoring pass must hide as many patches as the others
            divisors = [d for d in range(2, min(patches, 16) + 1) if patches % d == 0]
            fix = f"use one of {', '.join(map(str, divisors))}" if divisors else "use a smaller model.patch_size"
            raise ValueError(f"eval.num_masks: {k} does not divide the model's {patches} patches; {fix}")
        return self

    def digest(self) -> str:
        """A short stable hash of every param, for run facts and checkpoint compatibility."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _format(err: ValidationError, source: str) -> str:
    """One line: the first problem, with its dotted key and what is allowed."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent = Params
        for part in e["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if isinstance(part, str) else None
            if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                break
            parent = field.annotation
        allowed = ", ".join(parent.model_fields)
        return f"{source}: unknown key '{key}' (allowed here: {allowed})"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":  # our own checks already name the field
        prefix = ".".join(str(p) for p in e["loc"])
        return f"{source}: {prefix + '.' if prefix else ''}{msg}"
    return f"{source}: {key}: {msg} (got {e.get('input')!r})"


def parse_params(raw: dict | None, source: str = "params") -> Params:
    """Validate a params mapping (as read from params.yaml) into frozen `Params`."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root or pass --params") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it as a text file ({getattr(err, 'strerror', None) or err}); "
                          "pass the params.yaml file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, eval)")
    return parse_params(raw, str(path))


__all__ = [
    "PRESETS", "ArchConfig", "ConfigError", "DataParams", "EvalParams", "ModelParams", "Params",
    "PhaseParams", "TrainParams", "load_params", "parse_params",
]
