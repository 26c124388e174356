"""Residual whitening and the per-image error scale: the math by hand, carried by bundles, refused where it can't be."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diyt.bundle import WHITENING, load_bundle
from diyt.config import EvalParams, parse_params
from diyt.errors import ConfigError, DataError
from diyt.eval.scoring import ScoringConfig, score_images
from diyt.eval.whiten import ResidualWhitening, fit_whitening, scaled_by_image
from diyt.model import build_model
from micro_bundle import MICRO_FEATURES, assert_part_guarded, assert_scores_like_evaluation, make_bundle

FEATURES = {"model": MICRO_FEATURES, "data": {"image_size": 64, "normalize": "tf"}}


def test_unfitted_whitening_is_the_plain_squared_error():
    residual = torch.randn(4, 6, 3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ResidualWhitening(6, 3, 5)(residual), residual.square().mean(dim=1))


def test_fitted_whitening_is_the_mahalanobis_distance_of_each_position():
    gen = torch.Generator().manual_seed(0)
    # two positions with their own correlated Gaussians: channel 1 follows channel 0 at the first only
    base = torch.randn(200, 3, 1, 2, generator=gen, dtype=torch.float64)
    base[:, 1, 0, 0] = 2 * base[:, 0, 0, 0] + 0.1 * base[:, 1, 0, 0]
    base[:, 2] = base[:, 2] * 5 + 3
    shrink = 0.05
    whitening = fit_whitening(base, shrink)
    query = torch.randn(7, 3, 1, 2, generator=gen, dtype=torch.float64)
    got = whitening(query.float())
    for pos in range(2):  # by hand: r^T S^-1 r / C with S the shrunk sample covariance, numpy's inverse
        x = base[:, :, 0, pos].numpy()
        cov = np.cov(x, rowvar=False)
        cov = (1 - shrink) * cov + shrink * np.trace(cov) / 3 * np.eye(3)
        r = query[:, :, 0, pos].numpy() - x.mean(axis=0)
        want = np.einsum("nc,cd,nd->n", r, np.linalg.inv(cov), r) / 3
        np.testing.assert_allclose(got[:, 0, pos].numpy(), want, rtol=1e-4)
    # unshrunk, its own train residuals come out white: their whitened error averages (N - 1) / N per channel
    unshrunk = fit_whitening(base, 1e-9)
    assert float(unshrunk(base.float()).double().mean()) == pytest.approx(199 / 200, rel=1e-4)


def test_whitening_needs_two_residuals():
    with pytest.raises(ValueError, match="at least 2 train images"):
        fit_whitening(torch.zeros(1, 3, 2, 2), 0.05)


def test_each_map_is_divided_by_its_own_quantile():
    errors = torch.stack([torch.arange(1.0, 17.0).view(4, 4), 2 * torch.arange(1.0, 17.0).view(4, 4)])  # (N=2, 4, 4)
    # the lower quartile of 1..16, linearly interpolated: 1 + 0.25 * 15 = 4.75 (and twice that)
    torch.testing.assert_close(scaled_by_image(errors, 0.25), torch.arange(1.0, 17.0).view(4, 4).expand(2, 4, 4) / 4.75)
    torch.testing.assert_close(scaled_by_image(errors[None], 0.5)[0], errors / torch.tensor([8.5, 17.0])[:, None, None])


def test_scoring_applies_the_whitening_and_the_scale():
    torch.manual_seed(0)
    model = build_model(parse_params(FEATURES).model).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    plain = score_images(model, images, ScoringConfig(sigma=0.0), out_size=4)
    whitening = ResidualWhitening(model.source.target_dim, *model.source.grid_size)
    whitening.inv_chol.mul_(0.5)  # whitened by a covariance of 4 I: a quarter of the plain error
    torch.testing.assert_close(score_images(model, images, ScoringConfig(sigma=0.0), out_size=4,
                                            whitening=whitening).anomaly_map, plain.anomaly_map / 4)
    scaled = score_images(model, images, ScoringConfig(sigma=0.0, error_scale="image", error_scale_quantile=0.5),
                          out_size=4)
    median = plain.anomaly_map.flatten(1).quantile(0.5, dim=1)
    torch.testing.assert_close(scaled.anomaly_map, plain.anomaly_map / median[:, None, None])


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, normalize_maps="position", error_level="context",
                        level_ring=3, level_hole=1, level_steps=20, error_whitening="position",
                        error_scale="image")
    return make_bundle(tmp_path_factory.mktemp("whiten"), params, model=MICRO_FEATURES, normalize="tf", prepared=64)


def test_a_whitened_bundle_predicts_and_exports_what_the_evaluation_scored(micro, tmp_path):
    ev = micro.evaluation
    assert ev.whitening is not None and ev.error_level is not None and ev.whitening_seconds > 0
    assert not torch.equal(ev.whitening.inv_chol, ResidualWhitening(*ev.whitening.mean.shape[::-1], 1).inv_chol
                           .expand_as(ev.whitening.inv_chol))  # fitted, not the identity
    manifest = json.loads((micro.bundle / "bundle.json").read_text())
    assert (manifest["scoring"]["error_whitening"], manifest["scoring"]["error_scale"]) == ("position", "image")
    bundle = load_bundle(micro.bundle)
    torch.testing.assert_close(bundle.whitening.inv_chol, ev.whitening.inv_chol, rtol=0, atol=0)
    assert_scores_like_evaluation(micro, tmp_path)


def test_a_bundle_missing_or_tampering_its_whitening_is_refused(micro, tmp_path):
    assert_part_guarded(micro.bundle, WHITENING, tmp_path)


def test_whitening_needs_the_feature_target(tmp_path):
    with pytest.raises(ConfigError, match="eval.error_whitening: it whitens the feature residual and model.target is "
                                          "pixels"):
        parse_params({"model": {"target": "pixels"}, "data": {"normalize": "imagenet"},
                      "eval": {"error_whitening": "position"}})
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, error_whitening="position")
    with pytest.raises(DataError, match="eval.error_whitening: it whitens the feature residual"):
        make_bundle(tmp_path, params)  # the micro pixel model
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("eval_params, message", [
    ({"whitening_shrinkage": 0}, "whitening_shrinkage"),
    ({"error_scale_quantile": 1.0}, "error_scale_quantile"),
    ({"error_scale": "tile"}, "error_scale"),
])
def test_impossible_whitening_settings_are_named(eval_params, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({**FEATURES, "eval": eval_params})
