"""Dataset sources: tiny archives in each real layout served over local HTTP, a real local copy of Magnetic Tile
($DIYT_MAGNETIC_TILE, else shared/datasets/magnetic_tile beside the project), and the validation of a user's
folder."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from http_server import ArchiveServer, serve_spec, tar_bytes, zip_bytes
from PIL import Image

from diyt.config import DataParams
from diyt.data.sources import Counts, load_samples, tile_parts
from diyt.errors import DataError

MAGNETIC_TILE = Path(os.environ.get("DIYT_MAGNETIC_TILE")
                     or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile")
MT_TOP = "Magnetic-tile-defect-datasets.-cc4eb530b57b9cb7225bf76023873043ffd50655"


@pytest.fixture
def server():
    with ArchiveServer() as srv:
        yield srv


def _image(fmt: str = "PNG", size: tuple[int, int] = (12, 10), value: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format=fmt)
    return buf.getvalue()


def _mask(fmt: str = "PNG", size: tuple[int, int] = (12, 10)) -> bytes:
    """An anti-aliased mask: 0, a faint edge (100) and a core (200); only the core is defect."""
    arr = np.zeros(size[::-1], np.uint8)
    arr[2:5, 2:5], arr[3, 3] = 100, 200
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _tally(samples) -> Counter:
    return Counter((s.split, s.defect_type) for s in samples)


def _check_mask(sample) -> None:
    mask = sample.load_mask()
    assert mask.mode == "L" and mask.size == sample.load_image().size
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


# -------------------------------------------------------------------------------------------- mvtec_ad
def _mvtec_tar() -> bytes:
    files = {"license.txt": b"CC BY-NC-SA 4.0", "bottle/readme.txt": b"",
             "bottle/train/good/000.png": _image(), "bottle/train/good/001.png": _image(),
             "bottle/test/good/000.png": _image(), "bottle/test/broken_large/000.png": _image(),
             "bottle/ground_truth/broken_large/000_mask.png": _mask()}
    return tar_bytes(files, "w:xz")


def test_mvtec_ad_downloads_extracts_and_reads(monkeypatch, server, tmp_path):
    serve_spec(monkeypatch, server, "mvtec_ad", "mvtec.tar.xz", _mvtec_tar(), counts={"bottle": Counts(2, 1, 1)})
    data = DataParams(source="mvtec_ad", categories=("bottle",))
    samples = load_samples(data, "bottle", tmp_path / "cache")
    assert _tally(samples) == {("train", "good"): 2, ("test", "good"): 1, ("test", "broken_large"): 1}
    defect = next(s for s in samples if not s.is_normal)
    _check_mask(defect)
    assert int((np.asarray(defect.load_mask()) == 255).sum()) == 1  # the faint edge is not defect
    assert all(s.load_mask is None for s in samples if s.is_normal)
    assert (tmp_path / "cache" / "mvtec_ad" / "extracted" / "bottle").is_dir()
    assert not (tmp_path / "cache" / "mvtec_ad" / "mvtec.tar.xz").exists()  # removed once extracted

    load_samples(data, "bottle", tmp_path / "cache")
    assert len(server.requests) == 1  # extracted copy reused


def test_mvtec_ad_wrong_counts(monkeypatch, server, tmp_path):
    serve_spec(monkeypatch, server, "mvtec_ad", "mvtec.tar.xz", _mvtec_tar())  # the real bottle counts
    with pytest.raises(DataError, match="209") as err:
        load_samples(DataParams(source="mvtec_ad", categories=("bottle",)), "bottle", tmp_path)
    assert "\n" not in str(err.value) and "bottle" in str(err.value)


def test_mvtec_ad_local_path_without_the_category(tmp_path):
    (tmp_path / "mvtec" / "cable").mkdir(parents=True)
    data = DataParams(source="mvtec_ad", path=str(tmp_path / "mvtec"), categories=("bottle",))
    with pytest.raises(DataError, match="no bottle/ folder"):
        load_samples(data, "bottle", tmp_path / "cache")


def test_unknown_category(tmp_path):
    data = DataParams(source="mvtec_ad", categories=("bottle",))
    with pytest.raises(DataError, match="'bottl'.*allowed: bottle, cable"):
        load_samples(data, "bottl", tmp_path)


# ------------------------------------------------------------------------------------------------ btad
def test_btad_zip_in_its_real_layout(monkeypatch, server, tmp_path):
    top = "BTech_Dataset_transformed"
    files = {f"{top}/01/train/ok/0000.bmp": _image("BMP"), f"{top}/01/train/ok/0001.bmp": _image("BMP"),
             f"{top}/01/test/ok/0000.bmp": _image("BMP"), f"{top}/01/test/ko/0003.bmp": _image("BMP"),
             f"{top}/01/ground_truth/ko/0003.png": _mask(),
             f"{top}/02/train/ok/0000.png": _image(), f"{top}/02/train/ok/0001.png": _image(),
             f"{top}/02/test/ok/0000.png": _image(), f"{top}/02/test/ko/0009.png": _image(),
             f"{top}/02/ground_truth/ko/0009.png": _mask(),
             f"{top}/03/train/ok/0000.bmp": _image("BMP"), f"{top}/03/train/ok/0001.bmp": _image("BMP"),
             f"{top}/03/test/ok/0000.bmp": _image("BMP"),
             f"{top}/03/test/ko/0005.bmp": _image("BMP"), f"{top}/03/ground_truth/ko/0005.bmp": _mask("BMP")}
    serve_spec(monkeypatch, server, "btad", "btad.zip", zip_bytes(files))
    data = DataParams(source="btad", categories=("01", "02", "03"))
    got = {c: load_samples(data, c, tmp_path) for c in ("01", "02", "03")}
    assert _tally(got["01"]) == {("train", "good"): 2, ("test", "good"): 1, ("test", "ko"): 1}
    assert _tally(got["02"]) == {("train", "good"): 2, ("test", "good"): 1, ("test", "ko"): 1}
    assert _tally(got["03"]) == {("train", "good"): 2, ("test", "good"): 1, ("test", "ko"): 1}
    for samples in got.values():
        _check_mask(next(s for s in samples if s.defect_type == "ko"))
    assert len(server.requests) == 1


# --------------------------------------------------------------------------------------- magnetic tile
def _mt_zip() -> bytes:
    files = {f"{MT_TOP}/README.md": b"# Magnetic tile", f"{MT_TOP}/dataset.jpg": _image("JPEG")}
    for kind, names in {"Free": ["exp0_num_1", "exp0_num_2", "exp0_num_3", "exp1_num_4", "exp1_num_5"],
                        "Blowhole": ["exp1_num_10", "exp2_num_11"], "Uneven": ["exp3_num_12"]}.items():
        for name in names:
            files[f"{MT_TOP}/MT_{kind}/Imgs/{name}.jpg"] = _image("JPEG")
            files[f"{MT_TOP}/MT_{kind}/Imgs/{name}.png"] = _mask()
    return zip_bytes(files)


def test_magnetic_tile_github_archive(monkeypatch, server, tmp_path):
    serve_spec(monkeypatch, server, "magnetic_tile", "mt.zip", _mt_zip(), counts={"tile": Counts(4, 1, 3)},
                defect_counts={"tile": {"blowhole": 2, "uneven": 1}})
    samples = load_samples(DataParams(source="magnetic_tile", categories=("tile",)), "tile", tmp_path)
    assert _tally(samples) == {("train", "good"): 4, ("test", "good"): 1, ("test", "blowhole"): 2,
                               ("test", "uneven"): 1}
    _check_mask(next(s for s in samples if s.defect_type == "uneven"))


def test_magnetic_tile_split_by_part(monkeypatch, server, tmp_path):
    """Served as the real archive. In order of frame number the free tiles' setups run 0, 0, 0, 1, 1: a run
    ends where the setup stops increasing, so exp0_num_3 and exp1_num_4 are one tile, the others one each."""
    serve_spec(monkeypatch, server, "magnetic_tile", "mt.zip", _mt_zip(), counts={"tile": Counts(4, 1, 3)},
               defect_counts={"tile": {"blowhole": 2, "uneven": 1}})
    data = DataParams(source="magnetic_tile", categories=("tile",), split_by="part")
    samples = load_samples(data, "tile", tmp_path)  # the counts check compares totals only
    free = {s.name: s for s in samples if s.is_normal}
    assert {n: s.part for n, s in free.items()} == {
        "exp0_num_1": "exp0_num_1", "exp0_num_2": "exp0_num_2", "exp0_num_3": "exp0_num_3",
        "exp1_num_4": "exp0_num_3", "exp1_num_5": "exp1_num_5"}
    assert free["exp0_num_3"].split == free["exp1_num_4"].split
    assert sum(s.split == "test" for s in free.values()) >= 1
    assert all(s.part is None for s in samples if not s.is_normal)


def test_magnetic_tile_split_by_part_checks_the_totals(monkeypatch, server, tmp_path):
    """Split by part, the spec's train/test counts cannot hold image for image, but a copy short of one free tile
    is still refused, naming the totals."""
    serve_spec(monkeypatch, server, "magnetic_tile", "mt.zip", _mt_zip(), counts={"tile": Counts(5, 1, 3)},
               defect_counts={"tile": {"blowhole": 2, "uneven": 1}})
    data = DataParams(source="magnetic_tile", categories=("tile",), split_by="part")
    with pytest.raises(DataError, match="expected {'normal': 6, 'defective': 3} images, found "
                                        "{'normal': 5, 'defective': 3}; the copy is incomplete"):
        load_samples(data, "tile", tmp_path)


def test_tile_parts_follow_the_setup_runs():
    stems = ["exp1_num_824", "exp2_num_834", "exp1_num_855", "exp2_num_887", "exp4_num_889", "exp3_num_913",
             "exp4_num_933", "exp5_num_937", "exp5_num_964", "exp6_num_1012", "exp1_num_1810", "photo"]
    parts = tile_parts(stems)
    assert parts == {"exp1_num_824": "exp1_num_824", "exp2_num_834": "exp1_num_824",
                     "exp1_num_855": "exp1_num_855", "exp2_num_887": "exp1_num_855", "exp4_num_889": "exp1_num_855",
                     "exp3_num_913": "exp3_num_913", "exp4_num_933": "exp3_num_913", "exp5_num_937": "exp3_num_913",
                     "exp5_num_964": "exp5_num_964", "exp6_num_1012": "exp5_num_964",
                     "exp1_num_1810": "exp1_num_1810"}  # "photo" is not numbered: its own part


def test_split_by_part_needs_a_source_that_knows_parts():
    with pytest.raises(ValueError, match="split_by: 'part' needs a source that records which images show the "
                                         "same part \\(magnetic_tile\\); synthetic does not"):
        DataParams(split_by="part")


def test_magnetic_tile_missing_mask(tmp_path):
    imgs = tmp_path / "mt" / "MT_Crack" / "Imgs"
    imgs.mkdir(parents=True)
    (imgs / "exp1_num_1.jpg").write_bytes(_image("JPEG"))
    (tmp_path / "mt" / "MT_Free" / "Imgs").mkdir(parents=True)
    with pytest.raises(DataError, match="exp1_num_1.jpg: defective tile without its mask"):
        load_samples(DataParams(source="magnetic_tile", path=str(tmp_path / "mt"), categories=("tile",)),
                     "tile", tmp_path)


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="no local Magnetic Tile copy (set DIYT_MAGNETIC_TILE)")
def test_magnetic_tile_real_copy(tmp_path):
    def load(seed: int):
        data = DataParams(source="magnetic_tile", path=str(MAGNETIC_TILE), categories=("tile",),
                          split_seed=seed)
        return load_samples(data, "tile", tmp_path)

    samples = load(0)
    tally = _tally(samples)
    assert tally[("train", "good")] == 762 and tally[("test", "good")] == 190  # 80 % of 952 train
    assert {k[1]: v for k, v in tally.items() if k[1] != "good"} == {
        "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert all(s.split == "test" for s in samples if not s.is_normal)

    def train_names(batch):
        return sorted(s.name for s in batch if s.split == "train")

    assert train_names(load(0)) == train_names(samples)
    assert train_names(load(1)) != train_names(samples)
    by_type = {s.defect_type: s for s in samples if not s.is_normal}
    for sample in by_type.values():
        _check_mask(sample)
    assert samples[0].load_image().mode == "RGB"

    # by tile: its photographs (exp1..exp6 of one tile) never on both sides, the totals unchanged
    by_part = load_samples(DataParams(source="magnetic_tile", path=str(MAGNETIC_TILE),
                                      categories=("tile",), split_by="part"), "tile", tmp_path)
    free = [s for s in by_part if s.is_normal]
    sides = {}
    for s in free:
        sides.setdefault(s.part, set()).add(s.split)
    assert len(free) == 952 and all(len(v) == 1 for v in sides.values())
    assert len(sides) == 170 and sum(len(v) for v in sides.values()) == 170
    assert sum(s.split == "test" for s in free) == 191  # whole tiles until 20 % of 952 (190.4)


# ---------------------------------------------------------------------------------------------- folder
def _folder(root: Path) -> Path:
    cat = root / "widget"
    for rel, data in {"train/good/a.png": _image(), "train/good/b.jpg": _image("JPEG"),
                      "test/good/c.png": _image(), "test/scratch/d.png": _image(),
                      "ground_truth/scratch/d_mask.png": _mask()}.items():
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        (cat / rel).write_bytes(data)
    (cat / "train" / "good" / ".DS_Store").write_bytes(b"\0")  # ignored, not an image
    return cat


def _folder_data(root: Path) -> DataParams:
    return DataParams(source="folder", path=str(root), categories=("widget",))


def test_folder_reads_mvtec_layout(tmp_path):
    _folder(tmp_path)
    samples = load_samples(_folder_data(tmp_path), "widget", tmp_path / "cache")
    assert _tally(samples) == {("train", "good"): 2, ("test", "good"): 1, ("test", "scratch"): 1}
    _check_mask(next(s for s in samples if s.defect_type == "scratch"))


@pytest.mark.parametrize("breakage, message", [
    (lambda cat: [p.unlink() for p in (cat / "train" / "good").iterdir()], "train/good: no training images"),
    (lambda cat: (cat / "ground_truth" / "scratch" / "d_mask.png").unlink(), "d.png: defective image without"),
    (lambda cat: (cat / "test" / "scratch" / "d.png").unlink(), "d_mask.png: mask without an image"),
    (lambda cat: (cat / "ground_truth" / "dent").mkdir() or
     (cat / "ground_truth" / "dent" / "e_mask.png").write_bytes(_mask()), "e_mask.png: mask without an image"),
    (lambda cat: [p.unlink() for p in cat.rglob("*") if p.is_file()], "no training images"),  # empty
])
def test_folder_validation(tmp_path, breakage, message):
    breakage(_folder(tmp_path))
    with pytest.raises(DataError, match=message) as err:
        load_samples(_folder_data(tmp_path), "widget", tmp_path / "cache")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_folder_missing_category(tmp_path):
    _folder(tmp_path)
    data = DataParams(source="folder", path=str(tmp_path), categories=("gadget",))
    with pytest.raises(DataError, match=r"gadget: no such category folder \(found: widget\)"):
        load_samples(data, "gadget", tmp_path / "cache")


def test_folder_path_not_a_folder(tmp_path):
    data = DataParams(source="folder", path=str(tmp_path / "nowhere"), categories=("widget",))
    with pytest.raises(DataError, match="is not a folder"):
        load_samples(data, "widget", tmp_path)


def test_mask_of_another_size_is_an_error(tmp_path):
    cat = _folder(tmp_path)
    (cat / "ground_truth" / "scratch" / "d_mask.png").write_bytes(_mask(size=(5, 5)))
    samples = load_samples(_folder_data(tmp_path), "widget", tmp_path / "cache")
    with pytest.raises(DataError, match="mask is 5x5 but its image is 12x10"):
        next(s for s in samples if s.defect_type == "scratch").load_mask()
