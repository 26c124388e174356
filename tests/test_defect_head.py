"""The defect head: synthetic defects where it says they are, a head that learns to find them, carried by bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diyt.bundle import DEFECT_HEAD, HEAD_STATS, load_bundle
from diyt.config import EvalParams, parse_params
from diyt.data.dataset import AnomalyDataset, normalize
from diyt.data.layout import write_category
from diyt.data.synthetic import generate
from diyt.errors import ConfigError, DataError
from diyt.eval import metrics
from diyt.eval.defect_head import DefectHead, fit_defect_head, synthesize
from diyt.eval.evaluate import image_batches, score_batch
from diyt.eval.normalize import normalize_maps
from diyt.eval.scoring import partitions
from diyt.model import build_model
from micro_bundle import MICRO_FEATURES, assert_part_guarded, assert_scores_like_evaluation, make_bundle

FEATURES = {"model": MICRO_FEATURES, "data": {"image_size": 64, "normalize": "tf"}}


def test_synthetic_defects_change_only_what_their_masks_mark():
    images = torch.randn(200, 3, 64, 64)
    out, masks = synthesize(images, torch.Generator().manual_seed(0))
    changed = (out != images).any(dim=1)
    assert not changed[masks == 0].any()  # outside its mask an image is untouched, bit for bit
    with_defect = masks.flatten(1).any(dim=1)
    assert 0.75 < with_defect.float().mean() < 0.95  # most get one (DEFECT_FRACTION), some stay normal
    assert (changed[with_defect].flatten(1).float().mean(1) > 0.5 * masks[with_defect].flatten(1).mean(1)).all()
    area = masks[with_defect].flatten(1).mean(1)
    assert area.min() >= (2 / 64) ** 2 and area.max() <= 1  # patches of 2 px a side at 64 px up to whole bands
    again, again_masks = synthesize(images, torch.Generator().manual_seed(0))
    assert torch.equal(again, out) and torch.equal(again_masks, masks)  # the generator makes every draw


@pytest.fixture(scope="module")
def weave(tmp_path_factory):
    """A prepared synthetic weave category at 128 px and a feature model seeing it on an 8 x 8 grid."""
    tmp = tmp_path_factory.mktemp("head")
    write_category(generate("weave", n_train=24, n_test_good=2, n_test_defect=2, image_size=128, seed=0),
                   tmp / "weave", 128, 0.25, 0)
    torch.manual_seed(0)
    model = build_model(parse_params({"model": {**MICRO_FEATURES, "image_size": 128},
                                      "data": {"image_size": 128, "normalize": "tf"}}).model).eval()
    return model, image_batches(AnomalyDataset(tmp / "weave", ["train"], 128, "tf"), 8)


def test_the_head_learns_to_find_synthetic_defects_in_unseen_images(weave):
    model, batches = weave
    head = fit_defect_head(model.source, batches, copies=2, steps=150, batch_size=16, seed=0,
                           device=torch.device("cpu"))
    again = fit_defect_head(model.source, batches, copies=2, steps=150, batch_size=16, seed=0,
                            device=torch.device("cpu"))
    for name, tensor in head.state_dict().items():  # a seed gives the same head
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)
    # fresh defects (another seed) in the same normals: the cells the defects cover mostly, against the clean ones
    images, masks = synthesize(torch.cat(batches), torch.Generator().manual_seed(1))
    covered = torch.nn.functional.adaptive_avg_pool2d(masks[:, None], model.source.grid_size)[:, 0].flatten()
    with torch.no_grad():
        cells = model.source.feature_map(images)
        found, untrained = head(cells).flatten(), DefectHead(cells.shape[1]).eval()(cells).flatten()
    labels = (covered > 0.5).numpy()
    keep = ((covered > 0.5) | (covered == 0)).numpy()
    auroc = metrics.image_auroc(labels[keep], found.numpy()[keep])
    chance = metrics.image_auroc(labels[keep], untrained.numpy()[keep])
    assert auroc > 0.7 and auroc > chance + 0.2, (auroc, chance)  # measured 0.77 against 0.41: the learning


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, normalize_maps="position", error_level="context",
                        level_ring=3, level_hole=1, level_steps=20, error_whitening="position", error_scale="image",
                        defect_head="synthetic", defect_head_weight=0.5, defect_head_steps=20, defect_head_copies=1)
    return make_bundle(tmp_path_factory.mktemp("head"), params, model=MICRO_FEATURES, normalize="tf", prepared=64)


def test_a_bundle_with_a_defect_head_predicts_and_exports_what_the_evaluation_scored(micro, tmp_path):
    ev = micro.evaluation
    assert isinstance(ev.defect_head, DefectHead) and ev.head_seconds > 0 and ev.head_stats is not None
    manifest = json.loads((micro.bundle / "bundle.json").read_text())
    assert manifest["scoring"]["defect_head"] == "synthetic" and manifest["scoring"]["defect_head_weight"] == 0.5
    bundle = load_bundle(micro.bundle)
    assert bundle.head_weight == 0.5
    for name, tensor in ev.defect_head.state_dict().items():
        torch.testing.assert_close(bundle.defect_head.state_dict()[name], tensor, rtol=0, atol=0)
    assert_scores_like_evaluation(micro, tmp_path)


def test_the_heads_map_is_added_with_its_weight(micro):
    """The written maps are the reconstruction's z-scores plus the weight times the head's own z-scores."""
    bundle = load_bundle(micro.bundle)
    pixels = torch.from_numpy(np.ascontiguousarray(micro.evaluation.images)).permute(0, 3, 1, 2).float() / 255
    scores = score_batch(bundle.model, normalize(pixels, "tf"), bundle.scoring, bundle.out_size,
                         partitions(bundle.model.num_patches, bundle.scoring), torch.device("cpu"), "tf",
                         bundle.error_level, bundle.whitening, bundle.defect_head)
    plain = normalize_maps(scores.anomaly_map, bundle.position)
    head = normalize_maps(scores.head_map, bundle.head_position)
    assert head.abs().max() > 0.1  # the head's map is not flat
    np.testing.assert_allclose(micro.evaluation.maps, (plain + 0.5 * head).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("part", [DEFECT_HEAD, HEAD_STATS])
def test_a_bundle_missing_or_tampering_its_head_is_refused(micro, part, tmp_path):
    assert_part_guarded(micro.bundle, part, tmp_path)


def test_the_defect_head_needs_features_and_position_statistics(tmp_path):
    with pytest.raises(ConfigError, match="eval.defect_head: it segments the backbone's feature cells"):
        parse_params({"model": {"target": "pixels"}, "data": {"normalize": "imagenet"},
                      "eval": {"defect_head": "synthetic", "normalize_maps": "position"}})
    with pytest.raises(ConfigError, match="defect_head: its map is added to the reconstruction's as z-scores"):
        parse_params({**FEATURES, "eval": {"defect_head": "synthetic", "normalize_maps": "none"}})
    for bad in ({"defect_head_weight": 0}, {"defect_head_steps": 0}, {"defect_head": "real"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            parse_params({**FEATURES, "eval": {"normalize_maps": "position", **bad}})
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, normalize_maps="position", defect_head="synthetic")
    with pytest.raises(DataError, match="eval.defect_head: it segments the backbone's feature cells"):
        make_bundle(tmp_path, params)  # the micro pixel model
    assert not (tmp_path / "bundle").exists()
