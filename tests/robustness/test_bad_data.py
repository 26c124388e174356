"""Bad images, masks and category folders given to the prepare stage: converted, or refused in one line that
names the file and what to do, with no data/prepared left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import badfiles as bf
from clirun import call, refused, stage, untouched
from conftest import MICRO


def prepare(tmp: Path):
    """The prepare stage on the folder dataset tmp/in/widget, at the micro model's sizes."""
    params = tmp / "params.yaml"
    data = {"source": "folder", "path": str(tmp / "in"), "categories": ["widget"], "image_size": 32,
            "val_fraction": 0.4}
    params.write_text(yaml.safe_dump({"data": data, "model": MICRO["model"]}))
    return call(stage("prepare"), ["--params", params, "--out", tmp / "prepared", "--cache", tmp / "cache"])


def refuses(tmp: Path, *needles: str) -> str:
    message = refused(prepare(tmp), *needles)
    assert not (tmp / "prepared").exists()
    untouched(tmp)
    return message


@pytest.fixture
def cat(tmp_path) -> Path:
    return bf.tree(tmp_path / "in")


@pytest.mark.parametrize("make, problem", [
    (bf.corrupt, "not a readable image"),
    (bf.truncated, "not a readable image (OSError: image file is truncated"),
    (bf.zero_byte, "not a readable image"),
    (bf.bomb, "larger than 64,000,000 pixels (a decompression bomb?)"),
    (bf.huge, "larger than 64,000,000 pixels"),
], ids=["corrupt", "truncated", "zero-byte", "decompression-bomb", "huge"])
@pytest.mark.parametrize("where", ["train/good/001.png", "test/good/000.png", "ground_truth/scratch/000_mask.png"])
def test_broken_images_and_masks_are_named(tmp_path, cat, make, problem, where):
    broken = bf.write(cat / where, make())
    message = refuses(tmp_path, f"{broken}: ", problem)
    assert message.endswith(("replace or remove the file", "resize it or remove it"))


@pytest.mark.parametrize("mode", bf.MODES)
def test_other_modes_are_converted(tmp_path, cat, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    (cat / "train" / "good" / "001.png").unlink()
    (cat / "test" / "scratch" / "000.png").unlink()
    bf.write(cat / "train" / "good" / f"001{suffix}", bf.in_mode(mode, 1))
    bf.write(cat / "test" / "scratch" / f"000{suffix}", bf.in_mode(mode, 200))
    bf.write(cat / "ground_truth" / "scratch" / "000_mask.png", bf.in_mode(mode, 3) if mode != "CMYK"
             else bf.encode(bf.mask()))  # a mask in any mode is read as gray
    outcome = prepare(tmp_path)
    assert outcome.code == 0, outcome.stderr
    prepared = tmp_path / "prepared" / "folder" / "widget"
    for path in ("train/good/001.png", "test/scratch/000.png"):
        with Image.open(prepared / path) as img:
            assert (img.mode, img.size) == ("RGB", (32, 32))


def test_missing_mask(tmp_path, cat):
    (cat / "ground_truth" / "scratch" / "001_mask.png").unlink()
    refuses(tmp_path, f"{cat / 'test' / 'scratch' / '001.png'}: defective image without a mask",
            f"add {cat / 'ground_truth' / 'scratch' / '001_mask.png'}")


def test_mask_without_its_image(tmp_path, cat):
    (cat / "test" / "scratch" / "001.png").unlink()
    refuses(tmp_path, "001_mask.png: mask without an image", "remove the mask")


def test_mask_of_another_size(tmp_path, cat):
    mask = bf.write(cat / "ground_truth" / "scratch" / "000_mask.png", bf.encode(bf.mask((10, 10))))
    refuses(tmp_path, f"{mask}: mask is 10x10 but its image is 24x20", "masks must match their images")


@pytest.mark.parametrize("values, expected", [
    ("gray", "> 127"), ("labels", "0/1"), ("rgb", "> 127"),
], ids=["anti-aliased-gray", "zero-one-labels", "rgb"])
def test_non_binary_masks_are_binarised(tmp_path, cat, values, expected):
    """Gray levels are thresholded at the middle; a 0/1 label mask keeps its 1s; a colour mask is read as gray."""
    ramp = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (20, 1))  # left half dark, right half bright
    image = {"gray": Image.fromarray(ramp), "labels": bf.mask(value=1), "rgb": bf.mask().convert("RGB")}[values]
    bf.write(cat / "ground_truth" / "scratch" / "000_mask.png", bf.encode(image))
    assert prepare(tmp_path).code == 0
    with Image.open(tmp_path / "prepared/folder/widget/ground_truth/scratch/000_mask.png") as img:
        got = np.asarray(img)
    assert set(np.unique(got)) == {0, 255}
    want = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.NEAREST))
    assert np.array_equal(got > 0, want > 127 if expected == "> 127" else want == 1)


def test_empty_category(tmp_path, cat):
    shutil.rmtree(cat)
    cat.mkdir()
    refuses(tmp_path, f"{cat / 'train' / 'good'}: no training images", "put the category's defect-free images")


def test_one_image_category(tmp_path, cat):
    for path in sorted((cat / "train" / "good").iterdir())[1:]:
        path.unlink()
    refuses(tmp_path, f"{cat / 'train' / 'good'}: only 1 training image", "add more")


def test_no_defects_in_test(tmp_path, cat):
    shutil.rmtree(cat / "test" / "scratch")
    shutil.rmtree(cat / "ground_truth")
    refuses(tmp_path, f"{cat / 'test'}: only normal test images", "add a test/<defect>/ folder")


def test_no_normal_test_images(tmp_path, cat):
    shutil.rmtree(cat / "test" / "good")
    refuses(tmp_path, f"{cat / 'test'}: only defective test images", "add test/good/")


def test_missing_category_folder(tmp_path, cat):
    shutil.move(cat, tmp_path / "in" / "gadget")
    refuses(tmp_path, f"{cat}: no such category folder (found: gadget)", "set data.categories")


def test_a_failed_prepare_keeps_the_previous_output(tmp_path, cat):
    assert prepare(tmp_path).code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "prepared").rglob("*") if p.is_file()}
    bf.write(cat / "train" / "good" / "003.png", bf.truncated())
    refused(prepare(tmp_path), "003.png: not a readable image")
    assert {p: p.read_bytes() for p in (tmp_path / "prepared").rglob("*") if p.is_file()} == before
    untouched(tmp_path)
