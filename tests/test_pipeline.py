"""The whole chain under real DVC on a micro config: outputs, reruns, experiments, metrics and plots."""

from __future__ import annotations

import functools
import json
import re

import pytest
import yaml

from dvc_repo import make_repo

MICRO = {
    "data": {"categories": ["weave", "nut"], "image_size": 32,
             "synthetic": {"n_train": 8, "n_test_good": 3, "n_test_defect": 5}, "val_fraction": 0.4},
    "model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "aggregate_layers": [1]},
    "train": {"pretrain": {"steps": 3, "batch_size": 4, "warmup_steps": 1},
              "finetune": {"steps": 2, "batch_size": 4, "warmup_steps": 1}},
    "eval": {"sigma": 1.0, "batch_size": 8, "level_steps": 5, "defect_head_steps": 5, "defect_head_copies": 1},
}


def _ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", stdout))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    params = repo.params()
    for section, values in MICRO.items():
        params[section].update({k: ({**params[section][k], **v} if isinstance(v, dict) else v)
                                for k, v in values.items()})
    (repo.path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    repo.commit("micro config")
    return repo


def test_full_chain_then_targeted_reruns(repo):
    first = repo.dvc("repro")
    assert _ran(first.stdout) == {"prepare", "pretrain", "finetune@weave", "finetune@nut", "evaluate@weave",
                                  "evaluate@nut", "report"}
    summary = json.loads((repo.path / "reports/synthetic/metrics.json").read_text())
    assert set(summary["categories"]) == {"weave", "nut"}
    for key in ("image_auroc", "image_ap", "f1", "f1_max", "pixel_auroc", "aupro"):
        values = [summary["categories"][c][key] for c in ("weave", "nut")]
        assert summary["mean"][key] == pytest.approx(sum(values) / 2)
    assert (repo.path / "models/synthetic/nut/model.safetensors").is_file()
    assert (repo.path / "bundles/synthetic/nut/bundle.json").is_file()  # the evaluate stage's model bundle
    assert len(list((repo.path / "reports/synthetic/categories/weave/figures").glob("*.png"))) == 8

    assert "Data and pipelines are up to date" in repo.dvc("status").stdout
    assert _ran(repo.dvc("repro").stdout) == set()

    metrics = repo.path / "reports/synthetic/categories/weave/metrics.json"
    before = metrics.read_bytes()
    assert _ran(repo.dvc("repro", "-f", "-s", "evaluate@weave").stdout) == {"evaluate@weave"}
    assert metrics.read_bytes() == before  # a rerun reproduces its metrics: no wall time in them
    timing = json.loads((repo.path / "reports/timings/evaluate@weave.json").read_text())
    assert timing["stage"] == "evaluate@weave" and 0 < timing["error_level_fit_seconds"] < timing["seconds"]

    repo.set_params(eval__sigma=2.0)
    assert _ran(repo.dvc("repro").stdout) == {"evaluate@weave", "evaluate@nut", "report"}

    repo.set_params(model__dyt_alpha=0.8)
    assert _ran(repo.dvc("repro").stdout) == {"pretrain", "finetune@weave", "finetune@nut", "evaluate@weave",
                                              "evaluate@nut", "report"}

    shown = json.loads(repo.dvc("metrics", "show", "--json").stdout)
    workspace = next(iter(shown.values()))["data"]
    assert "reports/synthetic/metrics.json" in workspace
    plots = repo.dvc("plots", "show", "-o", "plots_html")
    assert (repo.path / "plots_html" / "index.html").is_file(), plots.stdout


def test_an_experiment_adds_a_metrics_entry(repo):
    repo.dvc("repro")
    repo.commit("baseline results")
    base_sigma = yaml.safe_load((repo.path / "params.yaml").read_text())["eval"]["sigma"]
    baseline = json.loads((repo.path / "reports/synthetic/metrics.json").read_text())
    repo.dvc("exp", "run", "-n", "sharper", "-S", "eval.sigma=0.5")
    table = json.loads(repo.dvc("exp", "show", "--json").stdout)
    experiments = [e for rev in table for e in (rev.get("experiments") or [])]
    names = {run["name"] for e in experiments for run in e.get("revs", [])} | {e.get("name") for e in experiments}
    assert "sharper" in names
    diff = json.loads(repo.dvc("exp", "diff", "HEAD", "sharper", "--json").stdout)
    sigma = diff["params"]["params.yaml"]["eval.sigma"]
    assert (sigma["old"], sigma["new"]) == (base_sigma, 0.5) and base_sigma != 0.5
    changed = diff["metrics"]["reports/synthetic/metrics.json"]
    assert changed["mean.aupro"]["old"] == pytest.approx(baseline["mean"]["aupro"])
    repo.dvc("exp", "apply", "sharper")  # the entry is the experiment's own metrics file
    applied = json.loads((repo.path / "reports/synthetic/metrics.json").read_text())
    assert {key: entry["new"] for key, entry in changed.items()} == pytest.approx(
        {key: functools.reduce(dict.__getitem__, key.split("."), applied) for key in changed})
