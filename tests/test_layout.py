"""Writing the MVTec AD layout: manifest, validation split, masks, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diyt.data.dataset import AnomalyDataset, Augment, denormalize
from diyt.data.images import read_image, read_mask
from diyt.data.layout import read_manifest, validation_names, write_category
from diyt.data.sample import Sample
from diyt.errors import DataError
from diyt.io import atomic_dir


def _image(value: int, size=(40, 30)) -> Image.Image:
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[:, : size[0] // 2] = 255 - value
    return Image.fromarray(arr)


def _mask(size=(40, 30)) -> Image.Image:
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[5:15, 10:20] = 200  # anti-aliased masks are thresholded at > 127
    arr[size[1] - 1, size[0] - 1] = 100
    return Image.fromarray(arr)


def _samples(n_train=10, mask_size=(40, 30)) -> list[Sample]:
    samples = [Sample(f"{i:03d}", "train", "good", lambda i=i: _image(10 * i), None, f"train {i}")
               for i in range(n_train)]
    samples.append(Sample("000", "test", "good", lambda: _image(7), None, "test good"))
    samples.append(Sample("000", "test", "scratch", lambda: _image(9), lambda: _mask(mask_size), "scratch 0"))
    return samples


def test_layout_and_manifest(tmp_path):
    out = tmp_path / "cat"
    rows = write_category(_samples(), out, 32, 0.2, 0)
    assert {(r.split, r.defect_type) for r in rows} == {("train", "good"), ("val", "good"), ("test", "good"),
                                                        ("test", "scratch")}
    assert sum(r.split == "val" for r in rows) == 2  # round(0.2 * 10)
    assert (out / "train/good/003.png").is_file()
    assert (out / "test/scratch/000.png").is_file()
    mask = read_mask(out / "ground_truth/scratch/000_mask.png")
    assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 1}
    # the 10x10 block of a 40x30 mask covers 8x~10.7 pixels at 32x32; the single 100-valued pixel is dropped
    assert 70 <= mask.sum() <= 100
    assert read_image(out / "test/good/000.png").size == (32, 32)
    assert read_manifest(out) == rows
    scratch = next(r for r in rows if r.defect_type == "scratch")
    assert (scratch.label, scratch.mask_path, scratch.orig_width, scratch.orig_height) == (
        1, "ground_truth/scratch/000_mask.png", 40, 30)


def test_validation_split_is_seeded_and_order_free():
    names = [f"{i:03d}" for i in range(50)]
    a = validation_names(names, 0.1, 0)
    assert len(a) == 5
    assert a == validation_names(list(reversed(names)), 0.1, 0)
    assert a != validation_names(names, 0.1, 1)
    assert validation_names(["a"], 0.5, 0) == set()  # one image: nothing to hold out
    assert len(validation_names(["a", "b"], 0.9, 0)) == 1  # always leave one to train on


def test_validation_split_by_part_keeps_each_part_on_one_side():
    names = [f"{i:03d}" for i in range(60)]
    parts = {name: f"part{int(name) // 6}" for name in names}  # ten parts of six images
    held = validation_names(names, 0.2, 0, parts)
    assert len(held) == 12  # whole parts until round(0.2 * 60) images: exactly two parts here
    assert {parts[n] for n in held}.isdisjoint({parts[n] for n in names if n not in held})
    assert held == validation_names(list(reversed(names)), 0.2, 0, parts)
    assert held != validation_names(names, 0.2, 1, parts)
    # one image per part (or no parts given) is the image split itself, image for image
    assert validation_names(names, 0.2, 3, {n: n for n in names}) == validation_names(names, 0.2, 3)
    # uneven parts: at least the count, and never every part (one is left to train on)
    uneven = {name: "big" if int(name) < 50 else f"small{name}" for name in names}
    held = validation_names(names, 0.5, 0, uneven)
    assert len(held) >= 30 and {uneven[n] for n in names} - {uneven[n] for n in held}
    assert validation_names(names, 0.9, 0, {n: "one" for n in names}) == set()  # one part: nothing held out


def test_validation_split_of_write_category_follows_parts(tmp_path):
    samples = [Sample(f"{i:03d}", "train", "good", lambda i=i: _image(10 * i), None, f"train {i}",
                      part=f"p{i // 2}") for i in range(10)]
    samples.append(Sample("000", "test", "scratch", lambda: _image(9), lambda: _mask(), "scratch 0"))
    rows = write_category(samples, tmp_path / "cat", 32, 0.2, 0)
    val = {r.path.split("/")[-1][:3] for r in rows if r.split == "val"}
    assert len(val) == 2 and len({int(v) // 2 for v in val}) == 1  # one part of two images


def test_same_input_gives_byte_identical_files(tmp_path):
    write_category(_samples(), tmp_path / "a", 32, 0.2, 0)
    write_category(_samples(), tmp_path / "b", 32, 0.2, 0)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 14
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_mask_of_another_size_is_named(tmp_path):
    with pytest.raises(DataError, match=r"scratch 0: mask is 20x20 but the image is 40x30"):
        write_category(_samples(mask_size=(20, 20)), tmp_path / "cat", 32, 0.2, 0)


def test_missing_mask_is_named(tmp_path):
    samples = _samples()[:-1] + [Sample("007", "test", "crack", lambda: _image(1), None, "crack/007.png")]
    with pytest.raises(DataError, match=r"crack/007.png: defective image without a mask; add ground_truth/crack/007_mask.png"):
        write_category(samples, tmp_path / "cat", 32, 0.2, 0)


def test_empty_category_and_no_train(tmp_path):
    with pytest.raises(DataError, match="the category has no images"):
        write_category([], tmp_path / "cat", 32, 0.2, 0)
    with pytest.raises(DataError, match="no train/good images"):
        write_category(_samples()[-2:], tmp_path / "cat", 32, 0.2, 0)


def test_corrupt_and_truncated_images_are_named(tmp_path):
    good = tmp_path / "ok.png"
    _image(50).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    for bad in (truncated, corrupt):
        with pytest.raises(DataError, match=rf"{bad}: not a readable image .*replace or remove the file"):
            read_image(bad)
    with pytest.raises(DataError, match="image not found"):
        read_image(tmp_path / "nope.png")


def test_sixteen_bit_and_modes_are_read(tmp_path):
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.mode == "RGB"
    assert np.asarray(img)[-1, -1, 0] == round((64 * 64 - 1) * 16 * 255 / 65535)
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    assert read_image(tmp_path / "alpha.png").getpixel((0, 0)) == (10, 20, 30)
    Image.new("P", (8, 8), 3).save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").mode == "RGB"


def test_a_failed_write_leaves_the_previous_output(tmp_path):
    out = tmp_path / "prepared"
    with atomic_dir(out) as tmp:
        write_category(_samples(), tmp / "cat", 32, 0.2, 0)
    before = sorted(p.name for p in (out / "cat" / "train" / "good").iterdir())

    def explode():
        raise DataError("broken.png: not a readable image")

    bad = _samples() + [Sample("009", "test", "good", explode, None, "broken.png")]
    with pytest.raises(DataError, match="broken.png"):
        with atomic_dir(out) as tmp:
            write_category(bad, tmp / "cat", 32, 0.2, 0)
    assert sorted(p.name for p in (out / "cat" / "train" / "good").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no temp dirs left behind


def test_dataset_items(tmp_path):
    write_category(_samples(), tmp_path / "cat", 32, 0.2, 0)
    train = AnomalyDataset(tmp_path / "cat", ["train"], 16, "imagenet")
    test = AnomalyDataset(tmp_path / "cat", ["test"], 16, "imagenet")
    assert (len(train), len(test)) == (8, 2)
    item = test[1]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert item["label"] == 1 and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert test[0]["mask"].sum() == 0 and test[0]["label"] == 0
    back = denormalize(item["image"], "imagenet")
    assert torch.allclose(back, test.images[1].float() / 255, atol=1e-6)


def test_augment_flips_and_rotates_deterministically():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)
    aug = Augment(hflip=True, vflip=True, rot90=True)
    torch.manual_seed(0)
    a = [aug(image) for _ in range(20)]
    torch.manual_seed(0)
    b = [aug(image) for _ in range(20)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({tuple(x.flatten().tolist()) for x in a}) > 1
    assert all(sorted(x.flatten().tolist()) == sorted(image.flatten().tolist()) for x in a)
