"""A micro model bundle made the way the evaluate stage makes one: a prepared category, its evaluation, its bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diyt.bundle import write_bundle
from diyt.config import EvalParams, parse_params
from diyt.data.layout import read_manifest, write_category
from diyt.data.synthetic import generate
from diyt.eval.evaluate import Evaluation, evaluate_category
from diyt.model import build_model
from diyt.train.checkpoint import save_model

MICRO = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "aggregate_layers": [1]}
PREPARED = 48  # prepared (storage) size above the model's 32 px, so predict must resize twice like the pipeline


@dataclass(frozen=True)
class MicroBundle:
    bundle: Path
    category: Path  # the prepared category
    evaluation: Evaluation

    @property
    def test_images(self) -> list[Path]:
        return [self.category / r.path for r in read_manifest(self.category) if r.split == "test"]


# the feature target at micro size: EfficientNet-Lite0's stride-8 and -16 maps on a 4 x 4 grid of a 64 px image
MICRO_FEATURES = {**MICRO, "target": "features", "image_size": 64, "patch_size": 16}


def make_bundle(tmp: Path, params: EvalParams, category: str = "weave", model: dict | None = None,
                normalize: str = "imagenet", prepared: int = PREPARED) -> MicroBundle:
    """An untrained micro model (its scores are as good as any for parity), evaluated and bundled under `tmp`."""
    torch.manual_seed(0)
    model_params = parse_params({"model": model or MICRO, "data": {"image_size": prepared, "normalize": normalize},
                                 "eval": {"ssim_weight": 0.0}}).model
    net = build_model(model_params).eval()
    save_model(tmp / "model", net, {"model": model_params.model_dump(mode="json"), "normalize": normalize,
                                    "dataset": "synthetic", "categories": [category]})
    samples = generate(category, n_train=12, n_test_good=3, n_test_defect=5, image_size=prepared, seed=0)
    write_category(samples, tmp / category, prepared, 0.25, 0)
    ev = evaluate_category(net, tmp / category, normalize, params, torch.device("cpu"))
    write_bundle(tmp / "bundle", tmp / "model", ev, params, tmp / category)
    return MicroBundle(tmp / "bundle", tmp / category, ev)


def assert_part_guarded(bundle: Path, part: str, tmp: Path) -> None:
    """A copy of `bundle` with `part` tampered with, then without it: load_bundle refuses both, naming the part."""
    import shutil

    import pytest

    from diyt.bundle import load_bundle
    from diyt.errors import DiytError

    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    data = (copy / part).read_bytes()
    (copy / part).write_bytes(data[:-4] + bytes(4))
    with pytest.raises(DiytError, match=rf"{part}: not the file this bundle was made with"):
        load_bundle(copy)
    (copy / part).unlink()
    with pytest.raises(DiytError, match=rf"{part}: missing from the bundle"):
        load_bundle(copy)


def assert_scores_like_evaluation(micro: MicroBundle, tmp: Path) -> None:
    """`diyt predict` on the bundle reproduces the evaluation's scores and maps bit for bit, its ONNX export to
    float tolerance."""
    import numpy as np

    from diyt.bundle import load_bundle
    from diyt.export import export_onnx
    from diyt.predict import OnnxScorer, TorchScorer

    ev, bundle = micro.evaluation, load_bundle(micro.bundle)
    pixels = np.ascontiguousarray(ev.images)  # the test images at the model's size, as the evaluation saw them
    score, maps = TorchScorer(bundle, torch.device("cpu"))(pixels)
    np.testing.assert_array_equal(score, ev.scores)
    np.testing.assert_array_equal(maps, ev.maps)
    onnx_score, onnx_maps = OnnxScorer(export_onnx(bundle, tmp / "model.onnx"))(pixels)
    np.testing.assert_allclose(onnx_score, score, rtol=1e-4, atol=1e-4 * float(np.abs(score).max()))
    np.testing.assert_allclose(onnx_maps, maps, rtol=1e-4, atol=1e-5 * float(np.abs(maps).max()))
