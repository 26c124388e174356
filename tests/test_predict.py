"""`diyt predict` and model bundles: the evaluation's scores reproduced, messy inputs, clear errors, exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diyt.bundle import BUNDLE, FORMAT_VERSION, load_bundle
from diyt.cli import main as cli_main
from diyt.config import EvalParams
from diyt.errors import DiytError
from diyt.eval.scoring import ScoringConfig
from diyt.predict import TorchScorer, find_inputs, heatmap_names, predict
from micro_bundle import PREPARED, make_bundle

PARAMS = EvalParams(num_masks=2, sigma=1.0, batch_size=8)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("predict"), PARAMS)


@pytest.fixture(scope="module")
def bundle(micro):
    return load_bundle(micro.bundle)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIYT_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "diyt", *args], capture_output=True, text=True, env=env)


def test_bundle_holds_what_scoring_needs(micro, bundle):
    ev = micro.evaluation
    assert (bundle.thresholds.image, bundle.thresholds.pixel) == (ev.image_threshold, ev.pixel_threshold)
    assert bundle.scoring == ScoringConfig.from_params(PARAMS)
    assert (bundle.preprocess.prepared_size, bundle.preprocess.image_size, bundle.out_size) == (PREPARED, 32, PREPARED)
    assert bundle.manifest["format_version"] == FORMAT_VERSION and bundle.category == "weave"
    assert sorted(p.name for p in micro.bundle.iterdir()) == ["bundle.json", "config.json", "model.safetensors"]


def test_predict_reproduces_the_evaluation_exactly(micro, bundle, tmp_path):
    # batches of 3 where the evaluation used 8: every scoring op is per image, so batching changes no bit
    summary = predict(micro.test_images, bundle, TorchScorer(bundle, torch.device("cpu")), tmp_path,
                      batch_size=3, progress=False)
    ev = micro.evaluation
    assert [p.score for p in summary.predictions] == [float(s) for s in ev.scores]
    assert [p.verdict == "anomalous" for p in summary.predictions] == (ev.scores >= ev.image_threshold).tolist()
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [row["score"] for row in lines] == [float(s) for s in ev.scores]
    for row in lines:
        with Image.open(tmp_path / row["heatmap"]) as img:
            assert img.size == (PREPARED, PREPARED)
    assert not list(tmp_path.rglob("*.tmp"))


def test_predict_reproduces_an_evaluation_with_normalised_maps(tmp_path):
    params = EvalParams(num_masks=2, sigma=1.0, image_score="topk", normalize_maps="position", batch_size=8)
    micro = make_bundle(tmp_path, params)
    bundle = load_bundle(micro.bundle)
    assert bundle.position is not None and bundle.position.mean.shape == (PREPARED, PREPARED)
    assert len({p.stat().st_mode for p in micro.bundle.iterdir()}) == 1  # the usual permissions, not mkstemp's 0600
    summary = predict(micro.test_images, bundle, TorchScorer(bundle, torch.device("cpu")), tmp_path / "out",
                      heatmaps=False, progress=False)
    assert [p.score for p in summary.predictions] == [float(s) for s in micro.evaluation.scores]

    (micro.bundle / "position_stats.safetensors").unlink()
    with pytest.raises(DiytError, match=r"position_stats\.safetensors: missing from the bundle"):
        load_bundle(micro.bundle)


def test_mixed_modes_and_sizes_score_like_their_rgb_equivalents(micro, bundle, tmp_path):
    rgb = np.asarray(Image.open(micro.test_images[0]).convert("RGB"))
    gray = rgb.mean(axis=2).round().astype(np.uint8)
    inputs = {
        "gray.png": Image.fromarray(gray, "L"),
        "gray_as_rgb.png": Image.fromarray(gray, "L").convert("RGB"),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),  # 16-bit, same values scaled
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(gray.shape, 90, np.uint8)]), "RGBA"),
        "rgb.png": Image.fromarray(rgb),
        "palette.png": Image.fromarray(rgb).quantize(64),
        "wide.jpg": Image.fromarray(rgb).resize((70, 40)),
        "small.bmp": Image.fromarray(rgb).resize((12, 12)),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
    }
    folder = tmp_path / "in"
    folder.mkdir()
    for name, img in inputs.items():
        img.save(folder / name)
    paths = find_inputs([str(folder)])
    summary = predict(paths, bundle, TorchScorer(bundle, torch.device("cpu")), tmp_path / "out", batch_size=4,
                      progress=False)
    scores = {Path(p.path).name: p.score for p in summary.predictions}
    assert set(scores) == set(inputs) and all(np.isfinite(s) for s in scores.values())
    assert scores["gray.png"] == scores["gray_as_rgb.png"] == scores["gray16.png"]
    assert scores["rgba.png"] == scores["rgb.png"]  # alpha is dropped, not blended
    for name in inputs:
        with Image.open(tmp_path / "out" / "heatmaps" / Path(name).with_suffix(".png")) as img:
            assert img.size == (PREPARED, PREPARED) and img.mode == "RGB"


def test_heatmap_names_are_unique_and_stay_inside(tmp_path):
    paths = [tmp_path / "a" / "good" / "000.png", tmp_path / "a" / "hole" / "000.png", tmp_path / "b" / "x.jpg"]
    names = heatmap_names(paths)
    assert names == [Path("a/good/000.png"), Path("a/hole/000.png"), Path("b/x.png")]
    assert heatmap_names([tmp_path / "one.tif"]) == [Path("one.png")]
    # same stem, other suffix or case: each keeps its suffix; a name already taken gets a number
    same = [tmp_path / "x.jpg", tmp_path / "x.png", tmp_path / "X.PNG", tmp_path / "x.jpg.png", tmp_path / "y.bmp"]
    assert heatmap_names(same) == [Path("x.jpg.png"), Path("x.png.png"), Path("X.PNG-1.png"), Path("x.jpg-1.png"),
                                   Path("y.png")]


def test_inputs_from_files_folders_and_globs_never_from_the_output_folder(tmp_path):
    for rel in ("a/1.png", "a/2.JPG", "a/notes.txt", "a/out/heatmaps/1.png", "b/3.bmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = find_inputs([str(tmp_path / "a"), str(tmp_path / "*" / "3.bmp"), str(tmp_path / "a" / "1.png")],
                        exclude=tmp_path / "a" / "out")
    assert found == [tmp_path / "a/1.png", tmp_path / "a/2.JPG", tmp_path / "b/3.bmp"]
    with pytest.raises(DiytError, match="no such file or folder"):
        find_inputs([str(tmp_path / "missing.png")])


def test_cli_csv_matches_the_evaluation(micro, tmp_path):
    pattern = str(micro.category / "test" / "*" / "*.png")
    proc = _cli("predict", "--model", str(micro.bundle), "--input", pattern, "--out", str(tmp_path),
                "--format", "csv", "--batch-size", "4", "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = {Path(r["path"]).relative_to(micro.category).as_posix(): r for r in csv.DictReader(f)}
    ev = micro.evaluation
    assert len(rows) == len(ev.rows)
    for row, score in zip(ev.rows, ev.scores):
        got = rows[row.path]
        assert float(got["score"]) == float(score)  # repr round-trips a float exactly
        assert got["verdict"] == ("anomalous" if score >= ev.image_threshold else "normal")
    assert f"{len(ev.rows)} scored" in proc.stdout


def test_cli_reports_unreadable_files_and_scores_the_rest(micro, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in micro.test_images[:2]:
        shutil.copy(path, folder / path.name.replace(".png", f"_{path.parent.name}.png"))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "empty.png").write_bytes(b"")
    truncated = (folder / "000_good.png").read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    proc = _cli("predict", "--model", str(micro.bundle), "--input", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(line.split(":")[1].strip() for line in errors) == sorted(
        str(folder / n) for n in ("corrupt.png", "empty.png", "truncated.png"))
    assert "Traceback" not in proc.stderr
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    rows = {Path(r["path"]).name: r for r in map(json.loads, lines)}
    assert {n for n, r in rows.items() if r["verdict"] == "unreadable"} == {"corrupt.png", "empty.png", "truncated.png"}
    assert all(rows[n]["score"] is not None and rows[n]["heatmap"] for n in ("000_good.png", "001_good.png"))
    assert "2 scored" in proc.stdout and "3 unreadable" in proc.stdout


def _broken_copy(micro, tmp_path: Path, name: str) -> Path:
    broken = tmp_path / name
    shutil.copytree(micro.bundle, broken)
    return broken


def test_bundle_errors_name_the_file_and_what_to_do(micro, tmp_path):
    newer = _broken_copy(micro, tmp_path, "newer")
    manifest = json.loads((newer / BUNDLE).read_text())
    (newer / BUNDLE).write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(DiytError, match=r"bundle\.json: bundle format version 2, but this DiyT reads version 1"):
        load_bundle(newer)

    no_weights = _broken_copy(micro, tmp_path, "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(DiytError, match=r"no_weights/model\.safetensors: missing from the bundle; make it again"):
        load_bundle(no_weights)

    pickled = _broken_copy(micro, tmp_path, "pickled")
    torch.save({"x": torch.zeros(1)}, pickled / "model.safetensors")  # a pickle is never opened: its digest differs
    with pytest.raises(DiytError, match=r"not the weights this bundle was made with"):
        load_bundle(pickled)

    partial = _broken_copy(micro, tmp_path, "partial")
    (partial / BUNDLE).write_text(json.dumps({k: v for k, v in manifest.items() if k != "thresholds"}))
    with pytest.raises(DiytError, match=r"partial/bundle\.json: incomplete or invalid \(KeyError"):
        load_bundle(partial)

    odd_scoring = _broken_copy(micro, tmp_path, "odd_scoring")
    (odd_scoring / BUNDLE).write_text(json.dumps({**manifest, "scoring": {**manifest["scoring"], "num_masks": 0}}))
    with pytest.raises(DiytError, match=r"incomplete or invalid"):
        load_bundle(odd_scoring)

    with pytest.raises(DiytError, match=r"model/bundle\.json: missing, so .* is not a DiyT model bundle"):
        load_bundle(micro.bundle.parent / "model")  # a trained model folder, not a bundle


def test_cli_usage_and_bundle_errors_exit_2(micro, tmp_path, capsys):
    newer = _broken_copy(micro, tmp_path, "newer")
    manifest = json.loads((newer / BUNDLE).read_text())
    (newer / BUNDLE).write_text(json.dumps({**manifest, "format_version": 99}))
    proc = _cli("predict", "--model", str(newer), "--input", str(micro.category), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {newer / BUNDLE}: bundle format version 99, but this DiyT reads version 1; make it again with "
        "`dvc repro evaluate@<category>`, or use the DiyT version that wrote it"]
    assert not (tmp_path / "o").exists()  # nothing half-written

    with pytest.raises(SystemExit) as exit_:
        cli_main(["predict", "--model", str(micro.bundle), "--input", str(tmp_path / "nothing*.png"),
                  "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "no images found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["predict", "--model", str(micro.bundle), "--input", "x.png", "--out", "o", "--batch-size", "0"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        cli_main(["predict", "--help"])
    assert "exit codes:" in capsys.readouterr().out


def test_device_cuda_without_cuda_is_a_clear_error(micro, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["predict", "--model", str(micro.bundle), "--input", str(micro.category), "--out",
                  str(tmp_path), "--device", "cuda"])
    assert exit_.value.code == 2 and "--device cuda: no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_agree_with_cpu(micro):
    cpu, gpu = load_bundle(micro.bundle, "cpu"), load_bundle(micro.bundle, "cuda")
    pixels = np.stack([cpu.preprocess.load(p)[0] for p in micro.test_images])
    s_cpu, m_cpu = TorchScorer(cpu, torch.device("cpu"))(pixels)
    s_gpu, m_gpu = TorchScorer(gpu, torch.device("cuda"))(pixels)
    # the evaluation, and so predict, score under bf16 autocast on CUDA: agreement to bf16 precision
    np.testing.assert_allclose(m_gpu, m_cpu, rtol=5e-2, atol=5e-2 * float(m_cpu.max()))
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=5e-2)
