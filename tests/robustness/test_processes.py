"""The catalogue's verdicts hold across the process boundary: real `python stages/<stage>.py` and
`python -m diyt` processes exit non-zero with one `error:` line and no traceback, and show the traceback only
with DIYT_VERBOSE=1 (or --verbose)."""

from __future__ import annotations

import json

import pytest

import badfiles as bf
from clirun import ROOT, refused, spawn, untouched


def stage_cmd(name: str, args: list) -> list:
    return [ROOT / "stages" / f"{name}.py", *args]


def corrupt_prepare(project, tmp_path) -> tuple[list, str]:
    bf.write(bf.tree(tmp_path / "in") / "train" / "good" / "000.png", bf.corrupt())
    project.set_params(data={"source": "folder", "path": str(tmp_path / "in"), "categories": ["widget"],
                             "image_size": 32})
    out = tmp_path / "prepared"
    return stage_cmd("prepare", ["--params", project.params, "--out", out, "--cache", tmp_path / "cache"]), \
        f"{tmp_path / 'in/widget/train/good/000.png'}: not a readable image"


def three_masks(project, tmp_path) -> tuple[list, str]:
    project.set_params(eval={"num_masks": 3})
    return stage_cmd("evaluate", project.evaluate_args()), "eval.num_masks: 3 does not divide the model's 16 patches"


def other_version(project, tmp_path) -> tuple[list, str]:
    manifest = project.bundle / "bundle.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 2}))
    return ["-m", "diyt", "predict", "--model", project.bundle, "--input", project.category / "test", "--out",
            tmp_path / "predictions"], "bundle format version 2, but this DiyT reads version 1"


CASES = {"prepare-corrupt-image": corrupt_prepare, "evaluate-num-masks": three_masks,
         "predict-other-bundle-version": other_version}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_without_traceback_unless_verbose(project, tmp_path, case):
    command, message = CASES[case](project, tmp_path)
    quiet = spawn(command)
    refused(quiet, message)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "predictions").exists()
    untouched(project.root)
    if case in ("prepare-corrupt-image", "predict-other-bundle-version"):  # the traceback is there when asked for
        verbose = spawn(command, env={"DIYT_VERBOSE": "1"})
        assert verbose.code != 0 and "Traceback (most recent call last)" in verbose.stderr
        assert message in verbose.stderr


def test_predict_exit_code_1_names_each_unreadable_image(project, tmp_path):
    bf.write(tmp_path / "in" / "good.png", bf.png())
    broken = bf.write(tmp_path / "in" / "broken.png", bf.truncated())
    outcome = spawn(["-m", "diyt", "predict", "--model", project.bundle, "--input", tmp_path / "in", "--out",
                     tmp_path / "out", "--quiet"])
    assert outcome.code == 1 and "Traceback" not in outcome.stderr
    assert outcome.stderr.splitlines() == [outcome.errors[0]] and outcome.errors[0].startswith(f"error: {broken}: ")
    assert "1 scored" in outcome.stdout and "1 unreadable" in outcome.stdout
