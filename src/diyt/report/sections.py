"""The report's seven sections, each built by one function from results already on disk, and the whole."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diyt.config import EvalParams
from diyt.report.ablation import HOW_TO_RUN, Ablation, ablation_table
from diyt.report.architecture import ArchitectureSpec, architecture_figure, architecture_rows
from diyt.report.document import Document, Image, Paragraph, Section, Subsection, Table, figure_png
from diyt.report.examples import pick_examples
from diyt.report.facts import RunFacts
from diyt.report.figures import AUPRO_FPR_LIMIT, histograms_figure, pro_figure, roc_figure
from diyt.report.results import CategoryResults
from diyt.report.tables import frame_rows, results_frame


def results_section(summary: dict, results: Sequence[CategoryResults]) -> Section:
    frame = results_frame(summary)
    per_type = {r.name: r.metrics.get("per_defect_type_auroc", {}) for r in results}
    defect_types = sorted({t for aurocs in per_type.values() for t in aurocs})
    counts = [[r.name, *(str(r.metrics.get(k, "–")) for k in ("num_test_normal", "num_test_defective", "num_val")),
               *(f"{per_type[r.name][t]:.3f}" if t in per_type[r.name] else "–" for t in defect_types)]
              for r in results]
    return Section("results", "1. Results per category", [
        Table(["category", *frame.columns], frame_rows(frame), bold_rows=(len(frame) - 1,)),
        Paragraph("Image AUROC and AP rank test images by their score (label: any defect pixel). F1 is measured "
                  "at the threshold chosen on held-out validation normals, never on the test set; F1-max is the "
                  "best threshold on the test set, shown for reference only. Pixel AUROC ranks every pixel; "
                  f"AUPRO is the per-region overlap integrated up to a false-positive rate of {AUPRO_FPR_LIMIT:g}, "
                  f"divided by {AUPRO_FPR_LIMIT:g}. The mean row is the plain mean over categories."),
        Subsection("Test set and image AUROC per defect type", [
            Table(["category", "normal", "defective", "validation normals", *defect_types], counts)]),
    ])


def curves_section(results: Sequence[CategoryResults]) -> Section:
    return Section("curves", "2. ROC and PRO curves", [
        Image("roc.png", figure_png(roc_figure(results)), "Image-level ROC, one line per category", width=0.5),
        Image("pro.png", figure_png(pro_figure(results)),
              f"Pixel-level PRO up to FPR {AUPRO_FPR_LIMIT:g}, one line per category", width=0.5),
    ])


def threshold_rule(eval_params: EvalParams) -> str:
    if eval_params.threshold == "quantile":
        return f"the {eval_params.threshold_quantile:g} quantile of the validation normals' scores"
    return f"mean + {eval_params.threshold_k:g} std of the validation normals' scores"


def histograms_section(results: Sequence[CategoryResults], eval_params: EvalParams) -> Section:
    return Section("histograms", "3. Score histograms", [
        Paragraph(f"Test image scores ({eval_params.image_score} of the anomaly map), normal against defective. "
                  f"The dashed line is the image threshold: {threshold_rule(eval_params)}."),
        Image("histograms.png", figure_png(histograms_figure(results)),
              "Normal vs defective test scores per category, validation threshold dashed"),
    ])


def examples_section(results: Sequence[CategoryResults]) -> Section:
    blocks: list = [Paragraph(
        "Per category: the highest-scoring defective image (best detection), the lowest-scoring defective image "
        "(worst miss) and the highest-scoring normal image (worst false alarm). Each panel shows input | ground "
        "truth | anomaly map over the input (ground truth outlined in red) | reconstruction (with the feature "
        "target: the reconstructed feature map, its three principal components as colours); the colour scale "
        "is shared within a category.")]
    for r in results:
        blocks.append(Subsection(r.name, [
            Image(f"{r.name}_{e.kind.replace(' ', '_')}.png", e.panel.read_bytes(), e.caption(r.threshold),
                  source=e.panel) for e in pick_examples(r)]))
    return Section("examples", "4. Reconstruction examples", blocks)


def architecture_section(spec: ArchitectureSpec, config_path: Path) -> Section:
    return Section("architecture", "5. Architecture", [
        Paragraph(f"Generated from the pre-trained model's configuration (`{config_path}`); orange encoder "
                  "blocks feed the FeatureAggregationModule."),
        Image("architecture.png", figure_png(architecture_figure(spec), dpi=100), "The configured MAE-DyT model"),
        Table(["part", "configuration"], architecture_rows(spec), align="ll"),
    ])


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60} h {minutes % 60} min {secs} s" if minutes >= 60 else f"{minutes} min {secs} s"


def device_text(hw: dict) -> str:
    if hw.get("gpu"):
        return f"{hw['gpu']}" + (f" ×{hw['gpus']}" if (hw.get("gpus") or 1) > 1 else "")
    return f"CPU: {hw.get('cpu', 'unknown')}, {hw.get('cores', '?')} cores" if hw else "–"


def facts_section(facts: RunFacts, dataset: str, categories: Sequence[str], timings_dir: Path | None) -> Section:
    hw = facts.hardware
    rows = [["dataset", f"{dataset} ({', '.join(categories)})"],
            ["params digest", facts.params_digest],
            ["git commit", facts.git_commit],
            ["CPU", f"{hw.get('cpu')} ({hw.get('cores')} logical cores)"],
            ["GPU", f"{hw['gpu']} ×{hw['gpus']}" if hw.get("gpu") else "none"],
            ["torch / Python", f"{hw.get('torch')} / {hw.get('python')}"]]
    if facts.model_digest and facts.model_digest != facts.params_digest:
        rows.insert(2, ["model trained with params digest", f"{facts.model_digest} (differs: params that training "
                                                             "does not read changed since, or the model is stale)"])
    blocks: list = [Paragraph("Params digest: `diyt.config.Params.digest()` of params.yaml. Hardware: the machine "
                              "that rendered this report."),
                    Table(["fact", "value"], rows, align="ll")]
    if facts.timings:
        total = sum(t["seconds"] for t in facts.timings)
        timing_rows = [[t["stage"], duration(t["seconds"]), t["finished"].replace("T", " "),
                        device_text(t["hardware"])] for t in facts.timings]
        timing_rows.append(["total", duration(total), "", ""])
        blocks.append(Subsection("Wall time per stage", [Table(["stage", "wall time", "finished (UTC)", "device"],
                                                               timing_rows, bold_rows=(len(timing_rows) - 1,),
                                                               align="lrll")]))
    else:
        where = f"`{timings_dir}`" if timings_dir is not None else "a timings folder"
        blocks.append(Subsection("Wall time per stage", [Paragraph(
            f"No stage timings under {where}: each stage records its own with "
            "`diyt.report.timings.record_stage_time(path, stage, seconds)`.")]))
    return Section("facts", "6. Run facts", blocks)


def ablation_section(ablation: Ablation | None, ablation_path: Path) -> Section:
    if ablation is None:
        return Section("ablation", "7. Ablation", [Paragraph(
            f"No ablation results yet: `{ablation_path}` does not exist. `{HOW_TO_RUN}` runs the ablation (plain "
            "MAE, each seed feature added alone, full DiyT) over several training seeds and writes it (format: "
            "`diyt.report.ablation`); then render the report again with `dvc repro -s -f report`.")])
    columns, rows = ablation_table(ablation)
    return Section("ablation", "7. Ablation", [
        Paragraph(f"From `{ablation_path}`" + (f" ({ablation.dataset})" if ablation.dataset else "")
                  + ": dataset means over categories (mean ± std over training seeds where given); overrides are the "
                  "`dvc exp run -S` pairs that reproduce each row."),
        Table(columns, rows, align="ll" + "r" * (len(columns) - 2)),
    ])


def build_report(*, dataset: str, summary: dict, results: Sequence[CategoryResults], eval_params: EvalParams,
                 spec: ArchitectureSpec, model_config: Path, facts: RunFacts, ablation: Ablation | None,
                 ablation_path: Path, timings_dir: Path | None) -> Document:
    """The whole report; every input is already read, only the figures are drawn here."""
    mean = summary["mean"]
    intro = (f"Unsupervised anomaly detection with a masked-autoencoder ViT and Dynamic Tanh on {dataset} "
             f"({len(results)} categories). Mean image AUROC {mean['image_auroc']:.3f}, F1 {mean['f1']:.3f}, "
             f"AUPRO {mean['aupro']:.3f}, pixel AUROC {mean['pixel_auroc']:.3f}.")
    return Document(f"DiyT report: {dataset}", intro, [
        results_section(summary, results),
        curves_section(results),
        histograms_section(results, eval_params),
        examples_section(results),
        architecture_section(spec, model_config),
        facts_section(facts, dataset, [r.name for r in results], timings_dir),
        ablation_section(ablation, ablation_path),
    ])
