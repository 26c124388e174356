"""The prepare stage under real DVC: byte-identical output, a no-op second run, reruns when a data param changes."""

from __future__ import annotations

import hashlib

import pytest

from dvc_repo import make_repo


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def repo(tmp_path):
    repo = make_repo(tmp_path)
    repo.set_params(data__image_size=128, model__image_size=128,
                    data__synthetic={"n_train": 6, "n_test_good": 2, "n_test_defect": 5})
    repo.commit("tiny data")
    return repo


def test_prepare_reruns_only_when_data_params_change(repo):
    first = repo.dvc("repro", "prepare")
    assert "Running stage 'prepare'" in first.stdout
    prepared = repo.path / "data" / "prepared" / "synthetic"
    assert sorted(p.name for p in prepared.iterdir()) == ["nut", "stone", "weave"]
    for category in ("weave", "stone", "nut"):
        lines = (prepared / category / "manifest.csv").read_text().splitlines()
        assert len(lines) == 1 + 6 + 2 + 5
    before = _digest(prepared)

    second = repo.dvc("repro", "prepare")
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout

    repo.set_params(eval__sigma=2.0)  # not a data param: prepare stays
    assert "Running stage" not in repo.dvc("repro", "prepare").stdout

    repo.set_params(data__val_fraction=0.5)
    assert "Running stage 'prepare'" in repo.dvc("repro", "prepare").stdout
    assert _digest(prepared) != before

    repo.set_params(data__val_fraction=0.1)  # back: same bytes as the first run (the seed decides everything)
    repo.dvc("repro", "prepare")
    assert _digest(prepared) == before


def test_a_bad_param_stops_prepare_with_one_line(repo):
    repo.set_params(data__categories=["weave", "marble"])
    proc = repo.dvc("repro", "prepare", check=False)
    assert proc.returncode != 0
    assert ("error: params.yaml: data.categories: 'marble' is not a category of synthetic "
            "(allowed: weave, stone, nut)") in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (repo.path / "data" / "prepared").exists()
