"""Read every category's evaluation, build the report, write the summary, Markdown, figures and HTML atomically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diyt.config import EvalParams
from diyt.io import atomic_dir, write_json, write_text
from diyt.report.ablation import read_ablation
from diyt.report.architecture import architecture_spec, read_model_config
from diyt.report.document import Document
from diyt.report.facts import collect_facts
from diyt.report.html import render_html
from diyt.report.markdown import render_markdown
from diyt.report.results import load_category
from diyt.report.sections import build_report
from diyt.report.summary import summarize


@dataclass(frozen=True)
class ReportPaths:
    """Inputs and outputs, all from the command line (dvc.yaml)."""

    categories_dir: Path  # reports/<dataset>/categories
    model_config: Path  # models/pretrain/config.json
    timings_dir: Path | None  # reports/timings (optional: may not exist)
    ablation: Path  # reports/ablation.json (optional: may not exist)
    summary: Path  # reports/<dataset>/metrics.json
    markdown: Path  # reports/report.md
    html: Path  # reports/report.html
    figures: Path  # the Markdown's generated figures


def make_report(paths: ReportPaths, *, dataset: str, categories: Sequence[str], eval_params: EvalParams,
                params_digest: str) -> tuple[dict, Document]:
    """The dataset summary ({"categories", "mean"}) and the report document, from the files under `paths`."""
    results = [load_category(paths.categories_dir, c) for c in categories]
    summary = summarize({r.name: r.metrics for r in results})
    model_params, model_digest = read_model_config(paths.model_config)
    doc = build_report(dataset=dataset, summary=summary, results=results, eval_params=eval_params,
                       spec=architecture_spec(model_params), model_config=paths.model_config,
                       facts=collect_facts(params_digest, model_digest, paths.timings_dir),
                       ablation=read_ablation(paths.ablation), ablation_path=paths.ablation,
                       timings_dir=paths.timings_dir)
    return summary, doc


def write_report(paths: ReportPaths, summary: dict, doc: Document) -> None:
    markdown, generated = render_markdown(doc, paths.markdown, paths.figures)
    with atomic_dir(paths.figures) as tmp:
        for name, png in generated.items():
            (tmp / name).write_bytes(png)
    write_json(paths.summary, summary)
    write_text(paths.markdown, markdown)
    write_text(paths.html, render_html(doc))
