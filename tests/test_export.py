"""`diyt export --format onnx`: the whole multi-mask scoring in one graph, in parity with PyTorch under onnxruntime."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from diyt.bundle import load_bundle
from diyt.cli import main as cli_main
from diyt.config import EvalParams
from diyt.errors import DiytError
from diyt.export import PARITY_ATOL, PARITY_RTOL, check_onnx_matches, export_onnx
from diyt.predict import OnnxScorer, TorchScorer, find_inputs, predict
from micro_bundle import PREPARED, make_bundle

# every part of the scoring in play: K = 4 passes, R = 2 partitions, SSIM, MSGMS, smoothing, per-position
# z-scores, top-k image score
PARAMS = EvalParams(num_masks=4, repeats=2, ssim_weight=0.3, gms_weight=0.2, sigma=1.5, image_score="topk",
                    topk_fraction=0.02, normalize_maps="position", batch_size=8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The micro bundle, exported through the command line as a user would (which also verifies it)."""
    micro = make_bundle(tmp_path_factory.mktemp("export"), PARAMS, category="nut")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "diyt", "export", "--model", str(micro.bundle), "--format", "onnx"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    path = micro.bundle.with_suffix(".onnx")  # the default: DIR.onnx beside the bundle
    assert path.is_file() and str(path) in proc.stdout
    return micro, load_bundle(micro.bundle), path


@pytest.fixture(scope="module")
def pixels(exported):
    """The prepared test images of the category (and synthetic defects), as the model takes them: (N, S, S, 3)."""
    micro, bundle, _ = exported
    return np.stack([bundle.preprocess.load(p)[0] for p in micro.test_images])


def test_graph_has_a_dynamic_batch_and_names_its_outputs(exported):
    _, bundle, path = exported
    model = onnx.load(str(path))
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "image" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in model.graph.output] == ["score", "anomaly_map"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["diyt.weights_sha256"] == bundle.weights_sha256


def test_onnxruntime_matches_pytorch_on_test_images(exported, pixels):
    _, bundle, path = exported
    t_score, t_map = TorchScorer(bundle, torch.device("cpu"))(pixels)
    o_score, o_map = OnnxScorer(path)(pixels)
    assert o_map.shape == t_map.shape == (len(pixels), PREPARED, PREPARED)
    # float32 kernels of two runtimes (matmul blocking, fused attention, separable blurs) differ in the last
    # bits; relative 1e-4, and 1e-5 of the largest magnitude absolute: the z-scored maps cross zero
    atol = 1e-5 * float(np.abs(t_map).max())
    np.testing.assert_allclose(o_map, t_map, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(o_score, t_score, rtol=1e-4, atol=atol)
    assert PARITY_RTOL == 1e-4 and PARITY_ATOL == 1e-5  # the export's own check is the same
    threshold = bundle.thresholds.image
    assert ((o_score >= threshold) == (t_score >= threshold)).all()


def test_batch_size_changes_nothing(exported, pixels):
    _, _, path = exported
    scorer = OnnxScorer(path)
    together = scorer(pixels)
    alone = [scorer(pixels[i : i + 1]) for i in range(3)]
    atol = 1e-6 * float(np.abs(together[1]).max())
    for i, (score, anomaly_map) in enumerate(alone):
        np.testing.assert_allclose(score, together[0][i : i + 1], rtol=1e-5, atol=atol)
        np.testing.assert_allclose(anomaly_map, together[1][i : i + 1], rtol=1e-5, atol=atol)


def test_predict_with_onnx_gives_the_same_verdicts(exported, tmp_path):
    micro, bundle, path = exported
    check_onnx_matches(path, bundle)
    paths = find_inputs([str(micro.category / "test")])
    eager = predict(paths, bundle, TorchScorer(bundle, torch.device("cpu")), tmp_path / "eager", progress=False)
    ort = predict(paths, bundle, OnnxScorer(path), tmp_path / "ort", batch_size=3, progress=False)
    assert [p.verdict for p in ort.predictions] == [p.verdict for p in eager.predictions]
    np.testing.assert_allclose([p.score for p in ort.predictions], [p.score for p in eager.predictions], rtol=1e-4)


def test_an_onnx_file_of_other_weights_is_refused(exported, tmp_path):
    _, bundle, path = exported
    with pytest.raises(DiytError, match="exported from other weights than the bundle"):
        check_onnx_matches(path, dataclasses.replace(bundle, weights_sha256="0" * 64))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(DiytError, match=r"junk\.onnx: not a readable ONNX file"):
        check_onnx_matches(tmp_path / "junk.onnx", bundle)


def test_a_perceptual_bundle_predicts_what_the_evaluation_scored_and_is_not_exported(tmp_path):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, ssim_weight=0.3, perceptual_weight=0.01,
                        normalize_maps="position")
    micro = make_bundle(tmp_path, params)
    bundle = load_bundle(micro.bundle)
    assert bundle.scoring.perceptual_weight == 0.01
    ev = micro.evaluation
    score, maps = TorchScorer(bundle, torch.device("cpu"))(np.ascontiguousarray(ev.images))
    np.testing.assert_array_equal(score, ev.scores)
    np.testing.assert_array_equal(maps, ev.maps)
    with pytest.raises(DiytError, match=r"perceptual error \(eval.perceptual_weight 0.01\), which the ONNX graph"):
        export_onnx(bundle, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_usage_errors_exit_2(exported, tmp_path, capsys):
    micro, _, _ = exported
    for args, message in ((["--opset", "12"], "--opset 12: DiyT exports opsets 18 to"),
                          (["--out", str(tmp_path)], "a folder; name the .onnx file to write")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["export", "--model", str(micro.bundle), *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
