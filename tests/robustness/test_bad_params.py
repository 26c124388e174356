"""Bad params.yaml: unknown keys, wrong types and impossible combinations stop every stage before it writes,
in one line naming the key and what is allowed."""

from __future__ import annotations

import shutil

import pytest
import yaml

from clirun import call, refused, stage, untouched
from conftest import MICRO

STAGES = ("prepare", "pretrain", "finetune", "evaluate")


def model(**changes) -> dict:
    return {"model": {**MICRO["model"], **changes}}


@pytest.mark.parametrize("sections, message", [
    (model(depht=4), "unknown key 'model.depht' (allowed here: preset, target, backbone, feature_layers, feature_norm, norm"),
    ({"trian": {"seed": 1}}, "unknown key 'trian' (allowed here: data, model, train, eval)"),
    ({"train": {"pretrain": {"steps": 2, "batch_size": "big"}}},
     "train.pretrain.batch_size: Input should be a valid integer, unable to parse string as an integer (got 'big')"),
    ({"eval": {"sigma": [1.0]}}, "eval.sigma: Input should be a valid number (got [1.0])"),
    ({"data": {**MICRO["data"], "categories": "weave"}}, "data.categories: Input should be a valid tuple"),
    ({"model": {**MICRO["model"], "mask_ratio": 1.5}}, "model.mask_ratio: Input should be less than 1 (got 1.5)"),
    (model(patch_size=7), "model.patch_size: 7 does not divide image_size 32"),
    (model(aggregate_layers=[1, 3]), "model.aggregate_layers: layer 3 is deeper than the encoder (depth 2; "
                                     "allowed 1..2)"),
    (model(num_heads=5), "model.num_heads: 5 does not divide embed_dim 32"),
    ({"data": {**MICRO["data"], "image_size": 16}}, "data.image_size: 16 is smaller than the model's image_size 32"),
    ({"eval": {"num_masks": 3}}, "eval.num_masks: 3 does not divide the model's 16 patches; use one of 2, 4, 8, 16"),
    ({"eval": {"num_masks": 32}}, "eval.num_masks: 32 does not divide the model's 16 patches"),
], ids=["unknown-key", "unknown-section", "wrong-type", "wrong-type-list", "string-for-list", "out-of-range",
        "patch-not-dividing", "aggregation-deeper-than-encoder", "heads-not-dividing", "prepared-smaller-than-model",
        "num-masks-not-dividing", "more-masks-than-patches"])
@pytest.mark.parametrize("name", STAGES)
def test_bad_params_stop_every_stage(made, tmp_path, sections, message, name):
    params = tmp_path / "params.yaml"
    raw = {k: dict(v) for k, v in MICRO.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    params.write_text(yaml.safe_dump(raw))
    args = [params if a == made.params else a for a in getattr(made, f"{name}_args")()]  # made is only read
    args = [tmp_path / "out" if i and args[i - 1] in ("--out", "--metrics", "--bundle") else a
            for i, a in enumerate(args)]
    refused(call(stage(name), args), f"error: {params}: {message}")
    assert not (tmp_path / "out").exists()
    untouched(made.root)


@pytest.mark.parametrize("text, message", [
    ("data: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping of sections (data, model, train, eval)"),
])
def test_params_that_are_not_a_mapping(tmp_path, text, message):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    refused(call(stage("prepare"), ["--params", params, "--out", tmp_path / "out", "--cache", tmp_path / "c"]),
            f"{params}: {message}")
    assert not (tmp_path / "out").exists()


def test_params_that_cannot_be_read(tmp_path):
    folder, binary = tmp_path / "folder.yaml", tmp_path / "binary.yaml"
    folder.mkdir()
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    for params in (folder, binary):
        refused(call(stage("prepare"), ["--params", params, "--out", tmp_path / "out", "--cache", tmp_path / "c"]),
                f"{params}: cannot read it as a text file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_batch_larger_than_the_dataset(project, phase):
    """Known only once the data is read: the training stages name the key and the largest batch that fits."""
    out = project.pretrained if phase == "pretrain" else project.model
    train = {**MICRO["train"], phase: {**MICRO["train"][phase], "batch_size": 64}}
    project.set_params(train=train)
    shutil.rmtree(out)
    refused(call(stage(phase), getattr(project, f"{phase}_args")()),
            f"train.{phase}.batch_size: 64 is larger than the dataset (5 train images); lower it to at most 5")
    assert not out.exists()
    untouched(project.root)
