"""The report stage on small hand-written evaluation results: tables, HTML, architecture, facts, errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyBboxPatch
from matplotlib.text import Text
from PIL import Image

from diyt.config import EvalParams, ModelParams
from diyt.errors import DiytError
from diyt.report.ablation import read_ablation
from diyt.report.architecture import COLOURS, architecture_figure, architecture_spec
from diyt.report.document import Table
from diyt.report.examples import pick_examples
from diyt.report.markdown import table_markdown
from diyt.report.results import load_category
from diyt.report.timings import read_timings, record_stage_time, stage_timer
from diyt.report.writer import ReportPaths, make_report

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("report_stage", ROOT / "stages" / "report.py")
report_stage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_stage)

CATEGORIES = ("weave", "stone")
METRICS = {
    "weave": {"image_auroc": 0.9, "image_ap": 0.8, "f1": 0.7, "f1_max": 0.75, "pixel_auroc": 0.95, "aupro": 0.6},
    "stone": {"image_auroc": 0.7, "image_ap": 0.6, "f1": 0.5, "f1_max": 0.55, "pixel_auroc": 0.85, "aupro": 0.4},
}
# (image, defect_type, label, score): threshold 1.0
SCORES = [("test/good/000.png", "good", 0, 0.2), ("test/good/001.png", "good", 0, 1.4),
          ("test/hole/000.png", "hole", 1, 2.5), ("test/hole/001.png", "hole", 1, 0.6),
          ("test/stain/000.png", "stain", 1, 1.1)]
MICRO_MODEL = {"preset": "tiny", "image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2,
               "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, "aggregate_layers": [1, 3]}
SECTION_TITLES = ["1. Results per category", "2. ROC and PRO curves", "3. Score histograms",
                  "4. Reconstruction examples", "5. Architecture", "6. Run facts", "7. Ablation"]


def write_category(root: Path, category: str) -> None:
    """What the evaluate stage writes, in miniature."""
    base = root / category
    (base / "plots").mkdir(parents=True)
    (base / "figures").mkdir()
    metrics = {**METRICS[category], "threshold": 1.0, "per_defect_type_auroc": {"hole": 0.8, "stain": 0.9},
               "num_test_normal": 2, "num_test_defective": 3, "num_val": 2}
    (base / "metrics.json").write_text(json.dumps(metrics))
    (base / "plots" / "roc.json").write_text(json.dumps([{"fpr": 0, "tpr": 0}, {"fpr": 0.5, "tpr": 0.9},
                                                          {"fpr": 1, "tpr": 1}]))
    (base / "plots" / "pro.json").write_text(json.dumps([{"fpr": f, "pro": min(1.0, 3 * f)}
                                                          for f in np.linspace(0, 1, 11)]))
    (base / "plots" / "scores.json").write_text(json.dumps(
        [{"image": i, "defect_type": d, "label": lab, "score": s, "predicted": int(s >= 1.0)}
         for i, d, lab, s in SCORES]))
    for image, defect, _, _ in SCORES:
        Image.new("RGB", (16, 4), (200, 30, 30)).save(base / "figures" / f"{defect}_{Path(image).stem}.png")


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    categories = tmp_path / "reports" / "synthetic" / "categories"
    for c in CATEGORIES:
        write_category(categories, c)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"categories": list(CATEGORIES), "image_size": 32},
                                      "model": MICRO_MODEL}))
    config = tmp_path / "models" / "pretrain" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"model": ModelParams(**MICRO_MODEL).model_dump(mode="json"),
                                  "params_digest": "0123456789ab"}))
    out = tmp_path / "reports"
    return {"params": params, "categories": categories, "config": config, "timings": out / "timings",
            "ablation": out / "ablation.json", "summary": out / "synthetic" / "metrics.json",
            "markdown": out / "report.md", "html": out / "report.html", "figures": out / "report_figures"}


def run_stage(p: dict[str, Path]) -> None:
    report_stage.main(["--params", str(p["params"]), "--reports", str(p["categories"]),
                       "--model-config", str(p["config"]), "--timings", str(p["timings"]),
                       "--ablation", str(p["ablation"]), "--summary", str(p["summary"]),
                       "--markdown", str(p["markdown"]), "--html", str(p["html"]), "--figures", str(p["figures"])])


@pytest.fixture
def rendered(project: dict[str, Path]) -> dict[str, Path]:
    record_stage_time(project["timings"] / "pretrain.json", "pretrain", 75.5)
    run_stage(project)
    return project


def test_summary_and_table_rows_with_the_hand_computed_mean(rendered):
    summary = json.loads(rendered["summary"].read_text())
    assert set(summary) == {"categories", "mean"}
    assert summary["mean"] == pytest.approx({"image_auroc": 0.8, "image_ap": 0.7, "f1": 0.6, "f1_max": 0.65,
                                             "pixel_auroc": 0.9, "aupro": 0.5})
    md = rendered["markdown"].read_text()
    # seed's order: image AUROC, F1, AUPRO, then pixel AUROC, image AP, F1-max
    assert "| weave | 0.900 | 0.700 | 0.600 | 0.950 | 0.800 | 0.750 |" in md
    assert "| stone | 0.700 | 0.500 | 0.400 | 0.850 | 0.600 | 0.550 |" in md
    assert "| **mean** | **0.800** | **0.600** | **0.500** | **0.900** | **0.700** | **0.650** |" in md


def test_html_is_self_contained_with_every_section(rendered):
    html = rendered["html"].read_text()
    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in html
    sources = re.findall(r'src="([^"]*)"', html)
    # roc, pro, histograms, architecture + 3 examples per category
    assert len(sources) == 4 + 3 * len(CATEGORIES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://|<link|<script|url\(", html)
    assert "<style>" in html


def test_markdown_links_generated_figures_and_example_panels(rendered):
    md = rendered["markdown"].read_text()
    assert sorted(p.name for p in rendered["figures"].iterdir()) == [
        "architecture.png", "histograms.png", "pro.png", "roc.png"]
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (rendered["markdown"].parent / link).is_file(), link
    assert "synthetic/categories/weave/figures/hole_000.png" in md


def test_run_facts_and_stage_timings(rendered):
    md = rendered["markdown"].read_text()
    assert "| params digest |" in md and "| git commit |" in md
    assert "| model trained with params digest | 0123456789ab" in md
    assert re.search(r"\| pretrain \| 1 min 16 s \| \S+", md)
    assert "No ablation results yet" in md


def test_examples_pick_best_detection_worst_miss_worst_false_alarm(project):
    examples = pick_examples(load_category(project["categories"], "weave"))
    assert [(e.kind, e.image, e.flagged) for e in examples] == [
        ("best detection", "test/hole/000.png", True), ("worst miss", "test/hole/001.png", False),
        ("worst false alarm", "test/good/001.png", True)]
    assert examples[1].panel.name == "hole_001.png"


def test_architecture_figure_names_the_aggregated_layers():
    spec = architecture_spec(ModelParams(**MICRO_MODEL))
    assert spec.aggregate_layers == (1, 3) and spec.grid == (4, 4) and spec.num_hidden == 8
    fig = architecture_figure(spec)
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "encoder layers 1, 3" in texts
    assert "Encoder: 4 × ViT block, width 32" in texts and "Decoder: 1 × ViT block, width 16" in texts
    orange = [p for p in fig.findobj(FancyBboxPatch) if p.get_facecolor() == to_rgba(COLOURS["aggregated"][0])]
    assert len(orange) == 2  # blocks 1 and 3

    off = " ".join(t.get_text() for t in architecture_figure(
        architecture_spec(ModelParams(**{**MICRO_MODEL, "aggregate_layers": []}))).findobj(Text))
    assert "no FeatureAggregationModule" in off and "encoder layers" not in off


def test_missing_category_metrics_is_one_line_naming_file_and_remedy(project, capsys):
    (project["categories"] / "stone" / "metrics.json").unlink()
    paths = ReportPaths(project["categories"], project["config"], None, project["ablation"], project["summary"],
                        project["markdown"], project["html"], project["figures"])
    with pytest.raises(DiytError) as err:
        make_report(paths, dataset="synthetic", categories=CATEGORIES, eval_params=EvalParams(), params_digest="x")
    message = str(err.value)
    assert "\n" not in message
    assert str(project["categories"] / "stone" / "metrics.json") in message
    assert "dvc repro evaluate@stone" in message
    with pytest.raises(SystemExit) as exit_:  # the stage turns it into one line on stderr
        run_stage(project)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not project["html"].exists()


def test_ablation_table_and_format_errors(project):
    project["ablation"].write_text(json.dumps({"rows": [
        {"name": "plain MAE", "overrides": {"model.norm": "layernorm", "model.aggregate_layers": []},
         "image_auroc": 0.61, "aupro": 0.5, "pixel_auroc": 0.8, "train_images_per_s": 40.25},
        {"name": "DiyT", "overrides": {}, "image_auroc": 0.8, "aupro": 0.5, "pixel_auroc": 0.9}]}))
    run_stage(project)
    md = project["markdown"].read_text()
    assert ("| plain MAE | `-S model.norm=layernorm` `-S model.aggregate_layers=[]` | 0.610 | 0.500 | 0.800 | 40.2 |"
            in md)
    assert "| DiyT | defaults | 0.800 | 0.500 | 0.900 | – |" in md

    # as benchmarks/ablation.py writes it: overrides as given to -S, F1 and no throughput
    project["ablation"].write_text(json.dumps({"dataset": "synthetic", "rows": [
        {"name": "plain-mae", "overrides": {"model.aggregate_layers": "[]"}, "image_auroc": 0.61, "aupro": 0.5,
         "pixel_auroc": 0.8, "f1": 0.55}]}))
    run_stage(project)
    md = project["markdown"].read_text()
    assert "| experiment | overrides | image AUROC | F1 | AUPRO | pixel AUROC |\n" in md
    assert "| plain-mae | `-S model.aggregate_layers=[]` | 0.610 | 0.550 | 0.500 | 0.800 |" in md

    # over several seeds: mean ± std, and a seeds column
    project["ablation"].write_text(json.dumps({"dataset": "synthetic", "rows": [
        {"name": "plain MAE", "overrides": {"eval.num_masks": 1}, "image_auroc": 0.61, "aupro": 0.5,
         "pixel_auroc": 0.8, "f1": 0.55, "seeds": 3, "image_auroc_std": 0.0125, "aupro_std": 0.002,
         "pixel_auroc_std": 0.0, "f1_std": 0.01, "train_images_per_s": 50.0}]}))
    run_stage(project)
    md = project["markdown"].read_text()
    assert ("| plain MAE | `-S eval.num_masks=1` | 0.610 ± 0.013 | 0.550 ± 0.010 | 0.500 ± 0.002 | 0.800 ± 0.000 "
            "| 3 | 50.0 |") in md

    project["ablation"].write_text(json.dumps({"rows": [{"name": "x", "image_auroc": 0.5, "aupro": 0.5}]}))
    with pytest.raises(DiytError, match=r"ablation.json: rows.0.pixel_auroc: Field required"):
        read_ablation(project["ablation"])


def test_stage_timings_are_written_by_rank_zero_only(tmp_path, monkeypatch):
    record_stage_time(tmp_path / "prepare.json", "prepare", 1.25)
    monkeypatch.setenv("RANK", "1")
    record_stage_time(tmp_path / "pretrain.json", "pretrain", 2.0)
    monkeypatch.delenv("RANK")
    with stage_timer(None, "evaluate@nut"):  # no --timing given: nothing written
        pass
    assert [(t["stage"], t["seconds"]) for t in read_timings(tmp_path)] == [("prepare", 1.25)]
    assert read_timings(tmp_path / "absent") == []


def test_a_stage_timing_carries_the_seconds_of_its_parts(tmp_path):
    with stage_timer(tmp_path / "evaluate@nut.json", "evaluate@nut") as parts:
        parts["error_level_fit_seconds"] = 0.25
    record = json.loads((tmp_path / "evaluate@nut.json").read_text())
    assert record["error_level_fit_seconds"] == 0.25 and record["seconds"] >= 0
    assert [t["stage"] for t in read_timings(tmp_path)] == ["evaluate@nut"]  # the report reads it as any other


def test_bold_rows_leave_empty_cells_empty():
    table = Table(["stage", "seconds", "host"], [["pretrain", "110", "cpu"], ["total", "110", ""]], bold_rows=(1,))
    assert table_markdown(table).splitlines()[-1] == "| **total** | **110** |  |"
