"""Bad model bundles and bad images given to `diyt predict` and `diyt export`: a bundle of another format version,
with a missing or changed file, or whose weights are a pickle, is refused (exit 2) before anything is written;
unreadable images are named one per line and the rest are scored (exit 1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import badfiles as bf
import evil
from clirun import cli, refused, spawn, untouched

REMAKE = "make it again with `dvc repro evaluate@<category>`"


def manifest(bundle: Path, **changes) -> None:
    data = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**data, **changes}))


def other_version(bundle: Path, tmp: Path) -> tuple[str, ...]:
    manifest(bundle, format_version=99)
    return f"{bundle / 'bundle.json'}: bundle format version 99, but this DiyT reads version 1", REMAKE


def no_version(bundle: Path, tmp: Path) -> tuple[str, ...]:
    data = json.loads((bundle / "bundle.json").read_text())
    del data["format_version"]
    (bundle / "bundle.json").write_text(json.dumps(data))
    return f"{bundle / 'bundle.json'}: not a DiyT bundle manifest (KeyError", REMAKE


def not_json(bundle: Path, tmp: Path) -> tuple[str, ...]:
    (bundle / "bundle.json").write_bytes(bf.png())
    return f"{bundle / 'bundle.json'}: not a DiyT bundle manifest", REMAKE


def incomplete(bundle: Path, tmp: Path) -> tuple[str, ...]:
    manifest(bundle, thresholds={})
    return f"{bundle / 'bundle.json'}: incomplete or invalid (KeyError", REMAKE


def missing(part: str):
    def breakage(bundle: Path, tmp: Path) -> tuple[str, ...]:
        (bundle / part).unlink()
        if part == "bundle.json":
            return f"{bundle / part}: missing, so {bundle} is not a DiyT model bundle",
        return f"{bundle / part}: missing from the bundle", REMAKE
    return breakage


def changed_weights(bundle: Path, tmp: Path) -> tuple[str, ...]:
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    return f"{weights}: not the weights this bundle was made with (changed or truncated", REMAKE


def pickled_weights(bundle: Path, tmp: Path) -> tuple[str, ...]:
    """A pickle with the digest written into bundle.json, so only the format check stands in its way."""
    weights = bundle / "model.safetensors"
    weights.write_bytes(evil.pickled_weights(tmp / "unpickled"))
    manifest(bundle, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    return f"{weights}: not a readable safetensors file",


def no_folder(bundle: Path, tmp: Path) -> tuple[str, ...]:
    for path in bundle.iterdir():
        path.unlink()
    bundle.rmdir()
    return f"{bundle}: no such bundle folder", "pass the folder the evaluate stage wrote"


BREAKAGES = {"other-version": other_version, "no-version": no_version, "manifest-not-json": not_json,
             "manifest-incomplete": incomplete, "missing-weights": missing("model.safetensors"),
             "missing-config": missing("config.json"), "missing-manifest": missing("bundle.json"),
             "changed-weights": changed_weights, "pickled-weights": pickled_weights, "no-folder": no_folder}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
@pytest.mark.parametrize("command", ["predict", "export"])
def test_broken_bundles_are_refused_before_writing(project, tmp_path, breakage, command):
    needles = BREAKAGES[breakage](project.bundle, tmp_path)
    out = tmp_path / ("predictions" if command == "predict" else "model.onnx")
    args = ["--input", project.category / "test"] if command == "predict" else []
    refused(cli([command, "--model", project.bundle, *args, "--out", out]), *needles)
    assert not out.exists() and not (tmp_path / "unpickled").exists()
    untouched(tmp_path)


def test_unreadable_images_are_named_and_the_rest_scored(project, tmp_path):
    inputs = tmp_path / "in"
    bf.write(inputs / "ok.png", bf.png())
    broken = {name: bf.write(inputs / name, make()) for name, make in [
        ("corrupt.png", bf.corrupt), ("truncated.png", bf.truncated), ("empty.png", bf.zero_byte),
        ("bomb.png", bf.bomb), ("huge.png", bf.huge), ("notes.jpg", lambda: b"just text")]}
    outcome = cli(["predict", "--model", project.bundle, "--input", inputs, "--out", tmp_path / "out", "--quiet"])
    assert outcome.code == 1 and "Traceback" not in outcome.stderr
    assert len(outcome.errors) == len(broken)
    for path in broken.values():  # one line each, naming the file
        assert sum(e.startswith(f"error: {path}: ") for e in outcome.errors) == 1, outcome.errors
    rows = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "out/predictions.jsonl").open())}
    assert {name for name, r in rows.items() if r["verdict"] == "unreadable"} == set(broken)
    assert rows["ok.png"]["score"] is not None
    assert sorted(p.name for p in (tmp_path / "out" / "heatmaps").iterdir()) == ["ok.png"]
    untouched(tmp_path)


def test_every_mode_and_a_large_image_are_scored(project, tmp_path):
    inputs = tmp_path / "in"
    for mode in bf.MODES:
        bf.write(inputs / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}", bf.in_mode(mode))
    bf.write(inputs / "large.png", bf.encode(Image.new("RGB", (6000, 4000), (90, 120, 150))))  # 24 MP: allowed
    bf.write(inputs / "tiny.png", bf.encode(bf.picture(size=(3, 2))))
    outcome = cli(["predict", "--model", project.bundle, "--input", inputs, "--out", tmp_path / "out", "--quiet",
                   "--format", "csv"])
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert outcome.stdout.startswith("7 scored")
    scores = np.genfromtxt(tmp_path / "out" / "predictions.csv", delimiter=",", names=True, dtype=None,
                           encoding=None)["score"]
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("inputs, message", [
    (["nowhere"], "nowhere: no such file or folder"),
    (["empty_dir"], "empty_dir: no images found (looked for .png"),
    (["*.nothing"], "*.nothing: no images found"),
])
def test_no_input_images(project, tmp_path, monkeypatch, inputs, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    refused(cli(["predict", "--model", project.bundle, "--input", *inputs, "--out", tmp_path / "out"]), message)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_named_and_leaves_nothing(project, tmp_path):
    """Files capped at 4 KB: the ONNX graph cannot be written (EFBIG, as ENOSPC on a full disk)."""
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "model.onnx"
    refused(spawn(["-m", "diyt", "export", "--model", project.bundle, "--out", out], max_file_bytes=4096),
            f"{out}: cannot write it (File too large); choose a writable place with room")
    assert list((tmp_path / "out").iterdir()) == []  # neither the graph nor its temporary


def test_output_paths_in_the_way(project, tmp_path):
    (tmp_path / "file").write_text("in the way")
    refused(cli(["predict", "--model", project.bundle, "--input", project.category / "test", "--out",
                 tmp_path / "file"]), "--out", "a file is in the way; name a folder")
    refused(cli(["export", "--model", project.bundle, "--out", tmp_path]), f"--out {tmp_path}: a folder")
    onnx = tmp_path / "file" / "model.onnx"  # its folder would have to be the file
    refused(cli(["export", "--model", project.bundle, "--out", onnx]), f"{onnx}: cannot write it")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "heatmaps").write_text("in the way")
    refused(cli(["predict", "--model", project.bundle, "--input", project.category / "test" / "good", "--out",
                 tmp_path / "out"]), str(tmp_path / "out" / "heatmaps"), "cannot write it")
    assert (tmp_path / "file").read_text() == "in the way"
    assert (tmp_path / "out" / "heatmaps").read_text() == "in the way"
