"""The benchmarks' own logic: the ablation's rows and the file the report reads, the timm speed peer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from diyt.config import ModelParams, load_params
from diyt.model import build_model
from diyt.report.ablation import read_ablation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))


def test_each_ablation_row_adds_one_seed_feature_to_the_plain_mae(benchmarks):
    from ablation import PLAIN, ROWS

    params = load_params(ROOT / "params.yaml").model_dump(mode="json")

    def default(key: str) -> object:
        section, name = key.split(".")
        return params[section][name]

    assert all(default(key) != value for key, value in PLAIN.items())  # the plain MAE is none of DiyT's choices
    added = {name: {k for k in PLAIN if overrides.get(k, default(k)) != PLAIN[k]}
             for name, (_, overrides) in ROWS.items()}
    assert added.pop("plain-mae") == set() and added.pop("diyt-full") == set(PLAIN)
    assert sorted(len(keys) for keys in added.values()) == [1] * len(PLAIN)
    assert set().union(*added.values()) == set(PLAIN)  # every feature has its row


def test_set_overrides_parse_as_dvc_does_and_name_a_bad_one(benchmarks):
    from pipeline import with_overrides

    from diyt.config import ConfigError

    raw = {"data": {"source": "synthetic", "categories": ["weave"]}, "train": {"seed": 0}}
    assert with_overrides(raw, ["data.categories=[stone, nut]", "train.seed=3", "eval.sigma=2.5"]) == {
        "data": {"source": "synthetic", "categories": ["stone", "nut"]}, "train": {"seed": 3}, "eval": {"sigma": 2.5}}
    assert raw["data"]["categories"] == ["weave"]  # the original is not touched
    for item, message in [("data.categories=[a", "--set data.categories=[a: not a YAML value"),
                          ("data.source.kind=1", "--set data.source.kind: data.source is a value, not a section"),
                          ("train.seed", "--set 'train.seed': expected key=value")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            with_overrides(raw, [item])


SMALL = ["data.categories=[weave]", "data.synthetic.n_train=32", "data.synthetic.n_test_good=6",
         "data.synthetic.n_test_defect=6", "data.val_fraction=0.15", "train.pretrain.steps=2", "train.finetune.steps=1",
         "train.pretrain.batch_size=8", "train.finetune.batch_size=8", "eval.level_steps=5",
         "eval.defect_head_steps=5", "eval.defect_head_copies=1"]
SMALL_ARGS = [a for s in SMALL for a in ("--set", s)]


def test_ablation_writes_what_the_report_reads(benchmarks, tmp_path, capsys):
    from ablation import main

    out = tmp_path / "ablation.json"
    args = ["--params", str(ROOT / "params.yaml"), "--out", str(out), "--work", str(tmp_path / "work"), *SMALL_ARGS]
    main(["--rows", "plain-mae", "plain+complementary", "--seeds", "2", *args])
    single, complementary = read_ablation(out).rows
    assert single.seeds == complementary.seeds == 2 and single.image_auroc_std is not None
    assert single.overrides["eval.num_masks"] == 1 and complementary.overrides["eval.num_masks"] == 2
    # the two rows differ only in scoring: one training per seed served both
    assert single.train_images_per_s == complementary.train_images_per_s
    assert len(list((tmp_path / "work" / "seed0").iterdir())) == 1
    assert single.aupro != complementary.aupro  # half the patches unscored changes the maps
    assert "plain+complementary" in capsys.readouterr().out

    main(["--rows", "plain+complementary", "--seeds", "1", *args])  # a stopped run resumes from its trainings
    assert "reusing the models trained in" in capsys.readouterr().out


def test_quality_prints_the_reference_only_when_it_was_scored(benchmarks, tmp_path, capsys):
    from quality import main

    args = ["--dataset", "synthetic", "--params", str(ROOT / "params.yaml"), "--work", str(tmp_path), *SMALL_ARGS]
    main([*args, "--set", "eval.scorer=reconstruction"])
    out = capsys.readouterr().out
    alone = json.loads(out.splitlines()[-1])
    assert "weave reconstruction" in out and "kNN reference" not in out and "knn" not in alone
    main([*args])  # scorer: both, on the models the first run trained
    out = capsys.readouterr().out
    both = json.loads(out.splitlines()[-1])
    assert "reusing the models trained in" in out and "weave kNN reference" in out
    assert {k: both[k] for k in ("image_auroc", "aupro")} == {k: alone[k] for k in ("image_auroc", "aupro")}
    assert 0 <= both["knn"]["aupro"] <= 1


def test_timm_peer_has_diyt_plain_sizes_and_trains(benchmarks):
    from model_speed import TimmMAE

    plain = ModelParams(preset="tiny", norm="layernorm", masking="random", pos_embed="sincos", aggregate_layers=[])
    ours, peer = build_model(plain), TimmMAE(plain.arch)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(peer) - count(ours)) / count(ours) < 0.01  # same width, depth, tokens: same size
    imgs = torch.randn(2, 3, plain.arch.image_size, plain.arch.image_size)
    losses = [peer(imgs, generator=torch.Generator().manual_seed(0)).loss for _ in range(2)]
    assert torch.isfinite(losses[0]) and losses[0] == losses[1]  # the masks follow the generator
    losses[0].backward()
    assert all(p.grad is not None for p in peer.parameters())
