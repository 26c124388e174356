"""ONNX export of the whole multi-mask scoring, so a deployment needs onnxruntime and no PyTorch.

At inference the complementary masks are fixed (`diyt.eval.scoring.partitions`, drawn from the scoring seed), so
every index that the eager model derives from a mask (`visible_indices`) is a constant of the graph: the graph is
normalise -> patchify -> K hidden-patch passes (one batch of K*N) -> keep each patch from the pass that hid it ->
error (for each of the R partitions, averaged) -> bilinear upsampling -> Gaussian smoothing -> per-position
z-scores (when the bundle has them) -> image score; with an error level, the image score comes from the error
divided by the level, upsampled, smoothed and z-scored alike against its own statistics; with a defect head, its
map of the target, upsampled, smoothed and z-scored against its own statistics, is added to the anomaly map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diyt.bundle import Bundle
from diyt.data.dataset import NORMALIZATION
from diyt.errors import DiytError
from diyt.eval.normalize import PositionStats
from diyt.eval.scoring import (
    SSIM_SIGMA, SSIM_WINDOW, ScoringConfig, SeparableBlur, cell_error, image_scores, merge_passes, partitions,
    pass_indices, reduce_errors,
)
from diyt.io import atomic_path
from diyt.model import MaskedAutoencoder

MIN_OPSET = 18  # the oldest the exporter writes
OPSET = 23  # opset 23 has Attention and Gelu: fused kernels in onnxruntime (18 works, ~15% slower)
INPUT, SCORE, MAP = "image", "score", "anomaly_map"
# onnxruntime against PyTorch: relative, plus an absolute floor as a fraction of the map's largest magnitude, for
# z-scored maps cross zero where no relative tolerance holds (SSIM's variance terms amplify the last-bit
# differences of the two runtimes' convolutions most there)
PARITY_RTOL, PARITY_ATOL = 1e-4, 1e-5
class PositionNorm(nn.Module):
    """`diyt.eval.normalize.normalize_maps`: (N, H, W) maps as z-scores against the validation normals' (H, W)."""

    def __init__(self, stats: PositionStats) -> None:
        super().__init__()
        self.register_buffer("mean", stats.mean.clone(), persistent=False)
        self.register_buffer("scale", stats.scale.clone(), persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        return (maps - self.mean) / self.scale


class ScoringGraph(nn.Module):
    """(N, 3, S, S) RGB in [0, 1] at the model's size -> score (N,), anomaly map (N, out_size, out_size).

    The computation of `diyt predict` (`diyt.eval.scoring.score_images`, then the bundle's per-position
    z-scores), with the masks' index tensors precomputed and the blurs separable.
    """

    def __init__(self, model: MaskedAutoencoder, scoring: ScoringConfig, out_size: int, normalize: str,
                 position: PositionStats | None = None, level: nn.Module | None = None,
                 score_position: PositionStats | None = None, whitening: nn.Module | None = None,
                 head: nn.Module | None = None, head_position: PositionStats | None = None,
                 head_weight: float = 0.0) -> None:
        super().__init__()
        self.model, self.scoring, self.out_size = model, scoring, out_size
        parts = partitions(model.num_patches, scoring)  # (R, K, L)
        self.repeats = parts.shape[0]
        ids_keep, ids_restore, keep = pass_indices(parts.flatten(0, 1))  # (R*K, Lv), (R*K, L), (R*K, 1, L, 1)
        self.register_buffer("ids_keep", ids_keep.view(*parts.shape[:2], -1), persistent=False)
        self.register_buffer("ids_restore", ids_restore.view(parts.shape), persistent=False)
        self.register_buffer("keep", keep.view(*parts.shape[:2], *keep.shape[1:]), persistent=False)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION[normalize])
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.smooth = SeparableBlur.smoothing(scoring.sigma)
        self.ssim_blur = SeparableBlur(SSIM_WINDOW, SSIM_SIGMA)
        self.map_norm = PositionNorm(position) if position is not None else nn.Identity()
        self.level = level
        self.whitening = whitening
        self.score_norm = PositionNorm(score_position) if score_position is not None else nn.Identity()
        self.head, self.head_weight = head, head_weight
        self.head_norm = PositionNorm(head_position) if head_position is not None else nn.Identity()

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ScoringGraph:
        return cls(bundle.model, bundle.scoring, bundle.out_size, bundle.preprocess.normalize, bundle.position,
                   bundle.error_level, bundle.score_position, bundle.whitening, bundle.defect_head,
                   bundle.head_position, bundle.head_weight)

    def errors(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, h, w) -> the error maps of the R partitions (R, N, rows, cols), as `score_images` computes them,
        and the target map."""
        tokens, target = self.model.patchify(images)  # (N, L, D), (N, L, T): once, not once per pass
        target_map = self.model.unpatchify(target.float())
        errors = []
        for r in range(self.repeats):
            recon = self.model.unpatchify(merge_passes(self.model, tokens, target, self.ids_keep[r],
                                                       self.ids_restore[r], self.keep[r]))
            errors.append(cell_error(target_map, recon, self.scoring, self.whitening, ssim_blur=self.ssim_blur))
        return torch.stack(errors), target_map

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        images = (pixels - self.mean) / self.std
        errors, target = self.errors(images)
        _, maps = reduce_errors(errors, self.scoring, self.out_size, self._smooth)
        maps = self.map_norm(maps)
        if self.head is not None:
            _, head_maps = reduce_errors(self.head(target)[None], self.scoring, self.out_size, self._smooth)
            maps = maps + self.head_weight * self.head_norm(head_maps)
        score_maps = maps
        if self.level is not None:
            _, score_maps = reduce_errors(errors / torch.exp(self.level(target)), self.scoring, self.out_size,
                                          self._smooth)
            score_maps = self.score_norm(score_maps)
        return image_scores(score_maps, self.scoring.image_score, self.scoring.topk_fraction), maps

    def _smooth(self, maps: Tensor, _: float) -> Tensor:
        return self.smooth(maps)


def export_onnx(bundle: Bundle, out: str | Path, opset: int = OPSET, verify: bool = True) -> Path:
    """Write the bundle's scoring graph to `out` (dynamic batch axis), atomically; metadata ties it to the bundle.

    With `verify`, onnxruntime must reproduce `diyt predict`'s PyTorch maps on random images (PARITY_RTOL,
    PARITY_ATOL), or nothing is written.
    """
    import onnx

    if bundle.memory_bank is not None:
        raise DiytError(f"{bundle.path}: its maps come from the kNN reference scorer; export supports DiyT's "
                        "reconstruction scorer (evaluate with eval.scorer: reconstruction or both)")
    if bundle.scoring.perceptual_weight:
        raise DiytError(f"{bundle.path}: its maps include the perceptual error (eval.perceptual_weight "
                        f"{bundle.scoring.perceptual_weight}), which the ONNX graph does not compute; score with "
                        "`diyt predict`, or evaluate with eval.perceptual_weight: 0 to export")
    out = Path(out)
    bundle.model.cpu().float().eval()
    for part in (bundle.error_level, bundle.whitening, bundle.defect_head):
        if part is not None:
            part.cpu()
    graph = ScoringGraph.from_bundle(bundle).eval()
    size = bundle.preprocess.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)  # (N, S, S, 3)
    example = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    with atomic_path(out) as tmp, torch.no_grad():
        program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset, external_data=False,
                                    input_names=[INPUT], output_names=[SCORE, MAP],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
        proto = program.model_proto
        for key, value in onnx_metadata(bundle).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if verify:
            _verify(tmp, bundle, pixels)
    return out


def _verify(path: Path, bundle: Bundle, pixels: np.ndarray) -> None:
    """onnxruntime against PyTorch on `pixels` (N, S, S, 3) uint8; a disagreement is a bug of the export."""
    from diyt.predict import OnnxScorer, TorchScorer

    t_score, t_map = TorchScorer(bundle, torch.device("cpu"))(pixels)
    o_score, o_map = OnnxScorer(path)(pixels)
    atol = PARITY_ATOL * float(np.abs(t_map).max())
    try:
        np.testing.assert_allclose(o_map, t_map, rtol=PARITY_RTOL, atol=atol)
        np.testing.assert_allclose(o_score, t_score, rtol=PARITY_RTOL, atol=atol)
    except AssertionError as err:
        raise RuntimeError(f"{path}: the exported graph disagrees with PyTorch:{err}") from None


def onnx_metadata(bundle: Bundle) -> dict[str, str]:
    """What an ONNX file says about the bundle it came from: the weights' digest, sizes and thresholds."""
    return {"diyt.weights_sha256": bundle.weights_sha256, "diyt.bundle": json.dumps(bundle.manifest)}


def check_onnx_matches(path: Path, bundle: Bundle) -> None:
    """Refuse an ONNX file exported from other weights than the bundle's."""
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except FileNotFoundError:
        raise DiytError(f"{path}: no such ONNX file; write it with `python -m diyt export`") from None
    except Exception as err:  # noqa: BLE001 - onnx raises its own DecodeError and friends
        raise DiytError(f"{path}: not a readable ONNX file ({err.__class__.__name__}); export it again") from None
    if meta.get("diyt.weights_sha256") != bundle.weights_sha256:
        raise DiytError(f"{path}: exported from other weights than the bundle {bundle.path}; "
                        "export it again from this bundle")
