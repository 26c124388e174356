"""The dashboard under Streamlit's AppTest on fixture results, and the loaders it calls (`diyt.results`,
`diyt.inference`) on their own.

The fixture is a small git + DVC project: two categories with hand-picked scores (so F1 at any threshold can be
computed by hand), their curves, figures and a micro model, committed as the baseline, plus one experiment saved
with `dvc exp save`.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import yaml
from PIL import Image
from streamlit.testing.v1 import AppTest

from diyt import inference, results
from diyt.config import parse_params
from diyt.data import synthetic
from diyt.errors import DataError, DiytError
from diyt.eval import metrics
from diyt.io import write_json
from diyt.model import build_model
from diyt.report.panels import panel
from diyt.report.summary import summarize
from diyt.train.checkpoint import save_model
from dvc_repo import DvcRepo

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
DATASET = "synthetic"
# category -> (normal scores, [(defect type, score)], validation threshold)
SCORES = {
    "weave": ([0.10, 0.20, 0.30, 0.40], [("scratch", 0.35), ("hole", 0.50), ("scratch", 0.60), ("hole", 0.70)], 0.45),
    "nut": ([0.20, 0.30, 0.50, 0.60], [("crack", 0.40), ("crack", 0.70), ("crack", 0.80), ("crack", 0.90)], 0.65),
}
PARAMS = {
    "data": {"categories": list(SCORES), "image_size": 64},
    "model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "aggregate_layers": [1]},
    "eval": {"sigma": 1.0},
}
SIZE = 32  # side of the fixture figures' tiles


# ------------------------------------------------------------------------------------------------ fixture
def write_results(root: Path, shift: float = 0.0) -> None:
    """Every evaluate/report output of the fixture categories; `shift` raises the defective scores."""
    rng = np.random.default_rng(0)
    summary = {}
    for category, (normal, defective, threshold) in SCORES.items():
        rows = [("good", f"test/good/{i:03d}.png", 0, s) for i, s in enumerate(normal)]
        counts: dict[str, int] = {}
        for kind, s in defective:
            counts[kind] = counts.get(kind, -1) + 1
            rows.append((kind, f"test/{kind}/{counts[kind]:03d}.png", 1, s + shift))
        labels = np.array([r[2] for r in rows])
        scores = np.array([r[3] for r in rows])
        out = root / "reports" / DATASET / "categories" / category
        m = {"image_auroc": metrics.image_auroc(labels, scores), "image_ap": metrics.image_ap(labels, scores),
             "f1": metrics.f1_at(labels, scores, threshold), "f1_max": metrics.f1_max(labels, scores)[0],
             "pixel_auroc": 0.9 + shift / 10, "aupro": 0.8 + shift / 10, "threshold": threshold,
             "pixel_threshold": 0.3, "num_test_normal": len(normal), "num_test_defective": len(defective),
             "num_val": 4,
             "per_defect_type_auroc": metrics.per_defect_type_auroc(labels, scores, [r[0] for r in rows])}
        write_json(out / "metrics.json", m)
        summary[category] = m
        roc, pr = metrics.roc_points(labels, scores), metrics.pr_points(labels, scores)
        write_json(out / "plots/roc.json", [{"fpr": float(x), "tpr": float(y)} for x, y in zip(*roc)])
        write_json(out / "plots/pr.json", [{"recall": float(x), "precision": float(y)} for x, y in zip(*pr)])
        write_json(out / "plots/pro.json", [{"fpr": 0.0, "pro": 0.0}, {"fpr": 0.1, "pro": 0.6 + shift},
                                            {"fpr": 1.0, "pro": 1.0}])
        write_json(out / "plots/scores.json", [
            {"image": path, "defect_type": kind, "label": label, "score": s, "predicted": int(s >= threshold)}
            for kind, path, label, s in rows])
        (out / "figures").mkdir(exist_ok=True)
        for kind, path, label, s in rows:
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[8:16, 8:16] = label
            image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            panel(image, mask, rng.random((SIZE, SIZE)) * s, image, 0.0, 1.0, f"{path} {s:.2f}").save(
                out / "figures" / f"{kind}_{Path(path).stem}.png")
    write_json(root / "reports" / DATASET / "metrics.json", summarize(summary))


def write_models(root: Path) -> None:
    """A micro model per category (random weights) and the params.yaml they were 'evaluated' with."""
    params = parse_params(PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for category in SCORES:
        torch_model = build_model(params.model)
        save_model(root / "models" / DATASET / category, torch_model,
                   {"model": params.model.model_dump(mode="json"), "normalize": params.data.normalize,
                    "dataset": DATASET, "categories": [category]})


def make_project(path: Path) -> Path:
    """The fixture project: results and models committed, then an experiment `sharper` (defects +0.2)."""
    write_results(path)
    write_models(path)
    (path / "toy.yaml").write_text("shift: 0.0\n")
    files = [f"reports/{DATASET}/metrics.json", *(f"reports/{DATASET}/categories/{c}/metrics.json" for c in SCORES)]
    (path / "dvc.yaml").write_text(yaml.safe_dump({"params": ["toy.yaml"], "metrics": files}))
    repo = DvcRepo(path)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    repo.commit("baseline")
    write_results(path, shift=0.2)
    (path / "toy.yaml").write_text("shift: 0.2\n")
    repo.dvc("exp", "save", "-q", "-n", "sharper")
    write_results(path)  # the working tree back to the baseline's results
    (path / "toy.yaml").write_text("shift: 0.0\n")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(autouse=True)
def fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()


def app(root: Path, monkeypatch, page: str | None = None) -> AppTest:
    """The app on `root`, run once (and switched to `page`, views/<page>.py, when given)."""
    monkeypatch.setenv("DIYT_ROOT", str(root))
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def png(image: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# ---------------------------------------------------------------------------------------------- loaders
def test_results_loaders_read_summaries_baseline_and_experiments(project):
    reports = project / "reports"
    assert results.datasets(reports) == [DATASET]
    assert results.categories(reports, DATASET) == ["weave", "nut"]
    assert results.trained_categories(project / "models", DATASET) == ["nut", "weave"]
    assert results.summary(project, reports, DATASET, "HEAD") == results.summary(project, reports, DATASET)
    runs = {e.label: e for e in results.experiments(project)}
    assert [e.kind for e in runs.values()] == ["workspace", "commit", "experiment"]
    sharper = runs["sharper"]
    assert sharper.params["toy.yaml:shift"] == 0.2
    params, changed = results.diff_frames(runs["workspace"], sharper)
    assert params.to_dict("records") == [{"key": "toy.yaml:shift", "A": "0", "B": "0.2"}]
    weave_f1 = changed.set_index("key").loc[f"reports/{DATASET}/metrics.json: categories.weave.f1"]
    assert weave_f1["B - A"] == pytest.approx(1.0 - 6 / 7)  # at 0.45 the shifted defects are all found
    curves = results.curves(project, reports, DATASET, "weave", "pro", {"now": "workspace", "exp": sharper.rev})
    assert curves.groupby("source")["pro"].apply(list).to_dict() == {"now": [0, 0.6, 1], "exp": [0, 0.8, 1]}


def test_metrics_table_shows_the_change_from_the_baseline():
    current = {"categories": {"a": {"f1": 0.8, "aupro": 0.5}}, "mean": {"f1": 0.8, "aupro": 0.5}}
    baseline = {"categories": {"a": {"f1": 0.6}}, "mean": {"f1": 0.6}}
    table = results.metrics_table(current, baseline, keys=("f1", "aupro"))
    assert list(table.columns) == ["F1", "Δ F1", "AUPRO", "Δ AUPRO"]
    assert table.loc["a", "Δ F1"] == pytest.approx(0.2) and np.isnan(table.loc["mean", "Δ AUPRO"])
    assert list(results.metrics_table(current).columns) == ["image AUROC", "F1", "AUPRO", "pixel AUROC"]


def test_operating_point_and_outcomes_match_hand_counts():
    labels, scores = [0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7]
    point = results.operating_point(labels, scores, 0.3)
    assert (point.tp, point.fp, point.fn, point.tn) == (4, 2, 0, 2)
    assert (point.precision, point.recall, point.f1) == pytest.approx((4 / 6, 1.0, 0.8))
    assert list(results.outcomes(labels, scores, 0.45)) == ["TN"] * 4 + ["FN", "TP", "TP", "TP"]
    low, high, step = results.slider_range(scores, 0.9)
    assert (low, high) == (0.1, 0.9) and step == pytest.approx(0.8 / 500)


def test_upload_checks_name_the_upload(project):
    bundle = inference.load_model(project / "bundles/none", project / f"models/{DATASET}/weave",
                                  project / f"reports/{DATASET}/categories/weave/metrics.json",
                                  project / "params.yaml")
    assert (bundle.thresholds.image, bundle.out_size, bundle.preprocess.image_size) == (0.45, 64, 32)
    score = inference.scorer(bundle)
    result = inference.score_upload(bundle, score, png(np.zeros((40, 50, 3), np.uint8)), "part.png")
    assert result.image.shape == (64, 64, 3) and result.heatmap.size == (64, 64)
    noisy = png(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert inference.score_upload(bundle, score, png(np.zeros((40, 50, 3), np.uint8)), "again.png").score == \
        result.score  # the same pixels, the same score
    low, high = sorted([(result.score, png(np.zeros((40, 50, 3), np.uint8))),
                        (inference.score_upload(bundle, score, noisy, "noisy.png").score, noisy)])
    assert low[0] < high[0]
    for threshold, verdicts in [(low[0], ["anomalous", "anomalous"]), ((low[0] + high[0]) / 2, ["normal", "anomalous"]),
                                (np.nextafter(high[0], np.inf), ["normal", "normal"])]:
        judged = dataclasses.replace(bundle, thresholds=dataclasses.replace(bundle.thresholds, image=float(threshold)))
        assert [inference.score_upload(judged, score, data, "part.png").verdict for _, data in (low, high)] == verdicts
    with pytest.raises(DataError, match=r"^notes\.txt: not a readable image"):
        inference.score_upload(bundle, score, b"plain text", "notes.txt")
    with pytest.raises(DataError, match=r"^bomb\.png: .*decompression bomb"):
        inference.score_upload(bundle, score, png(Image.new("1", (9000, 9000))), "bomb.png")
    with pytest.raises(DataError, match=r"^big\.png: 21\.0 MB is over the 20 MB upload limit"):
        inference.check_size("big.png", 21 * 2**20)


def test_without_a_bundle_fitted_scoring_parts_are_refused(project, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["normalize_maps"] = "position"  # (the error level, which needs a feature model, alike)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DiytError, match=r"no model bundle, and its scoring \(eval\.normalize_maps: position\) uses "
                                        r"what the evaluation fitted"):
        inference.load_model(project / "bundles/none", project / f"models/{DATASET}/weave",
                             project / f"reports/{DATASET}/categories/weave/metrics.json", tmp_path / "params.yaml")


# ------------------------------------------------------------------------------------------------ pages
def test_overview_compares_with_baseline_and_experiments(project, monkeypatch):
    at = app(project, monkeypatch)
    assert at.title[0].value == f"Overview · {DATASET}"
    mean_auroc = np.mean([metrics.image_auroc([0] * 4 + [1] * 4, n + [s for _, s in d]) for n, d, _ in SCORES.values()])
    assert metric(at, "mean image AUROC") == f"{mean_auroc:.3f}"
    table = at.dataframe[0].value
    assert list(table.index) == ["weave", "nut", "mean"]
    assert {"image AUROC", "F1", "AUPRO", "pixel AUROC", "Δ F1"} <= set(table.columns)
    assert (table["Δ F1"] == 0).all()  # the working tree is the baseline
    comparison = at.dataframe[1].value
    assert list(comparison.index) == ["workspace", next(i for i in comparison.index if i.startswith("master")
                                                        or i.startswith("main")), "sharper"]
    assert comparison.loc["sharper", "AUPRO"] == pytest.approx(0.82)
    at.radio(key="overview_row").set_value("weave").run()
    assert at.dataframe[1].value.loc["sharper", "F1"] == pytest.approx(1.0)


def test_curves_overlay_workspace_baseline_and_an_experiment(project, monkeypatch):
    at = app(project, monkeypatch, "curves")
    sources = at.multiselect(key="curves_sources")
    assert sources.value[0] == "workspace" and sources.value[2] == "sharper" and len(sources.value) == 3
    assert len(at.get("vega_lite_chart")) == 3
    assert at.dataframe[0].value["image AUROC"].tolist() == pytest.approx([15 / 16, 15 / 16, 1.0])
    sources.set_value(["workspace", "sharper"]).run()
    assert not at.exception
    assert list(at.dataframe[0].value.index) == ["workspace", "sharper"]


def test_heatmaps_filter_by_outcome_and_sort_by_score(project, monkeypatch):
    at = app(project, monkeypatch, "heatmaps")
    assert len(at.image) == 8  # weave's test images
    at.multiselect(key="heatmaps_outcomes").set_value(["FN", "FP"]).run()
    assert captions(at) == ["FN · scratch · test/scratch/000.png · score 0.3500"]
    at.multiselect(key="heatmaps_outcomes").set_value(["TP"]).run()
    assert [float(c.rsplit(" ", 1)[1]) for c in captions(at)] == [0.7, 0.6, 0.5]


def test_threshold_slider_moves_f1_and_heatmap_outcomes(project, monkeypatch):
    at = app(project, monkeypatch, "threshold")
    assert metric(at, "F1") == f"{6 / 7:.3f}"  # at the validation threshold 0.45: TP 3, FP 0, FN 1
    slider = at.slider(key=f"slider/threshold/{DATASET}/weave")
    assert (slider.min, slider.max, slider.value) == (pytest.approx(0.1), pytest.approx(0.7), pytest.approx(0.45))
    slider.set_value(0.3).run()
    assert metric(at, "F1") == "0.800"  # TP 4, FP 2 (0.3, 0.4), FN 0: 2*4 / (2*4 + 2 + 0)
    assert (metric(at, "Precision"), metric(at, "Recall")) == ("0.667", "1.000")
    assert at.dataframe[0].value.to_numpy().tolist() == [[4, 0], [2, 2]]
    at.switch_page("views/heatmaps.py").run()
    assert sorted(c.split(" · ")[0] for c in captions(at)) == ["FP", "FP", "TN", "TN", "TP", "TP", "TP", "TP"]


def test_live_inference_scores_an_upload_and_refuses_bad_files(project, monkeypatch):
    at = app(project, monkeypatch, "inference")
    assert at.selectbox(key="inference_model").options == ["nut", "weave"]
    assert at.selectbox(key="inference_model").value == "weave"
    image = synthetic.render("weave", 64, (7, 0, 2, 0), "hole")[0]
    at.file_uploader(key="inference_upload").set_value(("part.png", png(image), "image/png")).run()
    verdicts = [e.value for e in (*at.error, *at.success)]
    assert len(verdicts) == 1 and verdicts[0].startswith("Verdict: **")
    assert metric(at, "Threshold") == "0.4500" and len(at.image) == 2
    for name, data, message in [("notes.png", b"not an image", "not a readable image"),
                                ("bomb.png", png(Image.new("1", (9000, 9000))), "decompression bomb"),
                                ("big.png", b"\0" * (21 * 2**20), "upload limit")]:
        at.file_uploader(key="inference_upload").set_value((name, data, "application/octet-stream")).run()
        assert not at.exception and len(at.error) == 1
        assert at.error[0].value.startswith(f"Cannot score this upload: {name}") and message in at.error[0].value


def test_experiments_page_diffs_params_and_metrics(project, monkeypatch):
    at = app(project, monkeypatch, "experiments")
    assert at.selectbox(key="experiments_b").value == "sharper"
    params, changed = (frame.value for frame in at.dataframe)
    assert params.to_dict("records") == [{"key": "toy.yaml:shift", "A": "0", "B": "0.2"}]
    assert f"reports/{DATASET}/categories/weave/metrics.json: f1" in set(changed["key"])
    at.toggle(key="experiments_only").set_value(False).run()
    assert len(at.dataframe[0].value) > 10  # every param of params.yaml and toy.yaml


@pytest.mark.parametrize("page", [None, "curves", "heatmaps", "threshold", "inference", "experiments"])
def test_every_page_says_how_to_produce_results_when_there_are_none(tmp_path, monkeypatch, page):
    at = app(tmp_path, monkeypatch, page)
    assert any("dvc repro" in c.value for c in at.code), [c.value for c in at.code]
