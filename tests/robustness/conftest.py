"""A micro project made by the real stages (prepare, pretrain, finetune, evaluate) once per session, for the
cases that break one of its files; each case works on its own copy."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clirun import call, stage

CATEGORY = "weave"
MICRO = {
    "data": {"source": "synthetic", "categories": [CATEGORY], "image_size": 32, "val_fraction": 0.4,
             "synthetic": {"n_train": 8, "n_test_good": 3, "n_test_defect": 3}},
    "model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "aggregate_layers": [1]},
    "train": {"device": "cpu", "checkpoint_every": 1,
              "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 1},
              "finetune": {"steps": 1, "batch_size": 4, "warmup_steps": 1}},
    "eval": {"sigma": 1.0, "batch_size": 8, "normalize_maps": "none", "defect_head": "none"},
}


@dataclass(frozen=True)
class Project:
    """Paths as dvc.yaml lays them out, under `root`."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / "synthetic"

    @property
    def category(self) -> Path:
        return self.prepared / CATEGORY

    @property
    def pretrained(self) -> Path:
        return self.root / "models" / "pretrain"

    @property
    def model(self) -> Path:
        return self.root / "models" / "synthetic" / CATEGORY

    @property
    def bundle(self) -> Path:
        return self.root / "bundles" / "synthetic" / CATEGORY

    @property
    def reports(self) -> Path:
        return self.root / "reports" / "synthetic" / "categories" / CATEGORY

    def set_params(self, **sections: dict) -> Path:
        """Write params.yaml: the micro config with `sections` merged in one level deep."""
        params = {k: dict(v) for k, v in MICRO.items()}
        for section, values in sections.items():
            params.setdefault(section, {}).update(values)
        self.params.write_text(yaml.safe_dump(params))
        return self.params

    # the stages' command lines, as dvc.yaml writes them
    def prepare_args(self) -> list:
        return ["--params", self.params, "--out", self.root / "data" / "prepared", "--cache", self.root / "cache"]

    def pretrain_args(self) -> list:
        return ["--params", self.params, "--data", self.prepared, "--out", self.pretrained,
                "--checkpoint", self.root / "checkpoints" / "pretrain"]

    def finetune_args(self) -> list:
        return ["--params", self.params, "--category", CATEGORY, "--data", self.prepared, "--init", self.pretrained,
                "--out", self.model, "--checkpoint", self.root / "checkpoints" / "finetune" / CATEGORY]

    def evaluate_args(self) -> list:
        return ["--params", self.params, "--data", self.category, "--model", self.model,
                "--metrics", self.reports / "metrics.json", "--plots", self.reports / "plots",
                "--figures", self.reports / "figures", "--bundle", self.bundle]


def run_stage(name: str, project: Project):
    return call(stage(name), getattr(project, f"{name}_args")())


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> Project:
    """The micro project after prepare, pretrain, finetune and evaluate."""
    project = Project(tmp_path_factory.mktemp("made"))
    project.set_params()
    for name in ("prepare", "pretrain", "finetune", "evaluate"):
        outcome = run_stage(name, project)
        assert outcome.code == 0, outcome.stderr
    return project


@pytest.fixture
def project(made, tmp_path) -> Project:
    """A copy of the made project to break."""
    shutil.copytree(made.root, tmp_path / "project")
    return Project(tmp_path / "project")
