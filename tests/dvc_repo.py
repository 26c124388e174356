"""A throwaway copy of the project in its own git repository, for real `dvc repro` / `dvc exp run` tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", "stages", "src", ".gitignore")


class DvcRepo:
    def __init__(self, path: Path):
        self.path = path
        self.env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t",
                    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@t", "OMP_NUM_THREADS": "1"}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, check=check)

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, **dotted) -> None:
        params = self.params()
        for key, value in dotted.items():
            node = params
            *parents, last = key.split("__")
            for part in parents:
                node = node[part]
            node[last] = value
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str = "update") -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


def make_repo(tmp: Path) -> DvcRepo:
    """Copy the pipeline's files into `tmp`, git init, dvc init, commit."""
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, tmp / name)
    repo = DvcRepo(tmp)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    repo.dvc("config", "core.analytics", "false")
    repo.commit("init")
    return repo
