"""The error level: a ring of context that never sees its hole, fitted to the expected error, carried by bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diyt.bundle import ERROR_LEVEL, SCORE_STATS
from diyt.config import EvalParams, parse_params
from diyt.errors import ConfigError, DataError
from diyt.eval.level import ErrorLevel, fit_error_level, level_loss
from diyt.eval.scoring import ScoringConfig, score_images
from diyt.model import build_model
from micro_bundle import MICRO_FEATURES, assert_part_guarded, assert_scores_like_evaluation, make_bundle

FEATURES = {"model": MICRO_FEATURES, "data": {"image_size": 64, "normalize": "tf"}}


def test_the_level_never_sees_its_hole_and_sees_its_ring():
    torch.manual_seed(0)
    level = ErrorLevel(channels=3, ring=5, hole=3).eval()
    maps = torch.randn(1, 3, 9, 9)
    base = level(maps)[0]
    for dr, dc in [(0, 0), (1, 1), (-1, 0), (0, 2), (-2, -2), (2, 1)]:
        moved = maps.clone()
        moved[0, :, 4 + dr, 4 + dc] += 10.0
        changed = level(moved)[0]
        inside = max(abs(dr), abs(dc)) <= 1  # in the 3 x 3 hole of the centre cell (4, 4)
        assert torch.equal(changed[4, 4], base[4, 4]) == inside, (dr, dc)
    for ring, hole in [(4, 1), (5, 5), (5, 0), (3, 2)]:
        with pytest.raises(ValueError, match="must be odd with hole < ring"):
            ErrorLevel(3, ring, hole)


def test_a_fitted_level_predicts_the_expected_error_of_its_context():
    # two kinds of surface, told apart by one channel: errors exponential with mean 1 on the smooth, 4 on the rough
    gen = torch.Generator().manual_seed(0)
    rough = torch.arange(64) % 2  # (N,)
    maps = torch.cat([rough.float().view(-1, 1, 1, 1).expand(-1, 1, 8, 8), torch.randn(64, 1, 8, 8, generator=gen)], 1)
    mean = (1.0 + 3.0 * rough.float()).view(-1, 1, 1)
    errors = -torch.log(torch.rand(64, 8, 8, generator=gen)) * mean  # Exp(mean)
    before = torch.get_rng_state()
    level = fit_error_level(maps, errors, ring=3, hole=1, steps=300, seed=0)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone
    expected = torch.exp(level(maps))
    for kind, truth in [(0, 1.0), (1, 4.0)]:
        fitted = float(expected[rough == kind].mean())
        assert abs(fitted / truth - 1) < 0.15, (kind, fitted)
    # the loss is the exponential likelihood: at the true means it is lower than at a uniform guess
    assert level_loss(torch.log(mean).expand(-1, 8, 8), errors) < level_loss(torch.zeros(64, 8, 8), errors)
    again = fit_error_level(maps, errors, ring=3, hole=1, steps=300, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(level.state_dict().values(), again.state_dict().values()))


def test_the_image_score_is_the_error_over_its_level_and_the_map_is_unchanged():
    torch.manual_seed(0)
    params = parse_params(FEATURES).model
    model = build_model(params).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    config = ScoringConfig(sigma=1.0)
    plain = score_images(model, images, config, out_size=64)
    level = ErrorLevel(model.source.target_dim, 3, 1).eval()
    torch.nn.init.zeros_(level.head[3].weight)
    torch.nn.init.constant_(level.head[3].bias, float(np.log(2.0)))  # a level of 2 everywhere
    leveled = score_images(model, images, config, out_size=64, level=level)
    assert torch.equal(leveled.anomaly_map, plain.anomaly_map) and plain.score_map is None
    torch.testing.assert_close(leveled.score_map, plain.anomaly_map / 2)
    torch.testing.assert_close(leveled.score, plain.score / 2)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, normalize_maps="position", error_level="context",
                        level_ring=3, level_hole=1, level_steps=20)
    return make_bundle(tmp_path_factory.mktemp("level"), params, model=MICRO_FEATURES, normalize="tf",
                       prepared=64)


def test_a_bundle_with_an_error_level_predicts_and_exports_what_the_evaluation_scored(micro, tmp_path):
    ev = micro.evaluation
    assert ev.error_level is not None and ev.score_stats is not None
    assert ev.level_seconds > 0 and not any("seconds" in key for key in ev.metrics)  # wall time: not a metric
    manifest = json.loads((micro.bundle / "bundle.json").read_text())
    assert (manifest["scoring"]["error_level"], manifest["scoring"]["level_ring"]) == ("context", 3)
    assert_scores_like_evaluation(micro, tmp_path)


@pytest.mark.parametrize("part", [ERROR_LEVEL, SCORE_STATS])
def test_a_bundle_missing_or_tampering_its_level_is_refused(micro, tmp_path, part):
    assert_part_guarded(micro.bundle, part, tmp_path)


@pytest.mark.parametrize("eval_params, message", [
    ({"level_ring": 12}, "level_ring 12, level_hole 9: both must be odd"),
    ({"level_ring": 9, "level_hole": 9}, "the hole smaller than the ring"),
    ({"level_steps": 0}, "level_steps"),
])
def test_impossible_level_settings_are_named(eval_params, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({**FEATURES, "eval": {"error_level": "context", **eval_params}})


def test_the_level_needs_feature_cells():
    with pytest.raises(ConfigError, match="eval.error_level: the error level reads the backbone's feature cells"):
        parse_params({"model": {"target": "pixels"}, "data": {"normalize": "imagenet"},
                      "eval": {"error_level": "context"}})


def test_an_evaluation_of_a_pixel_model_refuses_the_level(tmp_path):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, error_level="context", level_ring=3, level_hole=1)
    with pytest.raises(DataError, match="eval.error_level: the error level reads the backbone's feature cells"):
        make_bundle(tmp_path, params)  # the micro pixel model
    assert not (tmp_path / "bundle").exists()
