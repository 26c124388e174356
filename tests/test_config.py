"""params.yaml validation: each bad key stops with one line naming it and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest
import yaml

from diyt.config import ConfigError, Params, load_params, parse_params


def test_committed_params_are_valid(root):
    params = load_params(root / "params.yaml")
    assert params.data.source == "synthetic" and params.model.target == "features"
    assert params.model.arch.image_size == 256 and params.model.arch.grid_size == 16


def test_defaults_are_frozen():
    params = parse_params({})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.model.norm = "layernorm"  # type: ignore[misc]
    assert params.model.norm == "dyt"


def test_preset_overrides_reach_the_arch():
    params = parse_params({"model": {"preset": "seed", "depth": 12, "embed_dim": 384, "num_heads": 6},
                           "data": {"image_size": 224}})
    arch = params.model.arch
    assert (arch.depth, arch.embed_dim, arch.num_heads, arch.decoder_depth, arch.image_size) == (12, 384, 6, 2, 224)


@pytest.mark.parametrize("raw, expected", [
    ({"model": {"foo": 1}}, "unknown key 'model.foo' (allowed here: preset, target, backbone, feature_layers, feature_norm, norm"),
    ({"bogus": {}}, "unknown key 'bogus' (allowed here: data, model, train, eval)"),
    ({"train": {"pretrain": {"lr": 1}}}, "unknown key 'train.pretrain.lr' (allowed here: epochs, steps,"),
    ({"model": {"norm": "batchnorm"}}, "model.norm: Input should be 'dyt' or 'layernorm' (got 'batchnorm')"),
    ({"model": {"mask_ratio": 1.0}}, "model.mask_ratio: Input should be less than 1 (got 1.0)"),
    ({"model": {"mask_ratio": 0}}, "model.mask_ratio: Input should be greater than 0 (got 0)"),
    ({"model": {"patch_size": 7}}, "model.patch_size: 7 does not divide image_size 128"),
    ({"model": {"aggregate_layers": [2, 9]}}, "model.aggregate_layers: layer 9 is deeper than the encoder"),
    ({"train": {"pretrain": {"batch_size": "many"}}}, "train.pretrain.batch_size: Input should be a valid integer"),
    ({"data": {"categories": ["bottle"]}}, "data.categories: 'bottle' is not a category of synthetic (allowed: weave, stone, nut)"),
    ({"data": {"categories": []}}, "data.categories: give at least one category"),
    ({"data": {"source": "folder"}}, "data.path: data.source=folder needs data.path"),
    ({"data": {"source": "kaggle"}}, "data.source: Input should be 'synthetic', 'mvtec_ad', 'btad', 'magnetic_tile' or 'folder'"),
    ({"data": {"image_size": 64}}, "data.image_size: 64 is smaller than the model's image_size 128"),
])
def test_bad_params_name_the_key(raw, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(raw, "params.yaml")
    message = str(info.value)
    assert message.startswith("params.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_a_mvtec_category_is_valid_for_mvtec():
    params = parse_params({"data": {"source": "mvtec_ad", "categories": ["bottle", "screw"]}})
    assert params.data.dataset == "mvtec_ad"


def test_digest_tracks_every_param():
    assert parse_params({}).digest() == Params().digest()
    assert parse_params({"eval": {"sigma": 2.0}}).digest() != Params().digest()


def test_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_a_stage_reports_a_bad_param_without_traceback(root, tmp_path):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"] = {"mask_ratio": 1.5}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    out = tmp_path / "prepared"
    proc = subprocess.run([sys.executable, str(root / "stages" / "prepare.py"), "--params", str(bad),
                           "--out", str(out), "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: model.mask_ratio: Input should be less than 1 (got 1.5)"
    assert "Traceback" not in proc.stderr
    assert not out.exists()
