"""Multi-mask anomaly maps: each patch comes from the pass that hid it; scores, smoothing, thresholds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diyt.config import EvalParams, parse_params
from diyt.data.layout import read_manifest, write_category, write_manifest
from diyt.data.synthetic import generate
from diyt.eval.evaluate import evaluate_category
from diyt.eval.normalize import normalize_leave_one_out, normalize_maps, position_stats
from diyt.eval.scoring import (
    GMS_C, ScoringConfig, SeparableBlur, error_map, gradient_magnitude, image_scores, msgms_map, partitions,
    perceptual_error, reconstruct, score_images, smooth, ssim_map,
)
from diyt.model import build_model

MICRO = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    params = parse_params({"model": {**MICRO, "aggregate_layers": [1]}, "data": {"image_size": 64}})
    return build_model(params.model).eval()


def test_partitions_hide_every_patch_exactly_once_per_repeat():
    parts = partitions(64, ScoringConfig(num_masks=4, repeats=3, seed=7))
    assert parts.shape == (3, 4, 64)
    assert torch.equal(parts.sum(dim=1), torch.ones(3, 64, dtype=torch.long))
    assert not torch.equal(parts[0], parts[1])  # repeats use different partitions
    assert torch.equal(parts, partitions(64, ScoringConfig(num_masks=4, repeats=3, seed=7)))


@torch.no_grad()
def test_each_patch_comes_from_the_pass_that_hid_it(model):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    masks = partitions(model.num_patches, ScoringConfig(num_masks=4))[0]  # (4, 16)
    recon, target = reconstruct(model, images, masks)
    torch.testing.assert_close(target, images)  # the pixel target is the image itself
    got = model.patchify(recon).target  # (3, 16, T)
    for k in range(4):
        out = model(images, mask=masks[k].expand(3, -1))
        expected = model.denormalize(out.pred, out.target)
        hidden = masks[k]
        torch.testing.assert_close(got[:, hidden], expected[:, hidden], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_single_pass_scores_only_the_hidden_half(model):
    """K = 1, the plain MAE's scoring: the first of two complementary masks; its visible patches keep their
    target (error 0), its hidden ones the pass's prediction, exactly as in the two-pass reconstruction."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    single = partitions(model.num_patches, ScoringConfig(num_masks=1))[0]  # (1, 16)
    pair = partitions(model.num_patches, ScoringConfig(num_masks=2))[0]
    assert torch.equal(single[0], pair[0]) and int(single.sum()) == model.num_patches // 2
    one, _ = reconstruct(model, images, single)
    two, _ = reconstruct(model, images, pair)
    one, two, target = (model.patchify(t).target for t in (one, two, images))
    hidden = single[0]
    torch.testing.assert_close(one[:, hidden], two[:, hidden], rtol=1e-5, atol=1e-5)
    assert torch.equal(one[:, ~hidden], target[:, ~hidden])
    assert error_map(images, model.unpatchify(one), 0.0).gt(0).any()


@torch.no_grad()
def test_scores_do_not_depend_on_batching(model):
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    config = ScoringConfig(num_masks=2, repeats=2, sigma=1.0)
    together = score_images(model, images, config, out_size=64)
    alone = score_images(model, images[3:4], config, out_size=64)
    assert together.anomaly_map.shape == (5, 64, 64) and together.reconstruction.shape == (5, 3, 32, 32)
    torch.testing.assert_close(alone.score, together.score[3:4], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.anomaly_map, together.anomaly_map[3:4], rtol=1e-4, atol=1e-5)


def test_image_score_max_and_topk():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    maps[1, 9, 9] = 7.0
    assert image_scores(maps, "max", 0.0).tolist() == [5.0, 7.0]
    assert image_scores(maps, "topk", 0.03).tolist() == pytest.approx([4.0, 7 / 3])  # top 3 of 100 pixels


def test_smoothing_spreads_but_keeps_mass():
    maps = torch.zeros(1, 41, 41)
    maps[0, 20, 20] = 1.0
    blurred = smooth(maps, 2.0)
    assert blurred[0, 20, 20] < 1.0 and blurred.sum() == pytest.approx(1.0, abs=1e-4)
    # exp(-d^2 / (2 sigma^2)) at d = 2, sigma = 2
    assert blurred[0, 20, 22] == pytest.approx(float(np.exp(-0.5) * blurred[0, 20, 20]), rel=1e-3)
    assert torch.equal(smooth(maps, 0.0), maps)


def test_separable_blur_equals_torchvision_gaussian_blur_borders_included():
    from torchvision.transforms.v2.functional import gaussian_blur

    maps = torch.rand(3, 2, 40, 37, generator=torch.Generator().manual_seed(0))
    for size, sigma in ((11, 1.5), (33, 4.0), (9, 0.7)):
        expected = gaussian_blur(maps, [size, size], [sigma, sigma])
        torch.testing.assert_close(SeparableBlur(size, sigma)(maps), expected, rtol=0, atol=4e-6)  # float rounding
    torch.testing.assert_close(smooth(maps[0], 4.0), gaussian_blur(maps[0][:, None], [33, 33], [4.0, 4.0])[:, 0],
                               rtol=0, atol=4e-6)


def test_perceptual_error_compares_imagenet_features_of_the_upsampled_images():
    from diyt.model.backbone import load_backbone

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = x.clone()
    y[:, :, 20:28, 4:12] = 0.5  # a flat square in the lower left of both images
    assert torch.equal(perceptual_error(x, x), torch.zeros(2, 32, 32))
    error = perceptual_error(x, y)
    # by hand: stride-16 features (timm index 3) of the TF-normalised images at 64 px, squared, channel mean, resized
    net = load_backbone("tf_efficientnet_lite0", [3])
    up = [torch.nn.functional.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False) for t in (x, y)]
    fx, fy = (net((t * 255 - 127) / 128)[0] for t in up)
    cells = (fx - fy).square().mean(dim=1, keepdim=True)  # (2, 1, 4, 4)
    expected = torch.nn.functional.interpolate(cells, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(error, expected, rtol=1e-4, atol=1e-5)
    assert error[:, 20:28, 4:12].mean() > 3 * error[:, 4:12, 20:28].mean()  # it is where the images differ
    # error_map adds it, weighted, to the mix, on the pixels: the model's input normalisation undone
    from diyt.data.dataset import normalize

    nx, ny = normalize(x, "imagenet"), normalize(y, "imagenet")
    mixed = error_map(nx, ny, 0.3, 0.2, perceptual_weight=0.01, normalize="imagenet")
    torch.testing.assert_close(mixed, error_map(nx, ny, 0.3, 0.2) + 0.01 * error, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="the perceptual error needs the inputs' normalisation"):
        error_map(nx, ny, 0.3, 0.2, perceptual_weight=0.01)  # never a silent guess at what the pixels were


def test_error_map_l2_and_ssim():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, :, 5, 7] += 0.3
    l2 = error_map(x, y, 0.0)
    assert l2[0, 5, 7] == pytest.approx(0.09) and l2.sum() == pytest.approx(2 * 0.09)
    assert torch.allclose(ssim_map(x, x), torch.ones(1), atol=1e-4)
    mixed = error_map(x, y, 0.5)
    assert (mixed >= 0).all() and mixed[0, 5, 7] > mixed[0, 20, 20]


def test_gradient_magnitude_of_a_ramp():
    ramp = torch.arange(8.0).mul(0.1).expand(1, 1, 6, 8)  # +0.1 per column
    g = gradient_magnitude(ramp)[0, 0]
    # Prewitt: (left - right) / 3 summed over 3 rows = 0.2 inside; a replicated border sees half the step
    torch.testing.assert_close(g[:, 1:-1], torch.full((6, 6), 0.2))
    torch.testing.assert_close(g[:, [0, -1]], torch.full((6, 2), 0.1))
    torch.testing.assert_close(gradient_magnitude(ramp.transpose(-1, -2))[0, 0], g.T)  # rows alike


def test_msgms_is_one_for_equal_images_and_falls_where_gradients_differ():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, :2] = torch.tensor([0.0, 1.0])  # each image spans exactly [0, 1]: error_map's rescaling is a no-op
    torch.testing.assert_close(msgms_map(x, x), torch.ones_like(x))
    flat = torch.full((1, 1, 32, 32), 0.5)
    ramp = torch.arange(32.0).div(320).expand(1, 1, 32, 32)  # +1/320 per column
    # pooled by f the ramp steps f/320 per column, so its inner gradient is 2f/320 against the flat image's 0:
    # GMS = c / (g^2 + c) at each scale, the centre pixel inner at all four
    expected = sum(GMS_C / ((2 * f / 320) ** 2 + GMS_C) for f in (1, 2, 4, 8)) / 4
    assert float(msgms_map(ramp, flat)[0, 0, 16, 16]) == pytest.approx(expected, rel=1e-4)
    y = x.clone()
    y[:, :, 12:20, 12:20] = y[:, :, 12:20, 12:20].mean()  # a flat patch where x has texture
    error = error_map(x, y, 0.0, 1.0)  # 1 - MSGMS only
    assert error[:, 14:18, 14:18].mean() > 4 * error[:, :4, :4].mean()
    torch.testing.assert_close(error, 1 - msgms_map(x, y).mean(dim=1))
    mixed = error_map(x, y, 0.25, 0.5)
    l2 = (x - y).square().mean(dim=1)
    ssim = (1 - ssim_map(x, y).mean(dim=1)) / 2
    torch.testing.assert_close(mixed, 0.25 * l2 + 0.25 * ssim + 0.5 * error)


def test_thresholds_ignore_test_labels(tmp_path, model):
    samples = generate("weave", n_train=12, n_test_good=4, n_test_defect=4, image_size=64, seed=0)
    root = tmp_path / "weave"
    write_category(samples, root, 64, 0.25, 0)
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8)
    first = evaluate_category(model, root, "imagenet", params, torch.device("cpu"))
    assert first.maps.shape == (8, 64, 64) and first.metrics["num_val"] == 3

    rows = read_manifest(root)  # relabel the test set: normals become "defective" and back
    flipped = [dataclasses.replace(r, label=1 - r.label) if r.split == "test" else r for r in rows]
    write_manifest(root / "manifest.csv", flipped)
    second = evaluate_category(model, root, "imagenet", params, torch.device("cpu"))
    assert second.image_threshold == first.image_threshold
    assert second.pixel_threshold == first.pixel_threshold
    assert second.metrics["image_auroc"] == pytest.approx(1 - first.metrics["image_auroc"])


def test_evaluation_outputs(tmp_path, model):
    import json

    from diyt.eval.outputs import write_evaluation

    samples = generate("nut", n_train=8, n_test_good=3, n_test_defect=5, image_size=64, seed=1)
    write_category(samples, tmp_path / "nut", 64, 0.25, 0)
    ev = evaluate_category(model, tmp_path / "nut", "imagenet", EvalParams(num_masks=2, sigma=1.0),
                           torch.device("cpu"))
    out = tmp_path / "report"
    write_evaluation(ev, out / "metrics.json", out / "plots", out / "figures")
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "image_ap", "f1", "f1_max", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_defect_type_auroc"]) == {"crack", "hole", "missing", "scratch", "stain"}
    roc = json.loads((out / "plots" / "roc.json").read_text())
    assert roc[0] == {"fpr": 0.0, "tpr": 0.0} and roc[-1] == {"fpr": 1.0, "tpr": 1.0}
    assert set(json.loads((out / "plots" / "pro.json").read_text())[0]) == {"fpr", "pro"}
    hist = json.loads((out / "plots" / "hist_defective.json").read_text())
    assert sum(row["count"] for row in hist) == 5
    scores = json.loads((out / "plots" / "scores.json").read_text())
    assert [s["score"] for s in scores] == pytest.approx(ev.scores.tolist())
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert len(figures) == 8 and "good_000.png" in figures and "crack_000.png" in figures


# ------------------------------------------------------------------- per-position normalisation

def _val_maps(n: int = 12, size: int = 16) -> torch.Tensor:
    """Normal maps (n, size, size) whose error grows to the right, as an object's edge would."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.1, 2.0, size).expand(size, size)
    return ramp * (1 + 0.1 * torch.randn(n, size, size, generator=g))


def test_position_stats_are_the_per_pixel_mean_and_floored_std() -> None:
    maps = _val_maps()
    stats = position_stats(maps, std_floor=0.1)
    std = maps.std(dim=0)
    assert torch.allclose(stats.mean, maps.mean(dim=0), atol=1e-6)
    assert torch.allclose(stats.scale, std + 0.1 * std.mean(), atol=1e-6)


def test_normalisation_evens_out_a_position_that_is_always_hard() -> None:
    val, test = _val_maps(), _val_maps()[:4].clone()
    test[:, 8, 2] += 1.0  # a defect where normal error is low
    stats = position_stats(val, std_floor=0.1)
    raw_top = test.flatten(1).argmax(dim=1)
    z_top = normalize_maps(test, stats).flatten(1).argmax(dim=1)
    assert (raw_top != 8 * 16 + 2).all()  # raw: the hard right edge wins
    assert (z_top == 8 * 16 + 2).all()  # normalised: the defect wins


def test_normal_maps_become_zero_mean_unit_scale() -> None:
    val = _val_maps(n=200)
    z = normalize_maps(val, position_stats(val, std_floor=1e-6))
    assert z.mean(dim=0).abs().max() < 1e-4
    assert torch.allclose(z.std(dim=0), torch.ones(16, 16), atol=1e-3)


def test_leave_one_out_matches_statistics_without_the_map() -> None:
    val = _val_maps(n=6)
    z = normalize_leave_one_out(val, std_floor=0.1)
    for i in range(len(val)):
        others = torch.cat([val[:i], val[i + 1 :]])
        expected = normalize_maps(val[i : i + 1], position_stats(others, std_floor=0.1))[0]
        assert torch.allclose(z[i], expected, atol=1e-5)


def test_statistics_need_enough_maps() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        position_stats(torch.zeros(1, 4, 4), std_floor=0.1)
    with pytest.raises(ValueError, match="at least 3"):
        normalize_leave_one_out(torch.zeros(2, 4, 4), std_floor=0.1)


def test_position_normalised_evaluation_takes_statistics_from_validation_only(tmp_path, model):
    samples = generate("nut", n_train=12, n_test_good=4, n_test_defect=4, image_size=64, seed=2)
    root = tmp_path / "nut"
    write_category(samples, root, 64, 0.25, 0)
    params = EvalParams(num_masks=2, sigma=1.0, batch_size=8, normalize_maps="position")
    raw = evaluate_category(model, root, "imagenet", EvalParams(num_masks=2, sigma=1.0, batch_size=8),
                            torch.device("cpu"))
    first = evaluate_category(model, root, "imagenet", params, torch.device("cpu"))
    assert first.position_stats is not None and first.position_stats.mean.shape == (64, 64)
    expected = normalize_maps(torch.from_numpy(raw.maps), first.position_stats).numpy()
    np.testing.assert_allclose(first.maps, expected, rtol=1e-5, atol=1e-5)

    rows = read_manifest(root)  # relabelling the test set moves neither the statistics nor the thresholds
    write_manifest(root / "manifest.csv",
                   [dataclasses.replace(r, label=1 - r.label) if r.split == "test" else r for r in rows])
    second = evaluate_category(model, root, "imagenet", params, torch.device("cpu"))
    torch.testing.assert_close(second.position_stats.mean, first.position_stats.mean)
    assert second.image_threshold == first.image_threshold
